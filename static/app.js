/* Store uptime reports: the one page.  Plain JavaScript, no build step.
 *
 * Trigger a report, follow its progress through /get_report, then show it as a
 * sortable, filterable table (only the rows in view are in the DOM, so 14,000
 * stores stay quick), a chart of the 20 stores with the most downtime in the
 * last week, and the changes since the previous report (/reports/<id>/changes);
 * list past reports from /reports.  Clicking a store (its id in the table, the
 * changes or its bar) shows its downtime across reports (/stores/<id>/history)
 * and draws its week from /stores/<id>/timeline: one row per local day,
 * business hours shaded, up and down segments, polls as ticks, the day and
 * hour windows marked, and the segments added up per window beside the
 * report's row.
 *
 * Test hooks: <body data-state="idle|running|complete|failed">, the report
 * section's data-report-id, the table's aria-rowcount and each row's
 * aria-rowindex, <ol id="chart-data"> whose items carry the chart's figures
 * as data- attributes (also read by screen readers), the week section's
 * data-state="loading|shown|failed" and data-store-id, with each total cell's
 * exact figure in data-value, the changes section's
 * data-state="loading|shown|none|failed", and the history's
 * data-state="loading|shown|empty|failed" with each point's report id and
 * figure on its dot.
 */
(function () {
  "use strict";

  var POLL_MS = 500;
  var RETRIES = 5;            // transient errors (network, 5xx) tolerated in a row while polling
  var PER_PAGE = 10;          // past reports per page
  var TOP_N = 20;             // stores in the chart
  var TOKEN_KEY = "storeUptime.apiToken";
  var REPORT_ID = /^[0-9a-f]{32}$/;

  var UP_COLOUR = "#0072b2";     // Okabe-Ito blue and vermillion: apart for every kind of colour blindness
  var DOWN_COLOUR = "#d55e00";
  var WINDOW_NAMES = ["hour", "day", "week"];

  var SHORT_LABELS = {          // the stacked table on narrow screens
    uptime_last_hour: "Up 1 h (min)",
    uptime_last_day: "Up 1 d (h)",
    uptime_last_week: "Up 7 d (h)",
    downtime_last_hour: "Down 1 h (min)",
    downtime_last_day: "Down 1 d (h)",
    downtime_last_week: "Down 7 d (h)"
  };

  var COLUMN_LABELS = {
    store_id: "Store id",
    uptime_last_hour: "Up, last hour (min)",
    uptime_last_day: "Up, last day (h)",
    uptime_last_week: "Up, last week (h)",
    downtime_last_hour: "Down, last hour (min)",
    downtime_last_day: "Down, last day (h)",
    downtime_last_week: "Down, last week (h)"
  };

  var state = {
    report: null,       // the Complete /get_report body on show, without its rows (they are in `table`)
    table: null,        // the rows as columns: {n, ids, lower, cols: {key: Float64Array}, rank, orders}
    view: null,         // the row indices shown, in order (sorted, filtered)
    drawn: { first: 0, last: 0 },   // the positions in `view` of the rows in the DOM
    rowHeight: 33,      // px, measured from the drawn rows
    headHeight: 0,      // px, the table header's
    columns: [],
    sortKey: "store_id",
    sortDir: 1,         // 1 ascending, -1 descending
    filter: "",
    watchSeq: 0,        // bumps whenever a new report is followed; older loops stop
    page: 1,
    listSeq: 0,         // bumps with every /reports request; late answers are dropped
    startedAt: 0,       // when the followed report was first asked for (for the elapsed time)
    chart: null,
    weekSeq: 0,         // bumps with every store opened; late answers are dropped
    historySeq: 0,      // the same for the store's history
    changesSeq: 0       // and for the changes since the previous report
  };

  function $(id) { return document.getElementById(id); }

  function sleep(ms) { return new Promise(function (resolve) { setTimeout(resolve, ms); }); }

  function setPageState(name) { document.body.dataset.state = name; }

  // ------------------------------------------------------------------ messages

  function showMessage(text, kind) {
    var box = $("message");
    box.textContent = "";
    box.className = "message " + (kind || "error");
    var span = document.createElement("span");
    span.textContent = text;
    var close = document.createElement("button");
    close.type = "button";
    close.className = "dismiss";
    close.setAttribute("aria-label", "Dismiss message");
    close.textContent = "×";
    close.addEventListener("click", clearMessage);
    box.appendChild(span);
    box.appendChild(close);
    box.hidden = false;
  }

  function clearMessage() {
    var box = $("message");
    box.hidden = true;
    box.textContent = "";
  }

  // ------------------------------------------------------------------ API

  /* The token lives in sessionStorage: this tab only, gone when it closes. */
  function getToken() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; }
  }

  function setToken(value) {
    try {
      if (value) { sessionStorage.setItem(TOKEN_KEY, value); } else { sessionStorage.removeItem(TOKEN_KEY); }
    } catch (e) { /* storage disabled: the token lasts for this page only */ }
    sessionToken = value;
  }

  var sessionToken = "";

  function authHeaders(extra) {
    var headers = extra || {};
    var token = sessionToken || getToken();
    if (token) { headers.Authorization = "Bearer " + token; }
    return headers;
  }

  /* "HTTP 404: The requested URL was not found on the server. If you…" -> its first sentence, for one short line. */
  function firstSentence(text) {
    var match = /^.*?[.!?](?=\s|$)/.exec(String(text));
    return match ? match[0] : String(text);
  }

  function ApiError(message, status, transient) {
    this.message = message;
    this.status = status;
    this.transient = transient;
  }

  /* fetch + JSON; throws ApiError carrying the server's {"error": ...} text. */
  function api(path, options) {
    options = options || {};
    options.headers = authHeaders(Object.assign({ Accept: "application/json" }, options.headers || {}));
    return fetch(path, options).then(function (response) {
      return response.text().then(function (text) {
        var body = null;
        try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
        if (!response.ok) {
          var detail = body && body.error ? body.error : (response.statusText || "no details");
          var hint = (response.status === 401 || response.status === 403)
            ? " — the server wants an API token: enter it under “API token” below." : "";
          throw new ApiError("HTTP " + response.status + ": " + detail + hint, response.status,
                             response.status >= 500);
        }
        if (body === null) { throw new ApiError("The server sent a reply that is not JSON.", response.status, false); }
        return body;
      });
    }, function () {
      throw new ApiError("Could not reach the server.", 0, true);
    });
  }

  // ------------------------------------------------------------------ formatting

  function fmt(value) {
    if (value === null || value === undefined || value === "" || isNaN(Number(value))) { return ""; }
    return Number(value).toFixed(2);
  }

  function fmtTime(iso) {
    if (!iso) { return "—"; }
    return String(iso).replace("T", " ").replace(/\.\d+/, "").replace(/Z$|\+00:00$/, "");
  }

  function uptimeShare(row) {
    var up = Number(row.uptime_last_week) || 0;
    var down = Number(row.downtime_last_week) || 0;
    return up + down > 0 ? up / (up + down) : null;
  }

  function compareIds(a, b) { return a < b ? -1 : a > b ? 1 : 0; }

  // ------------------------------------------------------------------ trigger and follow

  function setBusy(busy) {
    var button = $("trigger");
    button.disabled = busy;
    button.setAttribute("aria-busy", busy ? "true" : "false");
    button.textContent = busy ? "Running…" : "Run report";
  }

  function showProgress(progress, phase) {
    var area = $("progress-area");
    var bar = $("progress");
    var text = $("progress-text");
    area.hidden = false;
    var done = progress && Number(progress.done) || 0;
    var total = progress && progress.total !== null && progress.total !== undefined ? Number(progress.total) : null;
    var elapsed = " · " + Math.round((Date.now() - state.startedAt) / 1000) + " s";
    if (total > 0 && done > 0) {
      bar.max = total;
      bar.value = Math.min(done, total);
      text.textContent = done + " of " + total + " stores (" + Math.floor(100 * done / total) + "%)" + elapsed;
    } else {
      bar.removeAttribute("value");   // indeterminate until the first chunk of stores is done
      text.textContent = (phase === "queued" ? "Waiting for a free report worker…"
        : total === null ? "Counting the stores to report…"
        : "Working on " + total + " stores…") + elapsed;
    }
  }

  function hideProgress() { $("progress-area").hidden = true; }

  function onTrigger(event) {
    event.preventDefault();
    clearMessage();
    var asOf = $("as-of").value.trim();
    var options = { method: "POST" };
    if (asOf) {
      options.headers = { "Content-Type": "application/json" };
      options.body = JSON.stringify({ as_of: asOf });
    }
    setBusy(true);
    setPageState("running");
    api("/trigger_report", options).then(function (body) {
      follow(body.report_id);
      loadPastReports(1);
    }, function (error) {
      setBusy(false);
      setPageState("failed");
      showMessage("Could not start a report. " + error.message);
    });
  }

  /* Poll a report until it is Complete (then show it) or Failed (then say why). */
  function follow(reportId) {
    var seq = ++state.watchSeq;
    var failures = 0;
    state.startedAt = Date.now();
    setBusy(true);
    setPageState("running");
    hideProgress();                  // shown from the first "Running" answer (a finished report needs none)
    $("progress-label").textContent = "Computing report " + reportId + "…";

    function step() {
      if (seq !== state.watchSeq) { return Promise.resolve(); }
      return api("/get_report?report_id=" + encodeURIComponent(reportId)).then(function (body) {
        if (seq !== state.watchSeq) { return; }
        failures = 0;
        if (body.status === "Running") {
          showProgress(body.progress, body.phase);
          return sleep(POLL_MS).then(step);
        }
        finish();
        if (body.status === "Complete") {
          clearMessage();
          showReport(body);
          setPageState("complete");
        } else if (body.status === "Failed") {
          setPageState("failed");
          showMessage("Report " + reportId + " failed: " + (body.error || "no reason given"));
        } else {
          setPageState("failed");
          showMessage("Report " + reportId + " has an unexpected status: " + body.status);
        }
        loadPastReports(state.page);
      }, function (error) {
        if (seq !== state.watchSeq) { return; }
        if (error.transient && ++failures <= RETRIES) {
          showMessage(error.message + " Retrying (" + failures + " of " + RETRIES + ")…", "warn");
          return sleep(POLL_MS * Math.pow(2, failures)).then(step);
        }
        finish();
        setPageState("failed");
        showMessage("Could not get report " + reportId + ". " + error.message);
      });
    }

    function finish() {
      hideProgress();
      setBusy(false);
    }

    return step();
  }

  // ------------------------------------------------------------------ the report

  /* The report's rows are kept as columns (an array of ids, a Float64Array per figure), never as DOM:
   * the table draws only the rows in view plus a margin (OVERSCAN) between two spacer rows whose heights
   * stand for the rows above and below, so 14,000 stores cost what 60 do.  Each sort order is worked out
   * once per report (an index array sorted on the figure, ties by store id) and a filter is one pass
   * over the ids in that order. */

  function buildTable(body) {
    var data = body.data || [];
    var n = data.length;
    var ids = new Array(n);
    var lower = new Array(n);
    var cols = {};
    state.columns.forEach(function (key) {
      if (key !== "store_id") { cols[key] = new Float64Array(n); }
    });
    var numeric = Object.keys(cols);
    for (var i = 0; i < n; i++) {
      var row = data[i];
      var id = String(row.store_id);
      ids[i] = id;
      lower[i] = id.toLowerCase();
      for (var k = 0; k < numeric.length; k++) {
        var value = row[numeric[k]];
        cols[numeric[k]][i] = value === null || value === undefined || value === "" ? NaN : Number(value);
      }
    }
    var byId = new Uint32Array(n);
    for (i = 0; i < n; i++) { byId[i] = i; }
    byId.sort(function (a, b) { return compareIds(ids[a], ids[b]); });
    var rank = new Uint32Array(n);
    for (i = 0; i < n; i++) { rank[byId[i]] = i; }
    return { n: n, ids: ids, lower: lower, cols: cols, rank: rank, orders: { "store_id:1": byId } };
  }

  /* Row indices in the order of `key` (dir 1 ascending, -1 descending), ties by store id; worked out once. */
  function sortedOrder(table, key, dir) {
    var name = key + ":" + dir;
    if (table.orders[name]) { return table.orders[name]; }
    var order;
    if (key === "store_id") {
      order = table.orders["store_id:1"].slice().reverse();
    } else {
      var values = table.cols[key];
      var rank = table.rank;
      var sortable = new Float64Array(table.n);       // a missing figure sorts as 0, as it always has
      for (var i = 0; i < table.n; i++) { sortable[i] = values[i] || 0; }
      order = table.orders["store_id:1"].slice();     // already in store id order: ties stay by id
      order.sort(function (a, b) { return (sortable[a] - sortable[b]) * dir || rank[a] - rank[b]; });
    }
    table.orders[name] = order;
    return order;
  }

  function rowObject(table, i) {
    var row = { store_id: table.ids[i] };
    Object.keys(table.cols).forEach(function (key) { row[key] = table.cols[key][i]; });
    return row;
  }

  function showReport(body) {
    state.columns = body.columns && body.columns.length ? body.columns
      : (body.data.length ? Object.keys(body.data[0]) : Object.keys(COLUMN_LABELS));
    state.table = buildTable(body);
    state.report = Object.assign({}, body, { data: null });    // the rows live in state.table only
    var section = $("report");
    section.hidden = false;
    section.dataset.reportId = body.report_id;
    $("report-id").textContent = body.report_id;
    var count = body.row_count === null || body.row_count === undefined ? state.table.n : body.row_count;
    var started = { schedule: " · started by the schedule", api: " · started through the API" };
    $("report-meta").textContent = "As of " + fmtTime(body.as_of) + " UTC · " + count + " stores"
      + (started[body.trigger] || "");
    var later = $("report-after-newest");
    later.hidden = !body.as_of_after_newest_poll;
    later.textContent = body.as_of_after_newest_poll
      ? "This report's time is later than the newest poll stored: every store's last poll is carried forward to it."
      : "";
    $("csv-link").href = "/get_report?report_id=" + encodeURIComponent(body.report_id) + "&format=csv";
    $("csv-link").setAttribute("download", "report_" + body.report_id + ".csv");
    if (history.replaceState) { history.replaceState(null, "", "#report=" + body.report_id); }
    buildHeader();
    applyView(true);
    var top = sortedOrder(state.table, "downtime_last_week", -1);
    renderChart(Array.prototype.slice.call(top, 0, TOP_N).map(function (i) { return rowObject(state.table, i); }));
    markCurrentReport();
    loadChanges(body.report_id);
    if (!$("store-week").hidden && $("store-week").dataset.reportId !== body.report_id) { closeWeek(); }
  }

  function buildHeader() {
    var row = document.querySelector("#report-table thead tr");
    row.textContent = "";
    row.setAttribute("aria-rowindex", "1");
    state.columns.forEach(function (key) {
      var th = document.createElement("th");
      th.scope = "col";
      th.dataset.key = key;
      if (key !== "store_id") { th.className = "num"; }
      var button = document.createElement("button");
      button.type = "button";
      button.className = "sort";
      button.dataset.key = key;
      var label = document.createElement("span");
      label.textContent = COLUMN_LABELS[key] || key;
      button.appendChild(label);
      var arrow = document.createElement("span");
      arrow.className = "arrow";
      arrow.setAttribute("aria-hidden", "true");
      button.appendChild(arrow);
      button.addEventListener("click", function () { sortBy(key); });
      th.appendChild(button);
      row.appendChild(th);
    });
    updateSortMarks();
  }

  function sortBy(key) {
    if (state.sortKey === key) {
      state.sortDir = -state.sortDir;
    } else {
      state.sortKey = key;
      state.sortDir = key === "store_id" ? 1 : -1;   // numbers: biggest first on the first click
    }
    updateSortMarks();
    applyView(true);
  }

  function updateSortMarks() {
    var headers = document.querySelectorAll("#report-table thead th");
    Array.prototype.forEach.call(headers, function (th) {
      var active = th.dataset.key === state.sortKey;
      var sort = active ? (state.sortDir === 1 ? "ascending" : "descending") : "none";
      th.setAttribute("aria-sort", sort);
      th.querySelector(".arrow").textContent = active ? (state.sortDir === 1 ? "▲" : "▼") : "";
    });
  }

  /* The rows to show, in order: the sort order, filtered by the store id box (one pass). */
  function applyView(toTop) {
    var table = state.table;
    if (!table) { return; }
    var key = state.columns.indexOf(state.sortKey) === -1 ? "store_id" : state.sortKey;
    var order = sortedOrder(table, key, state.sortDir);
    var needle = state.filter.toLowerCase();
    if (!needle) {
      state.view = order;
    } else {
      var lower = table.lower;
      var kept = new Uint32Array(table.n);
      var count = 0;
      for (var j = 0; j < order.length; j++) {
        if (lower[order[j]].indexOf(needle) !== -1) { kept[count++] = order[j]; }
      }
      state.view = kept.subarray(0, count);
    }
    var total = table.n;
    var shown = state.view.length;
    $("row-count").textContent = shown === total ? total + " stores" : "Showing " + shown + " of " + total + " stores";
    $("report-table").setAttribute("aria-rowcount", String(shown + 1));
    if (toTop) { document.querySelector("#report .table-scroll").scrollTop = 0; }
    renderWindow(true);
  }

  var OVERSCAN = 12;          // rows drawn above and below the ones in view

  /* Draw the rows in view (plus OVERSCAN each side) between the two spacers.  Reads the scroller's
   * position once, writes the rows, then (on a full redraw) measures one row to keep the spacers exact. */
  function renderWindow(force, measured) {
    var table = state.table;
    if (!table) { return; }
    var scroller = document.querySelector("#report .table-scroll");
    var view = state.view;
    var n = view.length;
    var rowHeight = state.rowHeight;
    var headHeight = state.headHeight;
    var top = Math.max(0, scroller.scrollTop - headHeight);
    var height = window.innerHeight || scroller.clientHeight;   // the scroller is never taller than the window
    var visibleFirst = Math.min(n, Math.floor(top / rowHeight));
    var visibleLast = Math.min(n, Math.ceil((top + height) / rowHeight));
    if (!force && state.drawn.first <= Math.max(0, visibleFirst - OVERSCAN / 2)
        && state.drawn.last >= Math.min(n, visibleLast + OVERSCAN / 2)) {
      return;                  // what is drawn still covers the view and half the margin
    }
    var first = Math.max(0, visibleFirst - OVERSCAN);
    var last = Math.min(n, visibleLast + OVERSCAN);
    state.drawn = { first: first, last: last };

    var tbody = document.querySelector("#report-table tbody");
    var fragment = document.createDocumentFragment();
    fragment.appendChild(spacer(first * rowHeight));
    var columns = state.columns;
    for (var p = first; p < last; p++) {
      var i = view[p];
      var id = table.ids[i];
      var tr = document.createElement("tr");
      tr.className = p % 2 ? "row alt" : "row";
      tr.dataset.storeId = id;
      tr.setAttribute("aria-rowindex", String(p + 2));
      for (var c = 0; c < columns.length; c++) {
        var key = columns[c];
        var cell;
        if (key === "store_id") {
          cell = document.createElement("th");
          cell.scope = "row";
          var open = document.createElement("button");
          open.type = "button";
          open.className = "store-link";
          open.dataset.storeId = id;
          open.textContent = id;
          open.title = id;
          open.setAttribute("aria-label", "Show the week of store " + id);
          cell.appendChild(open);
        } else {
          cell = document.createElement("td");
          cell.className = "num";
          cell.textContent = table.cols[key] ? fmt(table.cols[key][i]) : "";
          cell.dataset.label = SHORT_LABELS[key] || COLUMN_LABELS[key] || key;
        }
        cell.dataset.key = key;
        tr.appendChild(cell);
      }
      fragment.appendChild(tr);
    }
    if (!n) {
      var empty = document.createElement("tr");
      var td = document.createElement("td");
      td.colSpan = columns.length;
      td.className = "empty";
      td.textContent = table.n ? "No store id matches the filter." : "The report has no rows.";
      empty.appendChild(td);
      fragment.appendChild(empty);
    }
    fragment.appendChild(spacer((n - last) * rowHeight));
    tbody.textContent = "";
    tbody.appendChild(fragment);
    if (force && !measured && last > first) { measureRows(tbody); }
  }

  function spacer(height) {
    var tr = document.createElement("tr");
    tr.className = "spacer";
    tr.setAttribute("aria-hidden", "true");
    var td = document.createElement("td");
    td.colSpan = state.columns.length;
    tr.appendChild(td);
    tr.style.height = height + "px";
    tr.hidden = height <= 0;
    return tr;
  }

  /* The drawn rows' height (all rows are one height: one line each, or one card each on a phone) and the
   * header's; when either moved (first report, a font, a narrower window), the spacers are drawn again. */
  function measureRows(tbody) {
    var rows = tbody.querySelectorAll("tr.row");
    var firstBox = rows[0].getBoundingClientRect();
    var lastBox = rows[rows.length - 1].getBoundingClientRect();
    var rowHeight = (lastBox.bottom - firstBox.top) / rows.length;
    var headHeight = document.querySelector("#report-table thead").getBoundingClientRect().height;
    var moved = Math.abs(rowHeight - state.rowHeight) > 0.01 || Math.abs(headHeight - state.headHeight) > 0.5;
    if (rowHeight > 0 && moved) {
      state.rowHeight = rowHeight;
      state.headHeight = headHeight;
      renderWindow(true, true);
    }
  }

  var frameAsked = false;
  var measureNext = false;

  /* Scrolling redraws at most once a frame, and only when the view leaves what is drawn; a resize redraws
   * and measures the rows again (a phone-width card is taller than a row). */
  function askFrame(measure) {
    measureNext = measureNext || measure;
    if (frameAsked) { return; }
    frameAsked = true;
    requestAnimationFrame(function () {
      var measureNow = measureNext;
      frameAsked = false;
      measureNext = false;
      renderWindow(measureNow);
    });
  }

  /* `top`: the TOP_N rows with the most downtime last week, ties by store id (sortedOrder's rule). */
  function renderChart(top) {
    var list = $("chart-data");
    list.textContent = "";
    top.forEach(function (row) {
      var share = uptimeShare(row);
      var li = document.createElement("li");
      li.dataset.storeId = row.store_id;
      li.dataset.downtimeWeek = String(row.downtime_last_week);
      li.dataset.uptimeWeek = String(row.uptime_last_week);
      li.dataset.uptimeShare = share === null ? "" : String(share);
      li.textContent = row.store_id + ": " + fmt(row.downtime_last_week) + " h down, "
        + (share === null ? "no business hours" : (100 * share).toFixed(1) + "% up") + " in the last week";
      list.appendChild(li);
    });

    $("chart-heading").textContent = (top.length < TOP_N && top.length !== 0 ? "The " + top.length : TOP_N)
      + " stores with the most downtime in the last week";
    $("chart-empty").hidden = top.length > 0;
    var box = document.querySelector(".chart-box");
    box.hidden = top.length === 0;
    box.style.height = Math.max(160, top.length * 30 + 110) + "px";
    if (state.chart) { state.chart.destroy(); state.chart = null; }
    var canvas = $("chart");
    canvas.dataset.stores = top.map(function (row) { return row.store_id; }).join(",");
    if (!top.length) { return; }
    if (typeof window.Chart !== "function") {
      showMessage("The chart library did not load; the figures are in the table.", "warn");
      return;
    }
    var quiet = navigator.webdriver
      || (window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches);
    state.chart = new window.Chart(canvas, {
      type: "bar",
      data: {
        labels: top.map(function (row) { return row.store_id; }),
        datasets: [
          {
            label: "Down (h)",
            data: top.map(function (row) { return Number(row.downtime_last_week) || 0; }),
            backgroundColor: stripes(DOWN_COLOUR),
            borderColor: DOWN_COLOUR,
            borderWidth: 1
          },
          {
            label: "Up (h)",
            data: top.map(function (row) { return Number(row.uptime_last_week) || 0; }),
            backgroundColor: UP_COLOUR,
            borderColor: UP_COLOUR,
            borderWidth: 1
          }
        ]
      },
      options: {
        indexAxis: "y",
        responsive: true,
        maintainAspectRatio: false,
        animation: quiet ? false : { duration: 300 },
        interaction: { mode: "index", axis: "y", intersect: false },
        onClick: function (event, elements) {
          if (elements.length) { openWeek(top[elements[0].index].store_id); }
        },
        onHover: function (event, elements) {
          event.native.target.style.cursor = elements.length ? "pointer" : "default";
        },
        scales: {
          x: { stacked: true, beginAtZero: true, suggestedMax: 168, ticks: { stepSize: 24 },
               title: { display: true, text: "hours of business time in the last week (168 h = open all week)" } },
          y: { stacked: true,
               ticks: { autoSkip: false, font: { family: "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace" } } }
        },
        plugins: {
          legend: { position: "bottom" },
          tooltip: {
            callbacks: {
              label: function (ctx) {
                var row = top[ctx.dataIndex];
                var share = uptimeShare(row);
                var part = share === null ? "" : " (" + (100 * (ctx.datasetIndex === 0 ? 1 - share : share)).toFixed(1)
                  + "% of business hours)";
                return (ctx.datasetIndex === 0 ? " down " : " up ") + fmt(ctx.raw) + " h" + part;
              },
              footer: function () { return "click for the store's week"; }
            }
          }
        }
      }
    });
  }

  /* A diagonal-striped fill, so "down" differs from "up" by more than its colour (print, grey screens). */
  function stripes(colour) {
    var tile = document.createElement("canvas");
    tile.width = tile.height = 8;
    var g = tile.getContext("2d");
    g.fillStyle = colour;
    g.fillRect(0, 0, 8, 8);
    g.strokeStyle = "rgba(255,255,255,0.55)";
    g.lineWidth = 2;
    g.beginPath();
    g.moveTo(-2, 2); g.lineTo(2, -2);
    g.moveTo(0, 8); g.lineTo(8, 0);
    g.moveTo(6, 10); g.lineTo(10, 6);
    g.stroke();
    return g.createPattern(tile, "repeat");
  }

  // ------------------------------------------------------------------ changes since the previous report

  var CHANGES_LIMIT = 10;     // stores listed per kind of change

  /* GET /reports/<id>/changes: the stores whose downtime in the last day rose or fell most since the previous
   * Complete report, and the stores new or gone.  Loaded beside the table, never in its way. */
  function loadChanges(reportId) {
    var seq = ++state.changesSeq;
    var box = $("changes");
    box.dataset.state = "loading";
    box.dataset.reportId = reportId;
    $("changes-body").hidden = true;
    $("changes-meta").textContent = "Loading the changes since the previous report…";
    $("changes-meta").removeAttribute("title");
    api("/reports/" + encodeURIComponent(reportId) + "/changes?limit=" + CHANGES_LIMIT).then(function (body) {
      if (seq !== state.changesSeq) { return; }
      renderChanges(body);
    }, function (error) {
      if (seq !== state.changesSeq) { return; }
      if (error.status === 404) {     // the first Complete report: nothing before it to compare with
        box.dataset.state = "none";
        $("changes-meta").textContent = "No earlier complete report to compare this one with.";
        $("changes-meta").title = error.message;
        return;
      }
      box.dataset.state = "failed";
      $("changes-meta").textContent = "The changes since the previous report could not be loaded. "
        + firstSentence(error.message);
    });
  }

  function renderChanges(body) {
    var box = $("changes");
    var counts = body.counts || {};
    function counted(name) {
      var value = counts[name];
      return value === null || value === undefined ? (body[name] || []).length : value;
    }
    var meta = $("changes-meta");
    meta.textContent = "Compared with the report as of " + fmtTime(body.base_as_of) + " UTC ";
    var view = document.createElement("button");
    view.type = "button";
    view.className = "link view-base";
    view.dataset.reportId = body.base_report_id;
    view.textContent = "(view it)";
    view.setAttribute("aria-label", "View the previous report, as of " + fmtTime(body.base_as_of));
    view.addEventListener("click", function () { clearMessage(); follow(body.base_report_id); });
    meta.appendChild(view);
    meta.appendChild(document.createTextNode(
      ": downtime in the last day rose at " + counted("rose") + " stores and fell at " + counted("fell")
      + "; " + counted("new") + " new, " + counted("gone") + " gone."));
    fillChangeTable($("changes-rose"), body.rose || [], "No store was down longer.");
    fillChangeTable($("changes-fell"), body.fell || [], "No store was down less.");
    var moved = counted("new") + counted("gone") > 0;
    $("changes-new").textContent = moved ? "" : "No store is new or gone.";
    $("changes-gone").hidden = !moved;
    if (moved) {
      fillChangeList($("changes-new"), "New stores", counted("new"), body["new"] || [], "downtime_last_day", true);
      fillChangeList($("changes-gone"), "Gone stores", counted("gone"), body.gone || [], "base_downtime_last_day",
                     false);
    }
    $("changes-body").hidden = false;
    box.dataset.baseReportId = body.base_report_id;
    box.dataset.state = "shown";
  }

  function storeButton(storeId) {
    var open = document.createElement("button");
    open.type = "button";
    open.className = "store-link";
    open.dataset.storeId = storeId;
    open.textContent = storeId;
    open.title = storeId;
    open.setAttribute("aria-label", "Show the week of store " + storeId);
    return open;
  }

  function fillChangeTable(table, rows, emptyText) {
    var tbody = table.querySelector("tbody");
    tbody.textContent = "";
    rows.forEach(function (row) {
      var tr = document.createElement("tr");
      tr.dataset.storeId = row.store_id;
      var th = document.createElement("th");
      th.scope = "row";
      th.appendChild(storeButton(row.store_id));
      tr.appendChild(th);
      var cells = [["base_downtime_last_day", "Before"], ["downtime_last_day", "Now"], ["change", "Change"]];
      cells.forEach(function (pair) {
        var td = document.createElement("td");
        td.className = "num";
        td.dataset.key = pair[0];
        td.dataset.label = pair[1];
        var value = row[pair[0]];
        td.textContent = pair[0] === "change" && Number(value) > 0 ? "+" + fmt(value) : fmt(value);
        tr.appendChild(td);
      });
      tbody.appendChild(tr);
    });
    if (!rows.length) {
      var empty = document.createElement("tr");
      var td = document.createElement("td");
      td.colSpan = 4;
      td.className = "empty";
      td.textContent = emptyText;
      empty.appendChild(td);
      tbody.appendChild(empty);
    }
  }

  /* "New stores (3): a (1.00 h), b (0.00 h)": the stores in a report but not the other, with their figure. */
  function fillChangeList(box, label, total, rows, key, clickable) {
    box.textContent = "";
    var strong = document.createElement("strong");
    strong.textContent = label + " (" + total + ")" + (rows.length ? ": " : ": none.");
    box.appendChild(strong);
    rows.forEach(function (row, index) {
      var item = document.createElement("span");
      item.className = "change-item";
      item.dataset.storeId = row.store_id;
      if (clickable) {
        item.appendChild(storeButton(row.store_id));
      } else {
        var code = document.createElement("code");
        code.textContent = row.store_id;
        item.appendChild(code);
      }
      item.appendChild(document.createTextNode(" " + fmt(row[key]) + " h"));
      box.appendChild(item);
      if (index < rows.length - 1) { box.appendChild(document.createTextNode(", ")); }   // a line may break here
    });
    if (total > rows.length) { box.appendChild(document.createTextNode(" and " + (total - rows.length) + " more.")); }
  }

  // ------------------------------------------------------------------ a store's history across reports

  var HISTORY_LIMIT = 30;     // reports in the trend

  /* GET /stores/<id>/history: the store's row in each Complete report, newest first; drawn oldest to newest. */
  function loadHistory(storeId) {
    var seq = ++state.historySeq;
    var box = $("history");
    box.dataset.state = "loading";
    box.dataset.storeId = storeId;
    $("history-body").hidden = true;
    $("history-meta").textContent = "Loading the store's history…";
    api("/stores/" + encodeURIComponent(storeId) + "/history?limit=" + HISTORY_LIMIT).then(function (body) {
      if (seq !== state.historySeq) { return; }
      renderHistory(body);
    }, function (error) {
      if (seq !== state.historySeq) { return; }
      box.dataset.state = "failed";
      $("history-meta").textContent = "The store's history could not be loaded. " + firstSentence(error.message);
    });
  }

  function renderHistory(body) {
    var box = $("history");
    var points = (body.points || []).slice().reverse();      // oldest first, left to right
    var current = state.report ? state.report.report_id : null;
    if (!points.length) {
      box.dataset.state = "empty";
      $("history-meta").textContent = "No complete report has this store yet.";
      return;
    }
    var ringed = points.some(function (p) { return p.report_id === current; });
    $("history-meta").textContent = points.length === 1
      ? "One report has this store so far: the trend starts with the next one."
      : "The last " + points.length + " reports that have this store, oldest on the left"
        + (ringed ? "; the ringed point is the report on show." : ".");
    Array.prototype.forEach.call(document.querySelectorAll("#history .spark"), function (figure) {
      drawSpark(figure, points, figure.dataset.key, current);
    });
    var tbody = document.querySelector("#history-table tbody");
    tbody.textContent = "";
    body.points.forEach(function (point) {
      var tr = document.createElement("tr");
      tr.dataset.reportId = point.report_id;
      if (point.report_id === current) { tr.className = "current"; tr.setAttribute("aria-current", "true"); }
      var asOf = document.createElement("td");
      asOf.textContent = fmtTime(point.as_of);
      tr.appendChild(asOf);
      ["downtime_last_day", "downtime_last_week"].forEach(function (key) {
        var td = document.createElement("td");
        td.className = "num";
        td.dataset.key = key;
        td.textContent = fmt(point[key]);
        tr.appendChild(td);
      });
      var action = document.createElement("td");
      if (point.report_id === current) {
        action.textContent = "on show";
      } else {
        var view = document.createElement("button");
        view.type = "button";
        view.className = "link";
        view.textContent = "View";
        view.setAttribute("aria-label", "View the report as of " + fmtTime(point.as_of));
        view.addEventListener("click", function () { clearMessage(); follow(point.report_id); });
        action.appendChild(view);
      }
      tr.appendChild(action);
      tbody.appendChild(tr);
    });
    $("history-body").hidden = false;
    box.dataset.state = "shown";
  }

  var SVG = "http://www.w3.org/2000/svg";

  /* One measure as a small line, reports evenly spaced (oldest left), 0 at the bottom; each point a round dot
   * carrying its report id and value (and a tooltip), the report on show ringed. */
  function drawSpark(figure, points, key, current) {
    var width = 300, height = 60, pad = 6;
    var values = points.map(function (p) { return Number(p[key]) || 0; });
    var top = Math.max.apply(null, values.concat([key === "downtime_last_week" ? 1 : 0.25]));
    function x(i) { return points.length === 1 ? width / 2 : pad + (width - 2 * pad) * i / (points.length - 1); }
    function y(v) { return height - pad - (height - 2 * pad) * v / top; }
    var svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    var latest = values[values.length - 1];
    svg.setAttribute("aria-label", figure.querySelector(".spark-title").textContent + ": " + fmt(latest)
      + " in the newest report, between " + fmt(Math.min.apply(null, values)) + " and "
      + fmt(Math.max.apply(null, values))
      + " across " + points.length + " reports");
    var base = document.createElementNS(SVG, "path");
    base.setAttribute("class", "spark-base");
    base.setAttribute("d", "M0 " + (height - pad) + " H" + width);
    svg.appendChild(base);
    if (points.length > 1) {
      var line = document.createElementNS(SVG, "path");
      line.setAttribute("class", "spark-line");
      line.setAttribute("d", values.map(function (v, i) {
        return (i ? "L" : "M") + x(i).toFixed(2) + " " + y(v).toFixed(2);
      }).join(" "));
      svg.appendChild(line);
    }
    values.forEach(function (v, i) {
      var dot = document.createElementNS(SVG, "path");   // a zero-length line with round caps: a dot that stays round
      dot.setAttribute("class", "spark-dot" + (points[i].report_id === current ? " current" : ""));
      dot.setAttribute("d", "M" + x(i).toFixed(2) + " " + y(v).toFixed(2) + " h0");
      dot.dataset.reportId = points[i].report_id;
      dot.dataset.value = String(points[i][key]);
      var title = document.createElementNS(SVG, "title");
      title.textContent = fmtTime(points[i].as_of) + " UTC: " + fmt(v) + " h";
      dot.appendChild(title);
      svg.appendChild(dot);
    });
    var box = figure.querySelector(".spark-box");
    box.textContent = "";
    box.appendChild(svg);
    figure.querySelector(".spark-scale").textContent = "highest " + fmt(Math.max.apply(null, values)) + " h · newest "
      + fmt(latest) + " h";
    figure.querySelector(".spark-axis .from").textContent = fmtTime(points[0].as_of);
    figure.querySelector(".spark-axis .to").textContent = points.length > 1
      ? fmtTime(points[points.length - 1].as_of) : "";
  }

  // ------------------------------------------------------------------ a store's week

  /* Microseconds since the epoch of an API instant ("2023-01-24T13:00:00.000000Z"): exact in a double. */
  function micros(iso) {
    return Date.parse(iso.slice(0, 19) + "Z") * 1000 + Number(iso.slice(20, 26));
  }

  var zoneFormats = {};

  function zoneFormat(zone) {
    if (!zoneFormats[zone]) {
      zoneFormats[zone] = new Intl.DateTimeFormat("en-GB", {
        timeZone: zone, hourCycle: "h23", weekday: "short", year: "numeric", month: "2-digit", day: "2-digit",
        hour: "2-digit", minute: "2-digit", second: "2-digit"
      });
    }
    return zoneFormats[zone];
  }

  /* The local wall clock in `zone` at `ms` since the epoch: {year, month, day, hour, minute, second, weekday}. */
  function localParts(ms, zone) {
    var parts = {};
    zoneFormat(zone).formatToParts(new Date(ms)).forEach(function (part) { parts[part.type] = part.value; });
    ["year", "month", "day", "hour", "minute", "second"].forEach(function (key) { parts[key] = Number(parts[key]); });
    return parts;
  }

  function offsetMs(ms, zone) {
    var p = localParts(ms, zone);
    return Date.UTC(p.year, p.month - 1, p.day, p.hour, p.minute, p.second) - Math.floor(ms / 1000) * 1000;
  }

  /* The instant (ms) at which the clock in `zone` reads y-m-d h:00 (near enough across a DST change to draw). */
  function localToMs(year, month, day, hour, zone) {
    var wall = Date.UTC(year, month - 1, day, hour);
    var first = wall - offsetMs(wall, zone);
    return wall - offsetMs(first, zone);
  }

  var MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  function localClock(us, zone, withDate) {
    var p = localParts(Math.floor(us / 1000), zone);
    var clock = pad(p.hour) + ":" + pad(p.minute) + ":" + pad(p.second);
    return withDate ? p.weekday + " " + p.day + " " + MONTHS[p.month - 1] + " " + clock : clock;
  }

  function duration(us) {
    var seconds = Math.round(us / 1e6);
    var h = Math.floor(seconds / 3600), m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
    return (h ? h + " h " : "") + (h || m ? m + " min" : "") + (s ? (h || m ? " " : "") + s + " s" : "") || "0 s";
  }

  /* Business time by status inside each window, added up from the segments: µs per window and status. */
  function segmentTotals(body) {
    var totals = {};
    WINDOW_NAMES.forEach(function (name) {
      var low = micros(body.windows[name][0]), high = micros(body.windows[name][1]);
      var up = 0, down = 0;
      body.segments.forEach(function (seg) {
        var part = Math.max(0, Math.min(micros(seg.end), high) - Math.max(micros(seg.start), low));
        if (seg.status === "active") { up += part; } else { down += part; }
      });
      totals[name] = { up: up, down: down };
    });
    return totals;
  }

  function openWeek(storeId) {
    if (!state.report) { return; }
    var reportId = state.report.report_id;
    var seq = ++state.weekSeq;
    var section = $("store-week");
    section.hidden = false;
    section.dataset.state = "loading";
    section.dataset.storeId = "";
    section.dataset.reportId = reportId;
    $("week-store").textContent = storeId;
    $("week-meta").textContent = "";
    $("week-body").hidden = true;
    $("week-loading").textContent = "Loading the week of store " + storeId + "…";
    section.scrollIntoView({ block: "start" });
    $("week-heading").focus({ preventScroll: true });
    loadHistory(storeId);
    api("/stores/" + encodeURIComponent(storeId) + "/timeline?report_id=" + encodeURIComponent(reportId))
      .then(function (body) {
        if (seq !== state.weekSeq) { return; }
        renderWeek(body);
        $("week-loading").textContent = "";
        $("week-body").hidden = false;
        section.dataset.storeId = storeId;
        section.dataset.state = "shown";
      }, function (error) {
        if (seq !== state.weekSeq) { return; }
        section.dataset.state = "failed";
        $("week-loading").textContent = "Could not load the week of store " + storeId + ". " + error.message;
      });
  }

  function closeWeek() {
    state.weekSeq++;
    state.historySeq++;
    var section = $("store-week");
    section.hidden = true;
    section.dataset.state = "";
    section.dataset.storeId = "";
  }

  function block(className, left, width, title) {
    var div = document.createElement("div");
    div.className = className;
    div.style.left = left + "%";
    div.style.width = width + "%";
    if (title) { div.title = title; }
    return div;
  }

  function renderWeek(body) {
    var zone = body.timezone;
    var weekStart = micros(body.windows.week[0]);
    var now = micros(body.windows.week[1]);
    var dayStart = micros(body.windows.day[0]);
    var hourStart = micros(body.windows.hour[0]);
    var business = body.business_hours.map(function (b) { return [micros(b.start), micros(b.end)]; });
    var segments = body.segments.map(function (seg, i) {
      return { start: micros(seg.start), end: micros(seg.end), up: seg.status === "active", index: i };
    });
    var polls = body.polls.map(function (p) { return { at: micros(p.timestamp), up: p.status === "active" }; });
    var offset = offsetMs(Math.floor(now / 1000), zone) / 60000;
    $("week-meta").textContent = "Local time " + zone + " (UTC" + (offset < 0 ? "−" : "+")
      + pad(Math.floor(Math.abs(offset) / 60)) + ":" + pad(Math.abs(offset) % 60) + " at the report's now) · as of "
      + localClock(now, zone, true) + " local";

    var days = $("week-days");
    days.textContent = "";
    var first = localParts(Math.floor(weekStart / 1000), zone);
    var last = localParts(Math.floor((now - 1) / 1000), zone);
    var axis = document.createElement("div");
    axis.className = "week-day axis";
    axis.setAttribute("aria-hidden", "true");
    axis.appendChild(document.createElement("div"));
    var scale = document.createElement("div");
    scale.className = "axis-track";
    [0, 6, 12, 18, 24].forEach(function (hour) {
      var label = document.createElement("span");
      label.style.left = (100 * hour / 24) + "%";
      label.textContent = pad(hour) + ":00";
      scale.appendChild(label);
    });
    axis.appendChild(scale);
    days.appendChild(axis);
    var date = Date.UTC(first.year, first.month - 1, first.day);
    var lastDate = Date.UTC(last.year, last.month - 1, last.day);
    for (; date <= lastDate; date += 86400000) {
      var d = new Date(date);
      var y = d.getUTCFullYear(), m = d.getUTCMonth() + 1, day = d.getUTCDate();
      var from = localToMs(y, m, day, 0, zone) * 1000;
      var next = new Date(date + 86400000);
      var to = localToMs(next.getUTCFullYear(), next.getUTCMonth() + 1, next.getUTCDate(), 0, zone) * 1000;
      days.appendChild(dayRow(from, to, y, m, day));
    }

    function x(us, from, to) { return Math.max(0, Math.min(100, 100 * (us - from) / (to - from))); }

    function dayRow(from, to, y, m, day) {
      var row = document.createElement("div");
      row.className = "week-day";
      row.setAttribute("role", "listitem");
      var label = document.createElement("div");
      label.className = "day-label";
      var weekday = localParts(Math.floor((from + to) / 2000), zone).weekday;
      label.textContent = weekday + " " + day + " " + MONTHS[m - 1];
      var track = document.createElement("div");
      track.className = "track";
      var up = 0, down = 0;

      [6, 12, 18].forEach(function (hour) {
        var at = localToMs(y, m, day, hour, zone) * 1000;
        track.appendChild(block("grid", x(at, from, to), 0));
      });
      if (weekStart > from) { track.appendChild(block("outside", 0, x(weekStart, from, to), "before the week")); }
      if (now < to) { track.appendChild(block("outside", x(now, from, to), 100 - x(now, from, to), "after the report's now")); }
      business.forEach(function (b) {
        if (b[1] <= from || b[0] >= to) { return; }
        var a = x(b[0], from, to), z = x(b[1], from, to);
        track.appendChild(block("open", a, z - a, "open " + localClock(b[0], zone) + "–" + localClock(b[1], zone)));
      });
      segments.forEach(function (seg) {
        var start = Math.max(seg.start, from), end = Math.min(seg.end, to);
        if (end <= start) { return; }
        if (seg.up) { up += end - start; } else { down += end - start; }
        var a = x(start, from, to), z = x(end, from, to);
        var piece = block("seg " + (seg.up ? "up" : "down"), a, z - a,
                          (seg.up ? "up " : "down ") + localClock(seg.start, zone, true) + " – "
                          + localClock(seg.end, zone, true) + " (" + duration(seg.end - seg.start) + ")");
        piece.dataset.seg = String(seg.index);
        track.appendChild(piece);
      });
      polls.forEach(function (p) {
        if (p.at < from || p.at >= to) { return; }
        var tick = block("tick " + (p.up ? "up" : "down"), x(p.at, from, to), 0,
                         "poll " + localClock(p.at, zone) + ": " + (p.up ? "active" : "inactive"));
        tick.dataset.at = String(p.at);
        track.appendChild(tick);
      });
      [[dayStart, "1 d"], [hourStart, "1 h"]].forEach(function (mark) {
        if (mark[0] < from || mark[0] >= to) { return; }
        var line = block("mark", x(mark[0], from, to), 0, "the last " + (mark[1] === "1 d" ? "day" : "hour")
                         + " starts " + localClock(mark[0], zone));
        line.dataset.label = mark[1];
        track.appendChild(line);
      });
      var sums = document.createElement("div");
      sums.className = "day-sums";
      sums.textContent = "▲ " + (up / 36e8).toFixed(2) + " h · ▼ " + (down / 36e8).toFixed(2) + " h";
      row.setAttribute("aria-label", label.textContent + ": up " + (up / 36e8).toFixed(2) + " h, down "
                       + (down / 36e8).toFixed(2) + " h in business hours");
      label.appendChild(sums);
      row.appendChild(label);
      row.appendChild(track);
      return row;
    }

    // totals: the segments added up per window, beside the report's own row
    var totals = segmentTotals(body);
    var tbody = document.querySelector("#week-totals tbody");
    tbody.textContent = "";
    WINDOW_NAMES.forEach(function (name) {
      var unit = name === "hour" ? 6e7 : 36e8;
      var suffix = name === "hour" ? " min" : " h";
      var tr = document.createElement("tr");
      tr.dataset.window = name;
      var th = document.createElement("th");
      th.scope = "row";
      th.textContent = "Last " + name;
      var starts = document.createElement("td");
      starts.textContent = localClock(micros(body.windows[name][0]), zone, true);
      tr.appendChild(th);
      tr.appendChild(starts);
      [["uptime", totals[name].up], ["downtime", totals[name].down]].forEach(function (pair) {
        var td = document.createElement("td");
        td.className = "num";
        td.dataset.key = pair[0] + "_last_" + name;
        td.dataset.value = String(pair[1] / unit);
        td.textContent = (pair[1] / unit).toFixed(2) + suffix;
        tr.appendChild(td);
      });
      ["uptime", "downtime"].forEach(function (kind) {
        var td = document.createElement("td");
        td.className = "num report";
        td.dataset.key = kind + "_last_" + name;
        td.textContent = fmt(body.totals[kind + "_last_" + name]) + suffix;
        tr.appendChild(td);
      });
      tbody.appendChild(tr);
    });

    var list = $("week-segments");
    list.textContent = "";
    segments.forEach(function (seg) {
      var li = document.createElement("li");
      li.textContent = (seg.up ? "Up " : "Down ") + localClock(seg.start, zone, true) + " – "
        + localClock(seg.end, zone, true) + " (" + duration(seg.end - seg.start) + ")";
      list.appendChild(li);
    });
    var pollList = $("week-polls");
    pollList.textContent = "";
    polls.forEach(function (p) {
      var li = document.createElement("li");
      li.textContent = "Poll " + localClock(p.at, zone, true) + ": " + (p.up ? "active" : "inactive")
        + (p.at < weekStart ? " (before the week: decides its start)" : "");
      pollList.appendChild(li);
    });
  }

  // ------------------------------------------------------------------ CSV download with a token

  function onCsvClick(event) {
    var token = sessionToken || getToken();
    if (!token) { return; }            // plain link: the browser downloads it
    event.preventDefault();
    var link = event.currentTarget;
    fetch(link.href, { headers: authHeaders({ Accept: "text/csv" }) }).then(function (response) {
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      return response.blob();
    }).then(function (blob) {
      var url = URL.createObjectURL(blob);
      var a = document.createElement("a");
      a.href = url;
      a.download = link.getAttribute("download") || "report.csv";
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(function () { URL.revokeObjectURL(url); }, 10000);
    }).catch(function (error) {
      showMessage("Could not download the CSV: " + error.message);
    });
  }

  // ------------------------------------------------------------------ past reports

  function loadPastReports(page) {
    page = page || 1;
    var seq = ++state.listSeq;       // only the newest request may draw the list
    return api("/reports?page=" + page + "&per_page=" + PER_PAGE).then(function (body) {
      if (seq !== state.listSeq) { return; }
      var pages = Math.max(1, Math.ceil(body.total / PER_PAGE));
      if (page > pages && body.total > 0) { return loadPastReports(pages); }
      state.page = page;
      renderPastReports(body);
    }, function (error) {
      if (seq !== state.listSeq) { return; }
      showMessage("Could not list past reports. " + error.message);
    });
  }

  function renderPastReports(body) {
    var tbody = document.querySelector("#past-reports tbody");
    tbody.textContent = "";
    body.reports.forEach(function (report) {
      var tr = document.createElement("tr");
      tr.dataset.reportId = report.report_id;
      tr.dataset.status = report.status;
      if (report.trigger) { tr.dataset.trigger = report.trigger; }

      var created = document.createElement("td");
      created.textContent = fmtTime(report.created_at);
      created.title = report.report_id;
      if (report.trigger === "schedule") {      // "api" (started by hand) is the usual case and goes unmarked
        var tag = document.createElement("span");
        tag.className = "tag";
        tag.textContent = "scheduled";
        created.appendChild(document.createTextNode(" "));
        created.appendChild(tag);
      }
      var asOf = document.createElement("td");
      asOf.textContent = fmtTime(report.as_of);
      var status = document.createElement("td");
      var badge = document.createElement("span");
      badge.className = "badge " + String(report.status).toLowerCase();
      badge.textContent = report.status;
      status.appendChild(badge);
      if (report.status === "Failed" && report.error) {
        var reason = document.createElement("div");
        reason.className = "reason";
        reason.textContent = report.error;
        status.appendChild(reason);
      }
      var count = document.createElement("td");
      count.className = "num";
      count.textContent = report.row_count === null || report.row_count === undefined ? "—" : report.row_count;

      var actions = document.createElement("td");
      actions.className = "actions";
      if (report.status === "Complete" || report.status === "Running") {
        var view = document.createElement("button");
        view.type = "button";
        view.className = "view";
        view.dataset.reportId = report.report_id;
        view.textContent = report.status === "Complete" ? "View" : "Follow";
        view.setAttribute("aria-label", view.textContent + " report created " + fmtTime(report.created_at));
        view.addEventListener("click", function () { clearMessage(); follow(report.report_id); });
        actions.appendChild(view);
      }
      if (report.status === "Complete") {
        var csv = document.createElement("a");
        csv.href = "/get_report?report_id=" + report.report_id + "&format=csv";
        csv.setAttribute("download", "report_" + report.report_id + ".csv");
        csv.textContent = "CSV";
        csv.setAttribute("aria-label", "Download CSV of report created " + fmtTime(report.created_at));
        csv.addEventListener("click", onCsvClick);
        actions.appendChild(csv);
      }

      created.dataset.label = "Created (UTC)";     // shown before the value where the table is stacked (phones)
      asOf.dataset.label = "As of (UTC)";
      count.dataset.label = "Stores";
      [created, asOf, status, count, actions].forEach(function (cell) { tr.appendChild(cell); });
      tbody.appendChild(tr);
    });
    $("past-empty").hidden = body.reports.length > 0;
    var pages = Math.max(1, Math.ceil(body.total / PER_PAGE));
    $("page-info").textContent = "Page " + state.page + " of " + pages + " · " + body.total + " reports";
    $("newer").disabled = state.page <= 1;
    $("older").disabled = state.page >= pages;
    markCurrentReport();
  }

  function markCurrentReport() {
    var current = state.report ? state.report.report_id : null;
    var rows = document.querySelectorAll("#past-reports tbody tr");
    Array.prototype.forEach.call(rows, function (tr) {
      if (current && tr.dataset.reportId === current) {
        tr.classList.add("current");
        tr.setAttribute("aria-current", "true");
      } else {
        tr.classList.remove("current");
        tr.removeAttribute("aria-current");
      }
    });
  }

  // ------------------------------------------------------------------ start-up

  /* #token=<token> in the address sets the token.  The fragment never reaches the server, so the
   * token stays out of access logs and Referer headers; it is then dropped from the address too. */
  function readTokenFromUrl() {
    try { localStorage.removeItem(TOKEN_KEY); } catch (e) { /* older pages kept it there: forget it */ }
    var params = new URLSearchParams(location.hash.replace(/^#/, ""));
    if (!params.has("token")) { return; }
    setToken(params.get("token"));
    params.delete("token");     // keep the token out of history, bookmarks and screenshots
    var rest = params.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
  }

  function init() {
    setPageState("idle");
    readTokenFromUrl();
    $("token").value = sessionToken || getToken();

    $("trigger-form").addEventListener("submit", onTrigger);
    $("csv-link").addEventListener("click", onCsvClick);

    $("filter").addEventListener("input", function (event) {   // one pass over the ids: no need to wait
      var value = event.target.value.trim();
      if (value === state.filter) { return; }
      state.filter = value;
      applyView(true);
    });
    document.querySelector("#report .table-scroll").addEventListener("scroll", function () { askFrame(false); },
                                                                       { passive: true });
    window.addEventListener("resize", function () { askFrame(true); });

    ["#report-table tbody", "#changes"].forEach(function (selector) {
      document.querySelector(selector).addEventListener("click", function (event) {
        var button = event.target.closest("button.store-link");
        if (button) { openWeek(button.dataset.storeId); }
      });
    });
    $("week-close").addEventListener("click", closeWeek);

    $("refresh-reports").addEventListener("click", function () { loadPastReports(state.page); });
    $("newer").addEventListener("click", function () { loadPastReports(state.page - 1); });
    $("older").addEventListener("click", function () { loadPastReports(state.page + 1); });

    $("token-form").addEventListener("submit", function (event) {
      event.preventDefault();
      setToken($("token").value.trim());
      showMessage($("token").value.trim() ? "Token saved in this browser." : "Token cleared.", "info");
      loadPastReports(state.page);
    });
    $("token-clear").addEventListener("click", function () {
      $("token").value = "";
      setToken("");
      showMessage("Token cleared.", "info");
    });

    loadPastReports(1);
    followHash();
    window.addEventListener("hashchange", function () { readTokenFromUrl(); followHash(); });
  }

  /* #report=<id> in the address opens that report (bookmarks, reloads, links). */
  function followHash() {
    var match = /^#report=([0-9a-f]{32})$/.exec(location.hash);
    if (!match || !REPORT_ID.test(match[1])) { return; }
    if (state.report && state.report.report_id === match[1]) { return; }
    clearMessage();
    follow(match[1]);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
