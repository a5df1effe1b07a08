/* Live updates over websockets, shared by the jobs and deployment pages: connect, reconnect with back-off a few
   times, and show the connection state in the [data-live-status] badge. Live updates are an extra: when the
   socket cannot connect, a page keeps what the server rendered. */
(function () {
  "use strict";

  var MAX_RETRIES = 5;

  function socketUrl(path) {
    return (window.location.protocol === "https:" ? "wss://" : "ws://") + window.location.host + path;
  }

  function setLiveStatus(text, state) {
    var badge = document.querySelector("[data-live-status]");
    if (badge) {
      badge.textContent = text;
      badge.setAttribute("data-state", state);
    }
  }

  // Connect, reconnecting with back-off a few times; onMessage gets each parsed JSON message.
  function subscribe(path, onMessage) {
    var failures = 0;

    function open() {
      var socket;
      try {
        socket = new WebSocket(socketUrl(path));
      } catch (error) {
        setLiveStatus("Live updates unavailable", "off");
        return;
      }
      socket.onopen = function () {
        failures = 0;
        setLiveStatus("Live", "on");
      };
      socket.onmessage = function (event) {
        var data;
        try {
          data = JSON.parse(event.data);
        } catch (error) {
          return;
        }
        try {
          onMessage(data);
        } catch (error) {
          if (window.console) { window.console.warn("Could not apply a live update", error); }
        }
      };
      socket.onclose = function (event) {
        // 4404: the server will not stream this (gone or not visible); retrying cannot help.
        failures += 1;
        if (event.code === 4404 || failures > MAX_RETRIES) {
          setLiveStatus("Live updates unavailable", "off");
          return;
        }
        setLiveStatus("Reconnecting…", "wait");
        window.setTimeout(open, Math.min(30000, 1000 * Math.pow(2, failures)));
      };
    }

    open();
  }

  window.Live = { subscribe: subscribe, setLiveStatus: setLiveStatus };
})();
