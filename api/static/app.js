// citystream dashboard: reads only this server's /v1 API and /v1/stream (EventSource).
// No framework: Leaflet draws the GeoJSON map (SVG, no tiles needed), uPlot the series
// (canvas). Every chart has a table view; data-* attributes on the map and chart record
// what was drawn (feature counts, plotted values) for the browser tests.
"use strict";

const MAP_KPIS = [
  { kpi: "traffic.congestion_index", label: "Congestion", points: "segments" },
  { kpi: "air.aqi", label: "Air quality index", points: "segments" },
  { kpi: "parking.occupancy_pct", label: "Parking occupancy", points: "car_parks" },
  { kpi: "devices.uptime_pct", label: "Sensor uptime", points: "sensors" },
]; // the point layer of each: where the KPI has values besides districts (the API's scopes)
const COLOURS = ["#1a9850", "#91cf60", "#d9ef8b", "#fee08b", "#fc8d59", "#d73027"];
const SERIES_COLOURS = ["#1f5f8b", "#d9480f", "#2b8a3e", "#7048e8", "#c2255c", "#e8590c", "#0b7285"];
const FEED_MAX = 50;

const state = {
  config: { cities: [], tile_url: null },
  city: null,
  catalogue: [],
  districts: [],
  map: null,
  mapLayers: [],
  plot: null,
  series: null, // {kpi, resolution, entities: [{scope, entity, points: [[t, v]]}]}
  stream: null,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function showError(message) {
  const box = $("error");
  box.hidden = false;
  box.textContent = message;
}

// --- the API ------------------------------------------------------------------------------

function withCity(path) {
  if (!state.city || state.config.cities.length < 2) return path;
  return path + (path.includes("?") ? "&" : "?") + "city=" + encodeURIComponent(state.city);
}

async function api(path) {
  const response = await fetch(withCity(path), { headers: { Accept: "application/json" } });
  if (!response.ok) {
    let detail = "";
    try { detail = (await response.json()).detail || ""; } catch (_) { /* not JSON */ }
    const error = new Error(`${path}: HTTP ${response.status} ${detail}`.trim());
    error.status = response.status;
    throw error;
  }
  return response.json();
}

function list(body, ...keys) {
  if (Array.isArray(body)) return body;
  for (const key of keys) if (body && Array.isArray(body[key])) return body[key];
  return [];
}

function kpiName(item) { return item.name || item.kpi || item.id; }

function hasScope(kpi, scope) {
  const item = state.catalogue.find((k) => kpiName(k) === kpi);
  return Boolean(item && (item.scopes || []).includes(scope));
}

function num(value) { return value === null || value === undefined ? NaN : Number(value); }

function pointTime(point) {
  const t = point.window_start ?? point.t ?? point.time ?? point.timestamp ?? point.start;
  return typeof t === "number" ? (t > 1e11 ? t / 1000 : t) : Date.parse(t) / 1000;
}

function pointValue(point) { return Number(point.value ?? point.v); }

async function fetchSeries(kpi, scope, entity, resolution) {
  const params = new URLSearchParams({ scope, resolution });
  if (entity) params.set("entity", entity);
  const points = [];
  let path = `/v1/kpis/${encodeURIComponent(kpi)}/series?${params}`;
  for (let page = 0; page < 50 && path; page++) {
    let body;
    try { body = await api(path); } catch (err) {
      // 404: no windows of this KPI for the entity in this city (Boston counts no
      // vehicles per district): an empty series, so the rest of the chart still draws
      if (err.status === 404 && page === 0) return [];
      throw err;
    }
    points.push(...list(body, "points", "data", "series", "items"));
    const cursor = body.next_cursor || body.cursor || (body.next && !body.next.startsWith("/") ? body.next : null);
    path = body.next && body.next.startsWith("/") ? body.next
      : cursor ? `/v1/kpis/${encodeURIComponent(kpi)}/series?${params}&cursor=${encodeURIComponent(cursor)}` : null;
  }
  return points.map((p) => [pointTime(p), pointValue(p)]).filter(([t, v]) => Number.isFinite(t) && Number.isFinite(v));
}

// --- tables -------------------------------------------------------------------------------

function table(caption, headers, rows) {
  const head = el("tr", {}, ...headers.map((h) => el("th", { scope: "col", text: h.label, class: h.num ? "num" : "" })));
  const body = rows.map((row) => el("tr", {}, ...row.map((cell, i) =>
    el("td", { text: cell === null || cell === undefined ? "" : String(cell), class: headers[i].num ? "num" : "" }))));
  return el("table", {}, el("caption", { text: caption }), el("thead", {}, head), el("tbody", {}, ...body));
}

function fmt(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "";
  return Math.abs(value) >= 100 ? value.toFixed(0) : Math.abs(value) >= 10 ? value.toFixed(1) : value.toFixed(2);
}

function fmtTime(seconds) {
  return new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 16) + " UTC";
}

function wireToggles() {
  for (const button of document.querySelectorAll("button.toggle")) {
    button.addEventListener("click", () => {
      const target = $(button.getAttribute("aria-controls"));
      const open = button.getAttribute("aria-expanded") !== "true";
      button.setAttribute("aria-expanded", String(open));
      target.hidden = !open;
    });
  }
}

// --- the map ------------------------------------------------------------------------------

function featureValue(feature, kpi) {
  const p = feature.properties || {};
  if (p.value !== undefined) return num(p.value);
  if (p.kpis && p.kpis[kpi] !== undefined) return Number(p.kpis[kpi]);
  if (p[kpi] !== undefined) return Number(p[kpi]);
  return NaN;
}

function valueText(feature, kpi) {
  // The API suppresses small cells for the public (fewer samples than its k): say so.
  if ((feature.properties || {}).suppressed) return "suppressed (too few samples)";
  const value = featureValue(feature, kpi);
  return Number.isFinite(value) ? fmt(value) : "no value";
}

function featureName(feature) {
  const p = feature.properties || {};
  return String(p.name || p.entity_id || p.id || feature.id || "");
}

function colourScale(values) {
  const finite = values.filter(Number.isFinite);
  const lo = Math.min(...finite);
  const hi = Math.max(...finite);
  return (value) => {
    if (!Number.isFinite(value)) return "#9aa5b1";
    const f = hi > lo ? (value - lo) / (hi - lo) : 0.5;
    return COLOURS[Math.min(COLOURS.length - 1, Math.floor(f * COLOURS.length))];
  };
}

function ensureMap() {
  if (state.map) return state.map;
  state.map = L.map("map", { preferCanvas: false, attributionControl: Boolean(state.config.tile_url), zoomSnap: 0.25 });
  if (state.config.tile_url) {
    L.tileLayer(state.config.tile_url, { attribution: "" }).addTo(state.map);
  }
  state.map.setView([56.16, 10.2], 11);
  return state.map;
}

function mapChoice() {
  return MAP_KPIS.find((m) => m.kpi === $("map-kpi").value) || MAP_KPIS[0];
}

function districtLayer(choice) {
  // A KPI without district values (congestion is per segment) gets plain district shapes.
  const kpi = encodeURIComponent(choice.kpi);
  return api(hasScope(choice.kpi, "district") ? `/v1/map/districts?kpi=${kpi}` : "/v1/map/districts");
}

async function loadMap(districtAnswer) {
  // districtAnswer: the districts layer already asked for (the first load shares it with
  // the district choices), else asked for here
  const choice = mapChoice();
  const token = (state.mapToken = (state.mapToken || 0) + 1);
  const kpi = encodeURIComponent(choice.kpi);
  const perDistrict = hasScope(choice.kpi, "district");
  const [districts, points] = await Promise.all([
    districtAnswer || districtLayer(choice),
    api(`/v1/map/${choice.points}?kpi=${kpi}`),
  ]);
  if (!perDistrict) for (const f of districts.features || []) f.properties = { ...f.properties, value: null };
  if (token !== state.mapToken) return; // a later choice is on its way
  drawMap(choice, districts.features || [], points.features || []);
}

function drawMap(choice, districts, points) {
  const map = ensureMap();
  for (const layer of state.mapLayers) layer.remove();
  const colour = colourScale([...districts, ...points].map((f) => featureValue(f, choice.kpi)));
  const tip = (feature) => `${featureName(feature)}: ${valueText(feature, choice.kpi)}`;
  const areas = L.geoJSON({ type: "FeatureCollection", features: districts }, {
    style: (f) => ({ className: "cs-feature cs-district", color: "#33414e", weight: 1,
      fillColor: colour(featureValue(f, choice.kpi)), fillOpacity: 0.55 }),
    pointToLayer: (f, latlng) => L.circleMarker(latlng, { radius: 12 }),
    onEachFeature: (f, layer) => layer.bindTooltip(tip(f)),
  }).addTo(map);
  const dots = L.geoJSON({ type: "FeatureCollection", features: points }, {
    style: (f) => ({ className: "cs-feature cs-point", color: colour(featureValue(f, choice.kpi)), weight: 4,
      fillColor: colour(featureValue(f, choice.kpi)), fillOpacity: 0.9, opacity: 0.9 }),
    pointToLayer: (f, latlng) => L.circleMarker(latlng, { radius: 5 }),
    onEachFeature: (f, layer) => layer.bindTooltip(tip(f)),
  }).addTo(map);
  state.mapLayers = [areas, dots];
  const bounds = areas.getBounds().extend(dots.getBounds());
  if (bounds.isValid()) map.fitBounds(bounds, { padding: [10, 10] });
  const box = $("map");
  box.dataset.kpi = choice.kpi;
  box.dataset.districts = String(districts.length);
  box.dataset.points = String(points.length);
  box.dataset.features = String(districts.length + points.length);
  box.dataset.drawn = String(box.querySelectorAll("path.cs-feature").length);
  drawLegend(choice, [...districts, ...points].map((f) => featureValue(f, choice.kpi)));
  const rows = [...districts.map((f) => ["district", f]), ...points.map((f) => [choice.points, f])]
    .map(([layer, f]) => [layer, featureName(f), valueText(f, choice.kpi)]);
  $("map-table").replaceChildren(table(`${choice.label} (${choice.kpi}), latest window`,
    [{ label: "Layer" }, { label: "Name" }, { label: "Value", num: true }], rows));
}

function drawLegend(choice, values) {
  const finite = values.filter(Number.isFinite);
  const legend = $("map-legend");
  if (!finite.length) { legend.replaceChildren(el("span", { class: "empty", text: "no values yet" })); return; }
  const lo = Math.min(...finite);
  const hi = Math.max(...finite);
  const step = (hi - lo) / COLOURS.length;
  const band = (colour, text) => {
    const swatch = el("span", { class: "sw" });
    swatch.style.background = colour;
    return el("span", {}, swatch, text);
  };
  legend.replaceChildren(el("span", { text: choice.label + ":" }),
    ...COLOURS.map((c, i) => band(c, `${fmt(lo + i * step)}–${fmt(lo + (i + 1) * step)}`)),
    band("#9aa5b1", "no value or suppressed"));
}

// --- the time series ----------------------------------------------------------------------

function chosenDistricts() {
  return [...document.querySelectorAll("#series-districts input:checked")].map((i) => i.value);
}

async function loadSeries() {
  const kpi = $("series-kpi").value;
  const resolution = $("series-resolution").value;
  if (!kpi) return;
  const token = (state.seriesToken = (state.seriesToken || 0) + 1);
  const item = state.catalogue.find((k) => kpiName(k) === kpi) || {};
  const scopes = item.scopes || ["city", "district"];
  const wanted = [];
  if (scopes.includes("city")) wanted.push({ scope: "city", entity: null, label: "city" });
  if (scopes.includes("district")) {
    for (const d of chosenDistricts()) wanted.push({ scope: "district", entity: d, label: d });
  }
  const entities = await Promise.all(wanted.map(async (w) =>
    ({ ...w, points: await fetchSeries(kpi, w.scope, w.entity, resolution) })));
  if (token !== state.seriesToken) return; // a later choice is on its way
  state.series = { kpi, resolution, unit: item.unit || "", entities };
  drawSeries();
}

function alignedData(entities) {
  const times = [...new Set(entities.flatMap((e) => e.points.map((p) => p[0])))].sort((a, b) => a - b);
  const columns = entities.map((e) => {
    const byTime = new Map(e.points);
    return times.map((t) => (byTime.has(t) ? byTime.get(t) : null));
  });
  return [times, ...columns];
}

function drawSeries() {
  const { kpi, unit, entities } = state.series;
  const data = alignedData(entities);
  const box = $("series-chart");
  box.dataset.kpi = kpi;
  box.dataset.resolution = state.series.resolution;
  box.dataset.series = JSON.stringify(entities.map((e, i) => ({
    scope: e.scope, entity: e.entity, times: data[0].filter((_, j) => data[i + 1][j] !== null),
    values: data[i + 1].filter((v) => v !== null),
  })));
  box.dataset.points = String(data[0].length);
  if (state.plot) { state.plot.destroy(); state.plot = null; }
  box.replaceChildren();
  const width = Math.max(280, box.clientWidth || 600);
  state.plot = new uPlot({
    width, height: width < 500 ? 240 : 300,
    series: [{}, ...entities.map((e, i) => ({
      label: e.label, stroke: SERIES_COLOURS[i % SERIES_COLOURS.length], width: 2, spanGaps: false,
      value: (u, v) => fmt(v),
    }))],
    axes: [{}, { label: unit, size: 72 }],
    scales: { x: { time: true } },
  }, data, box);
  const headers = [{ label: "Window start (UTC)" }, ...entities.map((e) => ({ label: e.label, num: true }))];
  const rows = data[0].map((t, j) => [fmtTime(t), ...entities.map((_, i) => fmt(data[i + 1][j]))]);
  $("series-table").replaceChildren(table(`${kpi} (${unit}) per ${state.series.resolution}`, headers, rows));
}

function appendLive(record) {
  // A new window for a plotted series goes into the chart at once (15-minute view only:
  // coarser views re-aggregate on the next load).
  const s = state.series;
  if (!s || s.kpi !== record.kpi || s.resolution !== "15m") return;
  const target = s.entities.find((e) => e.scope === record.scope && (e.scope === "city" || e.entity === record.entity_id));
  if (!target) return;
  const t = pointTime(record);
  const at = target.points.findIndex((p) => p[0] === t);
  if (at >= 0) target.points[at] = [t, Number(record.value)];
  else target.points.push([t, Number(record.value)]);
  target.points.sort((a, b) => a[0] - b[0]);
  drawSeries();
}

// --- equity -------------------------------------------------------------------------------

async function loadEquity() {
  const kpi = $("equity-kpi").value;
  if (!kpi) return;
  const body = await api(`/v1/equity?kpi=${encodeURIComponent(kpi)}`);
  const rows = list(body, "districts", "rows", "items");
  const median = Number(body.city_median ?? body.median ?? (rows[0] && rows[0].city_median));
  const values = rows.map((r) => num(r.value));
  const max = Math.max(...values.filter(Number.isFinite), Number.isFinite(median) ? median : 0) || 1;
  const chart = $("equity-chart");
  chart.dataset.count = String(rows.length);
  chart.replaceChildren(...rows.flatMap((r, i) => {
    const value = values[i];
    const rowMedian = Number(r.city_median ?? median);
    const fill = el("span", { class: value > rowMedian ? "fill above" : "fill" });
    fill.style.width = `${Math.max(0, (value / max) * 100)}%`;
    const mark = el("span", { class: "median", title: "city median" });
    mark.style.left = `${Math.max(0, (rowMedian / max) * 100)}%`;
    return [el("span", { text: String(r.district ?? r.entity_id ?? r.name) }),
      el("span", { class: "track" }, fill, mark), el("span", { class: "value", text: fmt(value) })];
  }));
  $("equity-table").replaceChildren(table(`${kpi}: districts beside the city median`,
    [{ label: "District" }, { label: "Value", num: true }, { label: "City median", num: true }, { label: "Gap", num: true }],
    rows.map((r, i) => {
      const m = Number(r.city_median ?? median);
      return [r.district ?? r.entity_id ?? r.name, fmt(values[i]), fmt(m), fmt(Number(r.gap ?? values[i] - m))];
    })));
}

// --- alerts and status --------------------------------------------------------------------

function alertText(a) {
  const what = a.type || a.alert_type || a.kind || "alert";
  const entity = a.entity_id || a.entity || "";
  const since = a.since || a.raised_at || a.at;
  const when = since ? ` since ${typeof since === "number" ? fmtTime(since > 1e11 ? since / 1000 : since) : since}` : "";
  return [what, `${entity}${when}${a.message ? ": " + a.message : ""}`];
}

function drawAlerts(alerts) {
  const box = $("alerts");
  box.dataset.count = String(alerts.length);
  if (!alerts.length) { box.replaceChildren(el("li", { class: "empty", text: "No active alerts." })); return; }
  box.replaceChildren(...alerts.map((a) => {
    const [what, rest] = alertText(a);
    return el("li", { "data-alert": String(a.alert_id || "") }, el("span", { class: "sev", text: what }), " ", rest);
  }));
}

async function loadAlerts() {
  const body = await api("/v1/alerts");
  state.alerts = list(body, "active", "alerts", "items");
  drawAlerts(state.alerts);
}

async function loadStatus() {
  const body = await api("/v1/status");
  const freshness = body.freshness || {};
  const verification = body.verification || body.verify || {};
  const domains = [...new Set([...Object.keys(freshness), ...Object.keys(verification)])].sort();
  const rows = domains.map((d) => {
    const f = freshness[d] || {};
    const v = verification[d];
    const newest = typeof f === "string" ? f : f.newest_window_end || f.newest_window || "";
    let verdict = "not verified yet";
    if (v) {
      verdict = v.ok ? `matched (${v.matched} windows)`
        : `${v.differences} differences (${v.missing} missing, ${v.extra} extra, ${v.different} different; ${v.matched} matched)`;
    }
    return { domain: d, newest: newest.replace("+00:00", "Z"), verdict, when: v ? v.at || "" : "", matched: v ? Boolean(v.ok) : null };
  });
  const t = table("Newest window and latest verification per domain",
    [{ label: "Domain" }, { label: "Newest window ends" }, { label: "Verification" }, { label: "Checked" }],
    rows.map((r) => [r.domain, r.newest, r.verdict, r.when]));
  t.querySelectorAll("tbody tr").forEach((tr, i) => {
    const cell = tr.children[2];
    if (rows[i].matched !== null) cell.className = rows[i].matched ? "ok" : "bad";
    tr.dataset.domain = rows[i].domain;
  });
  $("status").replaceChildren(t);
  $("status").dataset.domains = String(rows.length);
}

// --- live updates -------------------------------------------------------------------------

function addFeed(kind, record) {
  const feed = $("feed");
  const item = el("li", { "data-kind": kind });
  if (kind === "kpi") {
    item.dataset.kpi = record.kpi;
    item.dataset.scope = record.scope;
    item.dataset.entity = record.entity_id;
    item.dataset.value = String(record.value);
    item.textContent = `${record.kpi} ${record.scope} ${record.entity_id}: ${fmt(Number(record.value))}` +
      ` (window ${fmtTime(pointTime(record))})`;
  } else {
    item.dataset.alert = String(record.alert_id || "");
    item.textContent = `alert ${record.state || ""}: ${alertText(record).join(" ")}`;
  }
  if (feed.firstElementChild && feed.firstElementChild.classList.contains("empty")) feed.replaceChildren();
  feed.prepend(item);
  while (feed.children.length > FEED_MAX) feed.lastElementChild.remove();
  feed.dataset.count = String(Number(feed.dataset.count) + 1);
}

function onKpi(record) {
  addFeed("kpi", record);
  appendLive(record);
}

function onAlert(record) {
  addFeed("alert", record);
  const active = (state.alerts || []).filter((a) => a.alert_id !== record.alert_id);
  if ((record.state || "").toLowerCase() === "raised") active.unshift(record);
  state.alerts = active;
  drawAlerts(active);
}

function connectStream() {
  if (state.stream) state.stream.close();
  const live = $("live");
  const stream = new EventSource(withCity("/v1/stream"));
  const parse = (handler) => (event) => {
    try { handler(JSON.parse(event.data)); } catch (err) { showError(`live update: ${err.message}`); }
  };
  stream.addEventListener("kpi", parse(onKpi));
  stream.addEventListener("alert", parse(onAlert));
  stream.onmessage = parse((record) => (record.kpi ? onKpi(record) : onAlert(record)));
  stream.onopen = () => { live.dataset.state = "open"; live.textContent = "live"; };
  stream.onerror = () => { live.dataset.state = "error"; live.textContent = "live: reconnecting"; };
  state.stream = stream;
}

// --- start --------------------------------------------------------------------------------

function fillSelect(select, options, selected) {
  select.replaceChildren(...options.map(([value, label]) => {
    const option = el("option", { value, text: label });
    if (value === selected) option.selected = true;
    return option;
  }));
}

async function loadCatalogue() {
  state.catalogue = list(await api("/v1/kpis"), "kpis", "items");
  const names = state.catalogue.map(kpiName).filter(Boolean).sort();
  const available = MAP_KPIS.filter((m) => names.includes(m.kpi));
  fillSelect($("map-kpi"), (available.length ? available : MAP_KPIS).map((m) => [m.kpi, m.label]),
    $("map-kpi").value || "air.aqi");
  const withDistricts = state.catalogue.filter((k) => (k.scopes || []).includes("district")).map(kpiName).sort();
  const seriesDefault = names.includes("traffic.vehicle_count") ? "traffic.vehicle_count" : names[0];
  fillSelect($("series-kpi"), names.map((n) => [n, n]), $("series-kpi").value || seriesDefault);
  const equityDefault = withDistricts.includes("air.aqi") ? "air.aqi" : withDistricts[0];
  fillSelect($("equity-kpi"), withDistricts.map((n) => [n, n]), $("equity-kpi").value || equityDefault);
}

function loadDistrictChoices(body) {
  // the districts layer's features (every district of the city, whatever the KPI)
  const ids = (body.features || []).map((f) => String((f.properties || {}).entity_id || (f.properties || {}).id || f.id || featureName(f)));
  state.districts = [...new Set(ids)].sort();
  const box = $("series-districts");
  box.replaceChildren(el("legend", { text: "Districts beside the city" }), ...state.districts.map((d, i) => {
    const input = el("input", { type: "checkbox", value: d, name: "district" });
    input.checked = i < 2;
    input.addEventListener("change", () => guard(loadSeries()));
    return el("label", {}, input, d);
  }));
}

function guard(promise) {
  return promise.catch((err) => showError(err.message));
}

async function loadAll() {
  await loadCatalogue();
  // The map and the district choices share one districts answer: the series, which need
  // the choices, start as soon as it arrives, and the first load makes one request fewer.
  const districts = districtLayer(mapChoice());
  await Promise.all([
    guard(loadMap(districts)),
    guard(districts.then(loadDistrictChoices).then(loadSeries)),
    guard(loadEquity()),
    guard(loadAlerts()),
    guard(loadStatus()),
  ]);
}

async function start() {
  performance.mark("citystream-start");
  wireToggles();
  state.config = await (await fetch("/static/config.json")).json();
  const cities = state.config.cities || [];
  state.city = cities.length ? cities[0].id : null;
  if (cities.length > 1) {
    $("city-label").hidden = false;
    fillSelect($("city"), cities.map((c) => [c.id, c.name || c.id]), state.city);
    $("city").addEventListener("change", () => {
      state.city = $("city").value;
      guard(loadAll());
      connectStream();
    });
  }
  $("map-kpi").addEventListener("change", () => guard(loadMap()));
  $("series-kpi").addEventListener("change", () => guard(loadSeries()));
  $("series-resolution").addEventListener("change", () => guard(loadSeries()));
  $("equity-kpi").addEventListener("change", () => guard(loadEquity()));
  await loadAll();
  connectStream();
  setInterval(() => guard(loadStatus()), 30000);
  performance.mark("citystream-rendered");
  // from the navigation's start to every panel drawn (read by citystream bench)
  performance.measure("citystream-first-render", { start: 0, end: "citystream-rendered" });
  document.body.dataset.ready = "true";
}

window.addEventListener("DOMContentLoaded", () => {
  start().catch((err) => { showError(err.message); document.body.dataset.ready = "error"; });
});
