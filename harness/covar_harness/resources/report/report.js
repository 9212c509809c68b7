/* covar-harness report: click a column header to sort the table by it (click again to reverse).
   Numbers sort by their data-v value; empty cells ("-") always go last. No data lives in this file. */
(function () {
  "use strict";

  function cellKey(row, col, numeric) {
    var cell = row.cells[col];
    if (!cell) { return null; }
    if (numeric) {
      var raw = cell.getAttribute("data-v");
      if (raw === null || raw === "") { return null; }
      var value = parseFloat(raw);
      return isNaN(value) ? null : value;
    }
    var text = (cell.textContent || "").trim();
    return text === "" || text === "-" ? null : text.toLowerCase();
  }

  function sortBy(table, col, th) {
    var numeric = th.getAttribute("data-type") === "num";
    var current = th.getAttribute("aria-sort");
    var descending = current ? current === "ascending" : numeric;  // first click: numbers high to low
    var headers = table.tHead.rows[0].cells;
    for (var i = 0; i < headers.length; i++) { headers[i].removeAttribute("aria-sort"); }
    th.setAttribute("aria-sort", descending ? "descending" : "ascending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows).map(function (row, index) {
      return { row: row, index: index, key: cellKey(row, col, numeric) };
    });
    rows.sort(function (a, b) {
      if (a.key === null || b.key === null) {
        if (a.key === b.key) { return a.index - b.index; }
        return a.key === null ? 1 : -1;
      }
      var order = a.key < b.key ? -1 : (a.key > b.key ? 1 : 0);
      return (descending ? -order : order) || a.index - b.index;
    });
    rows.forEach(function (item) { body.appendChild(item.row); });
  }

  function setUp(table) {
    var headers = table.tHead ? table.tHead.rows[0].cells : [];
    Array.prototype.forEach.call(headers, function (th, col) {
      var button = document.createElement("button");
      button.type = "button";
      while (th.firstChild) { button.appendChild(th.firstChild); }
      th.appendChild(button);
      button.addEventListener("click", function () { sortBy(table, col, th); });
    });
  }

  function init() {
    Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), setUp);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
