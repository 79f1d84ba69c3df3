/* Live tables (jobs page, review worklist): refresh the rows every few seconds without reloading.
   The server renders the rows (the element's data-rows-url, same filters); this only swaps them
   in, updates the elements named by the X-Live-Counts header (id "count-<name>"), and skips a
   refresh while the tab is hidden or the user is choosing a value in one of the rows. */
(function () {
  "use strict";
  var body = document.querySelector("[data-rows-url]");
  var stamp = body && document.getElementById(body.getAttribute("data-stamp") || "");
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
      if (parts.length !== 2) { return; }
      document.querySelectorAll('[data-count="' + parts[0] + '"]').forEach(function (el) {
        el.textContent = parts[1];
        el.classList.toggle("zero", parts[1] === "0");
      });
    });
  }

  function refresh() {
    if (document.hidden || busy()) { return; }
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        showCounts(response.headers.get("X-Live-Counts"));
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
