// stratum explorer: participants x metrics x span, charted from /data's answer.
//
// Pixels, not rows: the page asks for about two points per pixel column (max_points), and
// raw answers come M4-reduced to the chart's width (downsample=m4&width=N: per column the
// first, last, lowest and highest row, which draw the same line as every row). Zooming or
// panning asks again for the visible span, so the resolution follows it.
// The key lives in sessionStorage (this tab only) and travels in the Authorization header,
// never in a URL; the view (without the key) lives in the URL's fragment.
"use strict";

(function () {
  const KEY_STORAGE = "stratum.key";
  const MAX_RETRIES = 5; // 503/429 answers retried after their Retry-After
  const PAGE_SIZE = 50000;
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
                  "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"];

  const $ = (id) => document.getElementById(id);
  // What tests and the benchmark read: requests made, points drawn, first chart time.
  const exposed = (window.stratumExplorer = {
    requests: [], // each /data request's parameters, in order
    firstChartMs: null, // performance.now() when the first chart was drawn
    firstChart: null, // its parts: /data (all pages), /catalog (asked at the same time), drawing
    draws: 0,
    lastMeta: null,
    pointsDrawn: () => pointsDrawn(),
    xRange: () => (state.chart ? [state.chart.scales.x.min, state.chart.scales.x.max] : null),
  });
  const state = { catalog: null, view: null, chart: null, seq: 0, params: null };

  class ApiError extends Error {
    constructor(status, body, retryAfter) {
      const error = (body && body.error) || {};
      super(error.message || `HTTP ${status}`);
      this.status = status;
      this.code = error.code || null;
      this.parameter = error.parameter || null;
      this.retryAfter = retryAfter;
    }
  }

  // -- the API -------------------------------------------------------------------------

  function keyHeaders() {
    const key = sessionStorage.getItem(KEY_STORAGE);
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  function words(error) {
    const detail = error.message;
    switch (error.status) {
      case 400:
        return `The server refused the request${error.parameter ? ` (parameter ${error.parameter})` : ""}: ${detail}`;
      case 401:
        return `No valid key: enter an API key above (\`stratum key create\` makes one). The server said: ${detail}`;
      case 403:
        return `This key may not read that: ${detail}`;
      case 429:
        return `Too many requests with this key at once: ${detail}`;
      case 503:
        return `The server cannot answer now: ${detail}`;
      default:
        return `The server answered ${error.status}: ${detail}`;
    }
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // GET path?params; a 503 or 429 is retried after the seconds its Retry-After names
  // (said on the page meanwhile), unless a newer request replaced this one.
  async function get(path, params, seq) {
    for (let attempt = 0; ; attempt++) {
      const response = await fetch(`${path}?${params}`, { headers: keyHeaders(), cache: "no-store" });
      if (response.ok) return response;
      let body = null;
      try { body = await response.json(); } catch (_) { /* not JSON: the status says it */ }
      const retryAfter = Number.parseInt(response.headers.get("Retry-After") || "", 10);
      const error = new ApiError(response.status, body, Number.isFinite(retryAfter) ? retryAfter : null);
      const retryable = (error.status === 503 || error.status === 429) && error.retryAfter !== null;
      if (!retryable || attempt >= MAX_RETRIES) throw error;
      showError(`${words(error)}\nRetrying in ${error.retryAfter} s (attempt ${attempt + 2} of ${MAX_RETRIES + 1}).`, true);
      await sleep(error.retryAfter * 1000);
      if (seq !== undefined && seq !== state.seq) throw new Superseded();
    }
  }

  class Superseded extends Error {}

  function showError(text, retrying) {
    const box = $("error");
    box.textContent = text;
    box.classList.toggle("retrying", Boolean(retrying));
    box.hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
    $("error").textContent = "";
  }

  function fail(error) {
    if (error instanceof Superseded) return;
    showError(error instanceof ApiError ? words(error) : `The page could not reach the server: ${error.message}`);
  }

  // -- the catalog and the form ----------------------------------------------------------

  async function loadCatalog() {
    const keyState = $("key-state");
    keyState.textContent = sessionStorage.getItem(KEY_STORAGE) ? "key set for this tab" : "no key set";
    // A view named in the URL is asked for at once, beside the catalog: the catalog only
    // fills the form and names the units, which the chart waits for before drawing.
    let catalogSettled;
    state.catalogReady = new Promise((resolve) => { catalogSettled = resolve; });
    const linked = viewFromHash();
    if (linked) {
      setSpan(linked);
      show(linked);
    }
    const started = performance.now();
    let catalog;
    try {
      catalog = await (await get("/catalog", new URLSearchParams())).json();
    } catch (error) {
      fail(error);
      return;
    } finally {
      exposed.catalogMs = performance.now() - started;
      catalogSettled();
    }
    state.catalog = catalog;
    const users = $("users");
    users.replaceChildren(...(catalog.users || []).map((id) => new Option(`participant ${id}`, String(id))));
    const metrics = $("metrics");
    metrics.replaceChildren(...catalog.metrics.map((m) => new Option(`${m.name} (${m.unit})`, m.name)));
    if (catalog.users === null) {
      showError("The warm store is unreachable: the participant list is unknown until it is back.");
      return;
    }
    if (linked) {
      setSelections(state.view || linked); // the span fields may have been edited meanwhile
      return;
    }
    clearError();
    const view = defaultView(catalog);
    if (!view) {
      $("status").textContent = "This key sees no participants yet.";
      return;
    }
    setForm(view);
    await show(view);
  }

  function coverageSpan(catalog, userId) {
    const entry = (catalog.coverage || []).find((c) => c.user_id === userId);
    if (!entry) return null;
    const spans = [entry.warm, ...Object.values(entry.lake || {})].filter(Boolean);
    if (!spans.length) return null;
    const first = spans.map((s) => s.first_day).sort()[0];
    const last = spans.map((s) => s.last_day).sort().at(-1);
    const end = new Date(`${last}T00:00:00Z`);
    end.setUTCDate(end.getUTCDate() + 1);
    return { start: first, end: end.toISOString().slice(0, 10) };
  }

  function defaultView(catalog) {
    if (!catalog.users || !catalog.users.length || !catalog.metrics.length) return null;
    const user = catalog.users[0];
    const names = catalog.metrics.map((m) => m.name);
    const metric = names.includes("heart_rate") ? "heart_rate" : names[0];
    const span = coverageSpan(catalog, user) || { start: "2024-01-01", end: "2024-01-02" };
    return { users: [String(user)], metrics: [metric], start: span.start, end: span.end, resolution: "auto" };
  }

  function viewFromHash() {
    const hash = new URLSearchParams(location.hash.slice(1));
    if (!hash.get("user_id") || !hash.get("metric") || !hash.get("start") || !hash.get("end")) return null;
    return {
      users: hash.get("user_id").split(","),
      metrics: hash.get("metric").split(","),
      start: hash.get("start"),
      end: hash.get("end"),
      resolution: hash.get("resolution") || "auto",
    };
  }

  function setForm(view) {
    setSelections(view);
    setSpan(view);
  }

  function setSelections(view) {
    for (const option of $("users").options) option.selected = view.users.includes(option.value);
    for (const option of $("metrics").options) option.selected = view.metrics.includes(option.value);
  }

  function setSpan(view) {
    $("start").value = view.start;
    $("end").value = view.end;
    $("resolution").value = view.resolution;
  }

  function viewFromForm() {
    const chosen = (select) => Array.from(select.selectedOptions, (o) => o.value);
    return {
      users: chosen($("users")),
      metrics: chosen($("metrics")),
      start: $("start").value.trim(),
      end: $("end").value.trim(),
      resolution: $("resolution").value,
    };
  }

  // -- one view: /data, the chart, /plan -----------------------------------------------------

  function plotWidth() {
    const chart = state.chart;
    const css = chart ? chart.bbox.width / devicePixelRatio : $("chart").clientWidth - 120;
    return Math.max(50, Math.min(16384, Math.round(css)));
  }

  function queryParams(view) {
    const width = plotWidth();
    const params = new URLSearchParams({
      user_id: view.users.join(","),
      metric: view.metrics.join(","),
      start: view.start,
      end: view.end,
      resolution: view.resolution,
      max_points: String(2 * width), // two points per pixel column
      downsample: "m4", // raw answers: per pixel column, the rows that draw the line
      width: String(width),
    });
    return params;
  }

  async function show(view) {
    const seq = ++state.seq;
    state.view = view;
    const params = queryParams(view);
    exposed.requests.push(Object.fromEntries(params));
    $("status").textContent = `Asking for ${view.start} to ${view.end}...`;
    const started = performance.now();
    let rows = [];
    let meta = null;
    try {
      let cursor = null;
      do {
        const page = new URLSearchParams(params);
        page.set("page_size", String(PAGE_SIZE));
        if (cursor) page.set("cursor", cursor);
        const body = await (await get("/data", page, seq)).json();
        if (seq !== state.seq) return; // a newer view replaced this one
        rows = rows.concat(body.data);
        meta = body.meta;
        cursor = meta.next;
      } while (cursor);
    } catch (error) {
      if (seq === state.seq) fail(error);
      return;
    }
    const fetched = performance.now();
    await state.catalogReady; // the units of the axes
    if (seq !== state.seq) return;
    clearError();
    state.params = params;
    const ready = performance.now();
    draw(view, rows, meta);
    const drawn = performance.now();
    if (exposed.firstChartMs === null) {
      exposed.firstChartMs = drawn;
      exposed.firstChart = { dataMs: fetched - started, drawMs: drawn - ready, catalogMs: exposed.catalogMs };
    }
    exposed.lastMeta = meta;
    exposed.draws += 1;
    const reduced = meta.downsample === "m4" ? ` · M4 over ${params.get("width")} pixel columns` : "";
    $("status").textContent =
      `resolution ${meta.resolution}${meta.requested_resolution === "auto" ? " (auto)" : ""}` +
      ` · sources ${meta.sources.join(", ") || "none"} · ${rows.length.toLocaleString("en")} rows${reduced}` +
      ` · answered in ${Math.round(fetched - started)} ms, drawn in ${Math.round(drawn - fetched)} ms`;
    $("status").dataset.resolution = meta.resolution;
    $("status").dataset.draws = String(exposed.draws); // tests wait on it (no eval under CSP)
    history.replaceState(null, "", `#${new URLSearchParams({
      user_id: view.users.join(","), metric: view.metrics.join(","), start: view.start,
      end: view.end, resolution: view.resolution,
    })}`);
    loadPlan(params, seq, Math.round(fetched - started));
  }

  async function loadPlan(params, seq, dataMs) {
    const started = performance.now();
    let plan;
    try {
      plan = await (await get("/plan", params, seq)).json();
    } catch (error) {
      if (seq === state.seq) fail(error);
      return;
    }
    if (seq !== state.seq) return;
    const planMs = Math.round(performance.now() - started);
    const body = $("plan-table").tBodies[0];
    body.replaceChildren(...plan.segments.map((s) => {
      const row = document.createElement("tr");
      const cells = [s.backend, s.resolution + (s.rollup_from_raw ? " (from raw)" : ""), s.source,
        s.users.join(", "), s.start, s.end, s.files, s.lake_version ?? "", s.estimated_rows ?? ""];
      for (const value of cells) {
        const cell = document.createElement("td");
        cell.textContent = String(value);
        row.append(cell);
      }
      return row;
    }));
    $("plan-table").hidden = plan.segments.length === 0;
    const files = plan.segments.reduce((n, s) => n + s.files, 0);
    const estimate = plan.segments.reduce((n, s) => n + (s.estimated_rows || 0), 0);
    const notes = plan.notes.length ? ` Notes: ${plan.notes.join("; ")}.` : "";
    $("plan-summary").textContent =
      `${plan.segments.length} segment(s) · stores ${plan.sources.join(", ") || "none"} · tier ${plan.resolution}` +
      ` · ${files} lake file(s) · about ${estimate.toLocaleString("en")} rows before reduction` +
      ` · /data took ${dataMs} ms and /plan ${planMs} ms (in this browser).${notes}`;
  }

  // -- the chart -------------------------------------------------------------------------

  const seconds = (iso) => Date.parse(iso) / 1000;
  // A bound as the API reads it: a date is its UTC midnight, a time without a zone is UTC
  // (Date.parse would take both as local time).
  const viewSeconds = (text) => {
    if (text.length === 10) return seconds(`${text}T00:00:00Z`);
    return seconds(/(Z|[+-]\d\d:?\d\d)$/i.test(text) ? text : `${text}Z`);
  };

  // uPlot wants one shared x array: the union of every series' timestamps, plus the view's
  // bounds (so the axis spans the view even where data is missing).
  function chartData(view, rows, raw) {
    const keys = [];
    const bySeries = new Map();
    for (const row of rows) {
      const key = `participant ${row.user_id} \u00b7 ${row.metric}`;
      if (!bySeries.has(key)) { bySeries.set(key, []); keys.push({ key, user: row.user_id, metric: row.metric }); }
      bySeries.get(key).push(row);
    }
    const xs = new Set([viewSeconds(view.start), viewSeconds(view.end)]);
    for (const row of rows) xs.add(seconds(row.ts));
    const x = Float64Array.from(xs).sort();
    const index = new Map();
    x.forEach((t, i) => index.set(t, i));
    const columns = [x];
    for (const { key } of keys) {
      const series = bySeries.get(key);
      const fields = raw ? ["value"] : ["avg", "min", "max"];
      for (const field of fields) {
        const values = new Array(x.length).fill(null);
        for (const row of series) values[index.get(seconds(row.ts))] = row[field];
        columns.push(values);
      }
    }
    return { keys, columns };
  }

  function draw(view, rows, meta) {
    const raw = meta.resolution === "raw";
    const { keys, columns } = chartData(view, rows, raw);
    const units = new Map((state.catalog ? state.catalog.metrics : []).map((m) => [m.name, m.unit]));
    const metrics = [...new Set(keys.map((k) => k.metric))];
    const series = [{}];
    const bands = [];
    keys.forEach(({ key, metric }, i) => {
      const color = COLORS[i % COLORS.length];
      if (raw) {
        series.push({ label: key, scale: metric, stroke: color, width: 1, spanGaps: true,
                      points: { show: true, size: 3, fill: color } });
        return;
      }
      const mean = series.length;
      series.push({ label: `${key} mean`, scale: metric, stroke: color, width: 1.5, points: { show: false } });
      series.push({ label: `${key} min`, scale: metric, stroke: `${color}55`, width: 0.5, points: { show: false } });
      series.push({ label: `${key} max`, scale: metric, stroke: `${color}55`, width: 0.5, points: { show: false } });
      bands.push({ series: [mean + 2, mean + 1], fill: `${color}22` });
    });
    const axes = [{}];
    metrics.forEach((metric, i) => {
      axes.push({ scale: metric, side: i % 2 ? 1 : 3, label: `${metric} (${units.get(metric) || ""})`,
                  grid: { show: i === 0 } });
    });
    const container = $("chart");
    if (state.chart) state.chart.destroy();
    const options = {
      width: container.clientWidth || 800,
      height: 420,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"), // the API's days are UTC
      scales: { x: { time: true } },
      series,
      bands,
      axes,
      cursor: { drag: { x: true, y: false, setScale: true } },
      hooks: { setScale: [onSetScale] },
    };
    state.drawing = true;
    state.chart = new uPlot(options, columns, container);
    state.drawing = false;
    state.chart.stratumSeries = { raw, keys: keys.length };
  }

  // The points each plotted series draws (its mean, or its raw values): non-null values.
  function pointsDrawn() {
    const chart = state.chart;
    if (!chart) return [];
    const { raw } = chart.stratumSeries;
    const step = raw ? 1 : 3;
    const counts = [];
    for (let i = 1; i < chart.data.length; i += step) {
      counts.push(chart.data[i].filter((v) => v !== null && v !== undefined).length);
    }
    return counts;
  }

  let zoomTimer = null;
  function onSetScale(chart, key) {
    if (key !== "x" || state.drawing || !state.view) return;
    const { min, max } = chart.scales.x;
    const start = viewSeconds(state.view.start);
    const end = viewSeconds(state.view.end);
    if (Math.abs(min - start) + Math.abs(max - end) < (end - start) * 0.005) return; // unchanged
    clearTimeout(zoomTimer);
    zoomTimer = setTimeout(() => moveTo(min, max), 150);
  }


  const isoSecond = (s) => new Date(Math.round(s) * 1000).toISOString().replace(".000Z", "Z");

  function moveTo(startS, endS) {
    const start = Math.floor(startS);
    const end = Math.max(Math.ceil(endS), start + 1);
    const view = { ...state.view, start: isoSecond(start), end: isoSecond(end) };
    setForm(view);
    show(view);
  }

  function shift(fraction, scale) {
    if (!state.view) return;
    const start = viewSeconds(state.view.start);
    const end = viewSeconds(state.view.end);
    const span = end - start;
    const centre = start + span / 2 + span * fraction;
    moveTo(centre - (span * scale) / 2, centre + (span * scale) / 2);
  }

  // -- downloads of the current view -----------------------------------------------------------

  async function download(format) {
    if (!state.params) return;
    const params = new URLSearchParams(state.params);
    params.set("format", format);
    params.set("page_size", "0");
    try {
      const blob = await (await get("/data", params)).blob();
      const link = document.createElement("a");
      link.href = URL.createObjectURL(blob);
      const span = `${state.view.start}_${state.view.end}`.replace(/[^0-9A-Za-z_-]/g, "");
      link.download = `stratum-${span}.${format}`;
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    } catch (error) {
      fail(error);
    }
  }

  // -- wiring ------------------------------------------------------------------------------

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
    $("key").value = "";
    loadCatalog();
  });
  $("query-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const view = viewFromForm();
    if (!view.users.length || !view.metrics.length) {
      showError("Pick at least one participant and one metric.");
      return;
    }
    show(view);
  });
  $("pan-left").addEventListener("click", () => shift(-0.5, 1));
  $("pan-right").addEventListener("click", () => shift(0.5, 1));
  $("zoom-out").addEventListener("click", () => shift(0, 2));
  for (const button of document.querySelectorAll(".downloads button")) {
    button.addEventListener("click", () => download(button.dataset.format));
  }
  if (sessionStorage.getItem(KEY_STORAGE)) loadCatalog();
  else $("key-state").textContent = "no key set: enter one (empty if the server runs with STRATUM_AUTH=off)";
})();
