/* Small enhancements for every page. Each one is optional: without JavaScript the forms still work. */
(function () {
  "use strict";

  // The project switcher opens the chosen project as soon as it is picked.
  document.addEventListener("change", function (event) {
    var select = event.target;
    if (select.matches && select.matches("select[data-autosubmit]") && select.value && select.form) {
      select.form.submit();
    }
  });

  // Destructive buttons ask first.
  document.addEventListener("submit", function (event) {
    var message = event.target.getAttribute && event.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) {
      event.preventDefault();
    }
  });

  // Copy buttons: data-copy holds a selector for the element whose text is copied.
  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("[data-copy]");
    if (!button) {
      return;
    }
    var source = document.querySelector(button.getAttribute("data-copy"));
    if (!source || !navigator.clipboard) {
      return;
    }
    navigator.clipboard.writeText(source.textContent.trim()).then(
      function () { button.textContent = "Copied"; },
      function () { button.textContent = "Select and copy"; }
    );
  });

  document.addEventListener("DOMContentLoaded", function () {
    // A page showing a one-time secret is a POST response: turn its history entry into a plain GET
    // so that reloading shows the list again instead of submitting the form a second time.
    if (document.querySelector("[data-one-time-secret]") && window.history.replaceState) {
      window.history.replaceState(null, "", window.location.href);
    }
  });
})();
