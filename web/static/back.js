/* Error page: "Back" returns to the previous page (a static file, so the console's CSP allows it;
   without script the link still leads to the dashboard). */
(function () {
  "use strict";
  var link = document.getElementById("back-link");
  if (!link || window.history.length < 2) { return; }
  link.addEventListener("click", function (event) {
    event.preventDefault();
    window.history.back();
  });
})();
