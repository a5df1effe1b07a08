/* Live state of a deployment over websockets: state badges in the revisions table and the timeline.
   Live updates are an extra: when the socket cannot connect, the page keeps what the server rendered. */
(function () {
  "use strict";

  var TIMELINE_SIZE = 100;
  // The same colours as templates/deployments/partials/state_badge.html.
  var BADGE = {
    pending: "running",
    starting: "running",
    ready: "succeeded",
    draining: "queued",
    stopped: "cancelled",
    failed: "failed"
  };

  var subscribe = window.Live.subscribe;
  var setLiveStatus = window.Live.setLiveStatus;

  function badge(state) {
    var span = document.createElement("span");
    span.className = "badge badge-" + (BADGE[state] || "queued");
    span.setAttribute("data-field", "state");
    span.setAttribute("data-state", state);
    span.textContent = state.charAt(0).toUpperCase() + state.slice(1);
    return span;
  }

  function revisionRow(root, id) {
    return root.querySelector('tr[data-revision-id="' + id + '"]');
  }

  function replicaItem(root, id) {
    return id === null || id === undefined ? null : root.querySelector('li[data-replica-id="' + id + '"]');
  }

  // Update the badge (and reason, weight) of the revision or replica the event is about; false when not shown.
  function applyState(root, state) {
    var row = revisionRow(root, state.revision);
    var target = state.replica !== null && state.replica !== undefined ? replicaItem(root, state.replica) : row;
    if (!target) { return false; }
    var current = target.querySelector('[data-field="state"]');
    if (current) { current.replaceWith(badge(state.state)); }
    if (target === row) {
      var reason = row.querySelector('[data-field="reason"]');
      if (reason) { reason.textContent = state.reason || ""; }
      var weight = row.querySelector('[data-field="weight"]');
      if (weight && state.weight !== undefined) { weight.textContent = String(state.weight); }
    } else {
      target.setAttribute("title", state.reason || "");
    }
    return true;
  }

  function pad(number) {
    return (number < 10 ? "0" : "") + number;
  }

  function formatTime(iso) {
    var time = new Date(iso);
    if (isNaN(time.getTime())) { return iso; }
    return time.getFullYear() + "-" + pad(time.getMonth() + 1) + "-" + pad(time.getDate()) + " " +
      pad(time.getHours()) + ":" + pad(time.getMinutes()) + ":" + pad(time.getSeconds());
  }

  function subject(root, state) {
    var row = revisionRow(root, state.revision);
    var text = row ? "r" + row.getAttribute("data-revision-number") : "new revision";
    if (state.replica !== null && state.replica !== undefined) {
      var item = replicaItem(root, state.replica);
      text += item ? " · replica " + item.getAttribute("data-replica-index") : " · a replica";
    }
    return text;
  }

  function prependEvent(root, timeline, state) {
    if (!timeline) { return; }
    var empty = timeline.querySelector("[data-timeline-empty]");
    if (empty) { empty.remove(); }
    var item = document.createElement("li");
    var time = document.createElement("time");
    time.setAttribute("datetime", state.time);
    time.textContent = formatTime(state.time);
    var what = document.createElement("span");
    what.textContent = subject(root, state);
    item.appendChild(time);
    item.appendChild(document.createTextNode(" "));
    item.appendChild(what);
    item.appendChild(document.createTextNode(" "));
    item.appendChild(badge(state.state));
    if (state.reason) {
      var reason = document.createElement("span");
      reason.className = "muted";
      reason.textContent = state.reason;
      item.appendChild(document.createTextNode(" "));
      item.appendChild(reason);
    }
    timeline.insertBefore(item, timeline.firstChild);
    while (timeline.children.length > TIMELINE_SIZE) {
      timeline.removeChild(timeline.lastChild);
    }
  }

  function watchDeployment(root) {
    var timeline = root.querySelector("[data-timeline]");
    var refreshTimer = null;

    // Weights of other revisions, new replicas and hosts come from the server: fetch the revisions table again
    // (htmx answers this page's fragment), at most once a second.
    function refreshRevisions() {
      if (refreshTimer || !window.htmx) { return; }
      refreshTimer = window.setTimeout(function () {
        refreshTimer = null;
        window.htmx.ajax("GET", window.location.pathname, { target: "#revisions", swap: "outerHTML" });
      }, 1000);
    }

    subscribe(root.getAttribute("data-deployment-socket"), function (data) {
      if (data.type !== "state" || !data.state) { return; }
      applyState(root, data.state);
      prependEvent(root, timeline, data.state);
      refreshRevisions();
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (!("WebSocket" in window)) {
      setLiveStatus("Live updates unavailable", "off");
      return;
    }
    document.querySelectorAll("[data-deployment-socket]").forEach(watchDeployment);
  });
})();
