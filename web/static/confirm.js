/* Forms marked class="confirm" ask before they submit (deleting a user or a study): the question
   is the form's data-confirm text. A static file, so the console's CSP allows it. */
(function () {
  "use strict";
  document.querySelectorAll("form.confirm").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.getAttribute("data-confirm") || "Are you sure?")) {
        event.preventDefault();
      }
    });
  });
})();
