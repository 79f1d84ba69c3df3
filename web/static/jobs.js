/* Jobs page: refresh the queue's rows every few seconds without reloading the page.
   The server renders the rows (GET /jobs/rows, same filters); this only swaps them in, and skips
   a refresh while the tab is hidden or the user is choosing a pipeline in one of the rows. */
(function () {
  "use strict";
  var body = document.getElementById("job-rows");
  var stamp = document.getElementById("jobs-updated");
  if (!body || !window.fetch) { return; }
  var url = body.getAttribute("data-rows-url");
  var INTERVAL_MS = 3000;

  function busy() {
    var active = document.activeElement;
    return active && body.contains(active) && active.tagName === "SELECT";
  }

  function showCounts(header) {
    (header || "").split(",").forEach(function (pair) {
      var parts = pair.split("=");
      var card = document.getElementById("count-" + parts[0]);
      if (card && parts.length === 2) { card.textContent = parts[1]; }
    });
  }

  function refresh() {
    if (document.hidden || busy()) { return; }
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        showCounts(response.headers.get("X-Job-Counts"));
        return response.text();
      })
      .then(function (html) {
        body.innerHTML = html;
        if (stamp) { stamp.textContent = "Updated " + new Date().toLocaleTimeString() + "."; }
      })
      .catch(function (error) {
        if (stamp) { stamp.textContent = "Refresh failed (" + error.message + "); retrying."; }
      });
  }

  window.setInterval(refresh, INTERVAL_MS);
})();
