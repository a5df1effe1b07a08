/* Live job updates over websockets: one job's page, or a project's job list.
   Live updates are an extra: when the socket cannot connect, the page keeps what the server rendered. */
(function () {
  "use strict";

  var FINISHED = ["succeeded", "failed", "cancelled"];

  var subscribe = window.Live.subscribe;
  var setLiveStatus = window.Live.setLiveStatus;

  function field(root, name) {
    return root.querySelector('[data-field="' + name + '"]');
  }

  function setStatus(root, status) {
    var badge = field(root, "status");
    if (badge) {
      badge.textContent = status.charAt(0).toUpperCase() + status.slice(1);
      badge.className = "badge badge-" + status;
    }
  }

  function setProgress(root, percent) {
    var bar = field(root, "progress");
    if (bar) {
      bar.setAttribute("aria-valuenow", String(percent));
      var fill = bar.querySelector(".progress-bar");
      if (fill) { fill.style.width = percent + "%"; }
    }
    var text = field(root, "progress-text");
    if (text) { text.textContent = percent + "%"; }
  }

  function setText(root, name, value) {
    var element = field(root, name);
    if (element) { element.textContent = value || "—"; }
  }

  function showJob(root, job) {
    setStatus(root, job.status);
    setProgress(root, job.progress || 0);
    setText(root, "message", job.message);
    setText(root, "worker", job.worker);

    var errorBox = field(root, "error-box");
    if (errorBox) {
      errorBox.hidden = !job.error;
      field(root, "error").textContent = job.error || "";
    }
    var resultBox = field(root, "result-box");
    if (resultBox) {
      var hasResult = job.result !== null && job.result !== undefined;
      resultBox.hidden = !hasResult;
      field(root, "result").textContent = hasResult ? JSON.stringify(job.result, null, 2) : "";
    }
    var finished = FINISHED.indexOf(job.status) !== -1;
    var cancel = document.querySelector('[data-job-action="cancel"]');
    if (cancel) { cancel.hidden = finished; }
    var retry = document.querySelector('[data-job-action="retry"]');
    if (retry) { retry.hidden = job.status !== "failed" && job.status !== "cancelled"; }
  }

  function watchJob(root) {
    subscribe(root.getAttribute("data-job-socket"), function (data) {
      if (data.type === "job" && data.job) { showJob(root, data.job); }
    });
  }

  function watchProject(root) {
    var refreshTimer = null;

    // A job that is not on the page yet: fetch the table again (htmx), at most once per second.
    function refreshTable() {
      if (refreshTimer || !window.htmx) { return; }
      refreshTimer = window.setTimeout(function () {
        refreshTimer = null;
        window.htmx.ajax("GET", window.location.href, { target: "#job-table", swap: "outerHTML" });
      }, 1000);
    }

    subscribe(root.getAttribute("data-project-events"), function (data) {
      if (data.type !== "job" || !data.job) { return; }
      var row = root.querySelector('tr[data-job-id="' + data.job.id + '"]');
      if (row) {
        setStatus(row, data.job.status);
        setProgress(row, data.job.progress || 0);
        setText(row, "message", data.job.message);
      } else {
        refreshTable();
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (!("WebSocket" in window)) {
      setLiveStatus("Live updates unavailable", "off");
      return;
    }
    document.querySelectorAll("[data-job-socket]").forEach(watchJob);
    document.querySelectorAll("[data-project-events]").forEach(watchProject);
  });
})();
