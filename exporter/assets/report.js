// Draws the report's charts with Chart.js and makes its tables sortable. Reads only the JSON data block;
// every text it shows goes through textContent or Chart.js (canvas), never through HTML parsing.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var palette = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac", "#86bcb6", "#d37295", "#8cd17d"];
  // Animations off: the page is a document, and a screenshot or print must show the final chart.
  Chart.defaults.animation = false;
  Chart.defaults.maintainAspectRatio = false;
  Chart.defaults.font.family = "system-ui, sans-serif";
  Chart.defaults.elements.point.radius = 4;

  function draw(id, config) {
    var canvas = document.getElementById(id);
    if (canvas) { new Chart(canvas, config); }
  }

  function bars(id, series, label, horizontal) {
    draw(id, {
      type: "bar",
      data: { labels: series.labels, datasets: [{ label: label, data: series.values, backgroundColor: palette }] },
      options: { indexAxis: horizontal ? "y" : "x", plugins: { legend: { display: false } } }
    });
  }

  draw("chart-trend", {
    type: "bar",
    data: {
      labels: data.days,
      datasets: [
        { label: "Chat turns", data: data.chat_turns, backgroundColor: palette[0], stack: "i" },
        { label: "Completions", data: data.completions, backgroundColor: palette[1], stack: "i" },
        { label: "Model calls", data: data.model_calls, type: "line", borderColor: palette[3],
          backgroundColor: palette[3], spanGaps: false, yAxisID: "y1" }
      ]
    },
    options: { scales: { y: { stacked: true, beginAtZero: true },
      y1: { position: "right", beginAtZero: true, grid: { drawOnChartArea: false } } } }
  });
  draw("chart-editors", {
    type: "doughnut",
    data: { labels: data.editors.labels, datasets: [{ data: data.editors.values, backgroundColor: palette }] },
    options: { plugins: { legend: { position: "right" } } }
  });
  bars("chart-languages", data.languages, "Completions", true);
  bars("chart-kinds", data.kinds, "Interactions", false);
  bars("chart-models", data.models, "Model calls", true);
  bars("chart-teams", data.teams, "Chat turns + completions", false);
  bars("chart-credits-models", data.credits_by_model, "AI credits", true);
  draw("chart-credits", {
    type: "bar",
    data: { labels: data.days, datasets: [{ label: "AI credits", data: data.credits, backgroundColor: palette[2] }] },
    options: { plugins: { legend: { display: false } } }
  });
  draw("chart-acceptance", {
    type: "line",
    data: { labels: data.days, datasets: [{ label: "Acceptance %", data: data.acceptance, borderColor: palette[4],
      backgroundColor: palette[4], spanGaps: false }] },
    options: { scales: { y: { min: 0, max: 100 } }, plugins: { legend: { display: false } } }
  });

  // Sorting: numbers by data-value, text by locale; cells without a value ("—") always sort last.
  function sortTable(table, index, th) {
    var descending = th.getAttribute("aria-sort") !== "descending";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[index].getAttribute("data-value"), y = b.cells[index].getAttribute("data-value");
      if (x === "" || y === "") { return (x === "") - (y === ""); }
      var nx = Number(x), ny = Number(y), cmp;
      cmp = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return descending ? -cmp : cmp;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (cell) { cell.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", descending ? "descending" : "ascending");
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, index) {
      th.querySelector("button").addEventListener("click", function () { sortTable(table, index, th); });
    });
  });
  document.body.setAttribute("data-ready", "1");
})();
