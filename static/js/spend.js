/* Spend page charts, drawn with plotly.js (from the `plotly` Python package) from the JSON the page embeds
   (#spend-data). Drawn on load and again whenever htmx swaps in new figures after a filter change. */
(function () {
  "use strict";

  var PALETTE = ["#2f5bea", "#19b38a", "#f2a900", "#d9485f", "#7b61ff", "#00a3c4", "#e07b39", "#6b8e23", "#b0b8c4"];
  var BUSY = "#2f5bea";
  var IDLE = "#f2a900";
  var CONFIG = { displayModeBar: false, responsive: true };

  // Names come from usage events: plotly reads a few HTML tags in text, so they are passed as escaped text.
  function text(value) {
    return String(value).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }

  function num(value) {
    return value === null || value === undefined ? null : Number(value);
  }

  // Buckets are UTC; plotly reads date strings without a zone as they are, so the axis shows UTC.
  function utc(value) {
    return String(value).replace(/(Z|[+-]00:00)$/, "");
  }

  function layout(extra) {
    var base = {
      margin: { l: 56, r: 12, t: 8, b: 36 },
      font: { family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: 12, color: "#1c2430" },
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "rgba(0,0,0,0)",
      legend: { orientation: "h", y: -0.18, x: 0, traceorder: "normal" },
      hovermode: "x unified",
      xaxis: { type: "date", gridcolor: "#eef0f3" },
      yaxis: { gridcolor: "#eef0f3", rangemode: "tozero", zerolinecolor: "#dfe3e8" },
    };
    return Object.assign(base, extra || {});
  }

  // Stacked bars: leave headroom above the highest stack, so a full bar does not look cut off.
  function stackedRange(traces) {
    var top = 0;
    traces[0].y.forEach(function (_, i) {
      top = Math.max(top, traces.reduce(function (sum, trace) { return sum + (trace.y[i] || 0); }, 0));
    });
    return top > 0 ? [0, top * 1.08] : undefined;
  }

  function plot(element, traces, options) {
    if (element) {
      window.Plotly.newPlot(element, traces, layout(options), CONFIG);
    }
  }

  function spend(root, data) {
    var x = data.buckets.map(utc);
    var traces = data.spend.map(function (series, i) {
      return {
        type: "bar",
        name: text(series.name),
        x: x,
        y: series.values.map(num),
        marker: { color: series.key === null ? "#b0b8c4" : PALETTE[i % PALETTE.length] },
        hovertemplate: "%{y:,.4f} USD",
      };
    });
    plot(root.querySelector('[data-chart="spend"]'), traces, {
      barmode: "stack",
      yaxis: { title: { text: "USD" }, gridcolor: "#eef0f3", range: traces.length ? stackedRange(traces) : undefined },
      legend: { orientation: "h", y: -0.15, x: 0, traceorder: "normal" },
    });
  }

  function tokens(root, data) {
    var x = data.buckets.map(utc);
    plot(
      root.querySelector('[data-chart="tokens"]'),
      [
        { type: "bar", name: "In (prompt)", x: x, y: data.tokens.prompt, marker: { color: PALETTE[0] } },
        { type: "bar", name: "Out (completion)", x: x, y: data.tokens.completion, marker: { color: PALETTE[1] } },
      ],
      { barmode: "group", yaxis: { title: { text: "tokens" }, gridcolor: "#eef0f3", rangemode: "tozero" } }
    );
  }

  function costPer1k(root, data) {
    var rows = data.cost_per_1k.slice().sort(function (a, b) { return num(a.value) - num(b.value); });
    if (!rows.length) {
      return;
    }
    var values = rows.map(function (row) { return num(row.value); });
    var positive = values.filter(function (v) { return v > 0; });
    var spread = positive.length ? Math.max.apply(null, positive) / Math.min.apply(null, positive) : 1;
    plot(
      root.querySelector('[data-chart="cost-per-1k"]'),
      [
        {
          type: "bar",
          orientation: "h",
          x: values,
          y: rows.map(function (row) { return text(row.name) + (row.kind === "Self-hosted" ? " (self-hosted)" : ""); }),
          marker: { color: rows.map(function (row) { return row.kind === "Self-hosted" ? PALETTE[1] : PALETTE[0]; }) },
          text: values.map(function (v) { return v.toPrecision(3); }),
          textposition: "auto",
          hovertemplate: "%{y}: %{x:,.6f} USD per 1k tokens<extra></extra>",
        },
      ],
      {
        height: Math.max(160, 34 * rows.length + 50),
        margin: { l: 170, r: 12, t: 4, b: 32 },
        hovermode: "closest",
        showlegend: false,
        xaxis: { type: spread > 50 ? "log" : "linear", title: { text: "USD per 1,000 tokens" }, gridcolor: "#eef0f3" },
        yaxis: { automargin: true },
      }
    );
  }

  function gpu(root, data) {
    var x = data.buckets.map(utc);
    var traces = [
      { type: "bar", name: "Serving", x: x, y: data.gpu.busy.map(num), marker: { color: BUSY }, hovertemplate: "%{y:,.2f} USD" },
      { type: "bar", name: "Idle", x: x, y: data.gpu.idle.map(num), marker: { color: IDLE }, hovertemplate: "%{y:,.2f} USD" },
    ];
    plot(root.querySelector('[data-chart="gpu"]'), traces, {
      barmode: "stack",
      yaxis: { title: { text: "USD" }, gridcolor: "#eef0f3", range: stackedRange(traces) },
    });
  }

  function budgets(root, data) {
    data.budgets.forEach(function (budget) {
      var element = root.querySelector('[data-budget-chart="' + budget.id + '"]');
      var traces = [
        {
          type: "scatter", mode: "lines", name: "Spent", x: budget.x.map(utc), y: budget.spent.map(num),
          line: { color: PALETTE[0], width: 2, shape: "hv" }, fill: "tozeroy", fillcolor: "rgba(47,91,234,0.08)",
        },
        {
          type: "scatter", mode: "lines", name: "Limit", x: budget.limit.x.map(utc), y: budget.limit.y.map(num),
          line: { color: "#c62f3b", width: 1, dash: "dot" }, hoverinfo: "skip",
        },
      ];
      if (budget.forecast) {
        traces.push({
          type: "scatter", mode: "lines", name: "Forecast", x: budget.forecast.x.map(utc),
          y: budget.forecast.y.map(num), line: { color: PALETTE[0], width: 1.5, dash: "dash" },
        });
      }
      plot(element, traces, {
        margin: { l: 40, r: 6, t: 4, b: 22 },
        showlegend: false,
        hovermode: "closest",
        xaxis: { type: "date", gridcolor: "#eef0f3", nticks: 4, tickformat: budget.unit === "hour" ? "%H:%M" : "%-d %b" },
        yaxis: { gridcolor: "#eef0f3", rangemode: "tozero", nticks: 4 },
      });
    });
  }

  function draw() {
    var script = document.getElementById("spend-data");
    if (!script || !window.Plotly) {
      return;
    }
    var data = JSON.parse(script.textContent);
    var root = script.parentElement;
    spend(root, data);
    tokens(root, data);
    costPer1k(root, data);
    gpu(root, data);
    budgets(root, data);
  }

  document.addEventListener("DOMContentLoaded", draw);
  document.addEventListener("htmx:afterSettle", draw);
})();
