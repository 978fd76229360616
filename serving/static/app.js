// Factory dashboard: plain browser JavaScript, no build step and no network beyond this page's own origin.
//
// Data comes from the REST API (polled every few seconds, so the page works without the live feed) and,
// once it connects, from the WebSocket /ws (see the live protocol: init, telemetry, robot_update, prediction,
// alert, backlog). The API key typed into the page is kept in localStorage and sent as X-API-Key (and as
// ?api_key= on the WebSocket, which cannot carry headers). Nothing the API returns is ever parsed as HTML.
"use strict";

(() => {
  const KEY_STORAGE = "factory-dashboard.api-key";
  const ASSET_STORAGE = "factory-dashboard.asset";
  const POLL_MS = 5000; // without the live feed
  const POLL_LIVE_MS = 15000; // with it: still catches what is not pushed (acknowledged or cleared elsewhere)
  const PING_MS = 25000;
  const RECONNECT_MIN_MS = 1000;
  const RECONNECT_MAX_MS = 30000;
  const HISTORY_POINTS = 600; // telemetry kept per asset in the page (the API keeps only the latest reading)
  const RECENT_DUPLICATES = 20; // how far back a repeated reading is looked for
  // A REST answer may be older than what the live feed already told us (requests cross events in flight, and
  // hot routes answer from a cache up to a second old): entries pushed this recently keep their pushed value.
  const STALE_ANSWER_MS = 3000;
  const PREDICTION_PAGE = 500;
  const PRIORITY_RANK = { critical: 0, high: 1, medium: 2, low: 3, unknown: 4 };
  const PREFERRED_METRICS = ["health_score", "temperature", "vibration.rms", "Temperature_C"];
  const SKIPPED_METRICS = new Set(["seq"]);

  const $ = (id) => document.getElementById(id);

  const state = {
    key: readStored(KEY_STORAGE),
    robots: new Map(), // robot_id -> robot item (GET /api/robots)
    robotsTouched: new Map(), // robot_id -> when the live feed last changed it (Date.now())
    alerts: new Map(), // alert_id -> alert (GET /alerts items, merged with live `alert` events)
    alertsTouched: new Map(), // alert_id -> when the live feed or our own acknowledgement last changed it
    backlogTouched: 0,
    alertErrors: new Map(), // alert_id -> message shown under that alert (a refused acknowledgement)
    telemetry: new Map(), // asset_id -> [{t: ms, stamp, values: {metric: number}}] oldest first
    predictions: [], // of the selected asset, oldest first
    backlog: undefined, // undefined: not loaded; null: none yet
    backlogProblem: null,
    selectedAsset: readStored(ASSET_STORAGE) || null,
    selectedMetric: null,
    selectedModel: null,
    ws: null,
    live: "off", // off | connecting | open | refused
    liveReason: "",
    reconnectDelay: RECONNECT_MIN_MS,
    reconnectTimer: null,
    pingTimer: null,
    pollTimer: null,
    polling: false,
    refreshAgain: false,
    lastRefresh: null,
    authProblem: null,
  };

  // ---------- small helpers ----------

  function readStored(name) {
    try {
      return window.localStorage.getItem(name) || "";
    } catch {
      return "";
    }
  }

  function writeStored(name, value) {
    try {
      if (value) window.localStorage.setItem(name, value);
      else window.localStorage.removeItem(name);
    } catch {
      /* storage disabled: the key lasts for this page only */
    }
  }

  /** An element with attributes (`text` sets textContent, `class` the class) and children. */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "text") node.textContent = value;
      else if (name === "class") node.className = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  function plural(count, noun) {
    return `${count} ${noun}${count === 1 ? "" : "s"}`;
  }

  function toMs(iso) {
    const ms = Date.parse(iso);
    return Number.isNaN(ms) ? null : ms;
  }

  function fmtNumber(value, digits = 3) {
    if (value === null || value === undefined || Number.isNaN(value)) return "—";
    const abs = Math.abs(value);
    if (abs >= 1000) return Math.round(value).toLocaleString();
    if (abs >= 100) return value.toFixed(0);
    return Number(value.toPrecision(digits)).toString();
  }

  function fmtTime(ms) {
    return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
  }

  /** "14:05" today, "Nov 26 14:05" on another day (24-hour clock: a plant runs round the clock). */
  function fmtDateTime(iso) {
    const ms = toMs(iso);
    if (ms === null) return "—";
    const moment = new Date(ms);
    const clock = moment.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
    if (moment.toDateString() === new Date().toDateString()) return clock;
    return `${moment.toLocaleDateString([], { month: "short", day: "numeric" })} ${clock}`;
  }

  function relative(iso) {
    const ms = toMs(iso);
    if (ms === null) return "never";
    const seconds = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (seconds < 2) return "just now";
    if (seconds < 60) return `${seconds} s ago`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
    return fmtDateTime(iso);
  }

  /** A <time> that the ticker keeps saying "12 s ago" on. */
  function relTime(iso) {
    if (!iso) return el("span", { class: "muted", text: "never" });
    return el("time", { datetime: iso, "data-relative": "", title: new Date(iso).toLocaleString(), text: relative(iso) });
  }

  /** Text for a problem+json answer (or any failure), as people read it. */
  function problemText(error) {
    if (error && error.problem) {
      const p = error.problem;
      const head = p.title ? `${p.title} (${p.status})` : `HTTP ${p.status}`;
      return p.detail ? `${head}: ${p.detail}` : head;
    }
    return error && error.message ? error.message : String(error);
  }

  class ApiError extends Error {
    constructor(status, problem) {
      super(problem && problem.detail ? problem.detail : `HTTP ${status}`);
      this.status = status;
      this.problem = problem;
    }
  }

  async function api(path, options = {}) {
    const headers = { Accept: "application/json" };
    if (state.key) headers["X-API-Key"] = state.key;
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method: options.method || "GET",
        headers,
        body: options.body === undefined ? undefined : JSON.stringify(options.body),
        cache: "no-store",
      });
    } catch (exc) {
      throw new ApiError(0, { title: "API unreachable", status: 0, detail: String(exc.message || exc) });
    }
    const text = await response.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = null;
    }
    if (!response.ok) {
      const problem = body && typeof body === "object" ? body : { status: response.status, title: response.statusText };
      if (!problem.status) problem.status = response.status;
      throw new ApiError(response.status, problem);
    }
    return body;
  }

  /** Reuse the child element of each key, create missing ones, drop stale ones, keep `items` order. */
  function syncChildren(container, items, keyOf, create, update) {
    const existing = new Map();
    for (const child of Array.from(container.children)) existing.set(child.dataset.key, child);
    let previous = null;
    for (const item of items) {
      const key = keyOf(item);
      let node = existing.get(key);
      if (node) existing.delete(key);
      else {
        node = create(item);
        node.dataset.key = key;
      }
      update(node, item);
      const wanted = previous ? previous.nextSibling : container.firstChild;
      if (wanted !== node) container.insertBefore(node, wanted);
      previous = node;
    }
    for (const stale of existing.values()) stale.remove();
  }

  const pending = new Set();
  /** Render `what` once per animation frame however many events asked for it. */
  function schedule(what) {
    if (pending.size === 0) requestAnimationFrame(flush);
    pending.add(what);
  }

  function flush() {
    const jobs = Array.from(pending);
    pending.clear();
    for (const job of jobs) RENDERERS[job]();
  }

  // ---------- connection status and notices ----------

  function renderStatus() {
    const box = $("connection");
    let text;
    let cls;
    if (state.live === "open") {
      text = "Live: updates as they happen";
      cls = "live";
    } else if (state.live === "refused") {
      text = `Live feed refused the key (${state.liveReason || "unauthorized"}); polling every ${POLL_MS / 1000} s`;
      cls = "error";
    } else {
      text = `Polling every ${POLL_MS / 1000} s${state.live === "connecting" ? " (connecting to the live feed…)" : ""}`;
      cls = "polling";
    }
    if (state.authProblem) cls = "error";
    box.className = `connection ${cls}`;
    $("connection-text").textContent = text;
    $("updated").textContent = state.lastRefresh ? `Data as of ${fmtTime(state.lastRefresh)}` : "";
    const notice = $("notice");
    if (state.authProblem) {
      const hint = state.key
        ? "Check the API key above."
        : "This dashboard needs an API key: paste one above and press Save key.";
      notice.textContent = `${hint} (${state.authProblem})`;
      notice.hidden = false;
    } else {
      notice.hidden = true;
      notice.textContent = "";
    }
  }

  function renderKeyStatus() {
    $("key-status").textContent = state.key ? "Key saved in this browser." : "No key: reading anonymously.";
    $("forget-key").disabled = !state.key;
  }

  // ---------- fleet ----------

  function sortedRobots() {
    return Array.from(state.robots.values()).sort(
      (a, b) =>
        (PRIORITY_RANK[a.maintenance_priority] ?? 9) - (PRIORITY_RANK[b.maintenance_priority] ?? 9) ||
        a.robot_id.localeCompare(b.robot_id),
    );
  }

  function createRobotRow(robot) {
    const row = el("tr", { "data-robot-id": robot.robot_id });
    const chartButton = el("button", { type: "button", class: "link", text: "Chart" });
    chartButton.addEventListener("click", (event) => {
      event.stopPropagation();
      selectAsset(row.dataset.robotId);
    });
    row.addEventListener("click", () => selectAsset(row.dataset.robotId));
    for (let i = 0; i < 6; i += 1) row.append(i === 0 ? el("th", { scope: "row" }) : el("td"));
    row.append(el("td", {}, chartButton));
    return row;
  }

  function updateRobotRow(row, robot) {
    const [idCell, healthCell, rulCell, prioCell, stateCell, seenCell, chartCell] = row.children;
    idCell.replaceChildren(
      el("span", {
        class: `online-dot${robot.online ? " on" : ""}`,
        title: robot.online ? "online" : "offline",
        "aria-hidden": "true",
      }),
      el("span", { class: "robot-id", text: robot.robot_id }),
      el("span", { class: "sr-only", text: robot.online ? " (online)" : " (offline)" }),
    );
    const health = robot.health_score;
    if (health === null || health === undefined) {
      healthCell.replaceChildren(el("span", { class: "muted", text: "—" }));
      healthCell.title = "no health score yet";
    } else {
      const meter = el("meter", { min: 0, max: 100, low: 50, high: 70, optimum: 100, value: health });
      meter.setAttribute("aria-label", `health ${fmtNumber(health)} of 100`);
      healthCell.replaceChildren(
        el("span", { class: "health" }, meter, el("span", { class: "value", text: fmtNumber(health) })),
      );
      healthCell.title = robot.health_source === "device" ? "sent by the robot" : "derived from its vibration and temperature";
    }
    const rul = robot.rul;
    if (!rul) {
      rulCell.replaceChildren(el("span", { class: "muted", text: "—" }));
      rulCell.title = "no RUL prediction yet";
    } else {
      const parts = [el("span", { text: fmtNumber(rul.rul_cycles) })];
      if (rul.rul_lower !== null && rul.rul_upper !== null && rul.rul_lower !== undefined) {
        const level = rul.confidence ? ` at ${Math.round(rul.confidence * 100)} %` : "";
        parts.push(
          el("span", { class: "interval", text: ` (${fmtNumber(rul.rul_lower)}–${fmtNumber(rul.rul_upper)}${level})` }),
        );
      }
      rulCell.replaceChildren(...parts);
      rulCell.title = `${rul.model_name} v${rul.model_version}, window ${rul.window_key}`;
    }
    const priority = robot.maintenance_priority || "unknown";
    prioCell.replaceChildren(el("span", { class: `badge prio-${priority}`, text: priority }));
    prioCell.title = robot.priority_reason || "";
    stateCell.textContent = robot.state || "—";
    seenCell.replaceChildren(relTime(robot.last_seen));
    const selected = robot.robot_id === state.selectedAsset;
    row.classList.toggle("selected", selected);
    const button = chartCell.firstChild;
    button.setAttribute("aria-label", `Show the chart of ${robot.robot_id}`);
    button.setAttribute("aria-pressed", selected ? "true" : "false");
  }

  function renderFleet() {
    const robots = sortedRobots();
    syncChildren($("fleet-body"), robots, (r) => r.robot_id, createRobotRow, updateRobotRow);
    $("fleet-empty").hidden = robots.length > 0;
    $("fleet-empty").textContent = state.authProblem
      ? "Not shown: the API needs a key (see above)."
      : "No robots yet: they appear as soon as their telemetry or a RUL prediction arrives.";
    const urgent = robots.filter((r) => r.maintenance_priority === "critical" || r.maintenance_priority === "high");
    const online = robots.filter((r) => r.online).length;
    $("fleet-summary").textContent = robots.length
      ? `${plural(robots.length, "robot")}, ${online} online, ${urgent.length} need${urgent.length === 1 ? "s" : ""} attention`
      : "";
    renderAssetOptions();
  }

  // ---------- alerts ----------

  function alertTime(alert) {
    return toMs(alert.last_seen || alert.ts) || 0;
  }

  function createAlertItem(alert) {
    const item = el("li", { class: "alert-item", "data-alert-id": alert.alert_id });
    const ack = el("button", { type: "button", class: "ack", text: "Acknowledge" });
    ack.addEventListener("click", () => acknowledge(item.dataset.alertId, ack));
    item.append(
      el("div", { class: "alert-head" }),
      el("p", { class: "alert-msg" }),
      el("div", { class: "alert-foot" }, el("span", { class: "alert-meta" }), el("span", { class: "alert-action" }, ack)),
      el("p", { class: "alert-error", role: "alert", hidden: true }),
    );
    return item;
  }

  function updateAlertItem(item, alert) {
    const severity = String(alert.severity || "INFO").toLowerCase();
    const acknowledged = Boolean(alert.acknowledged_at) || String(alert.state || "").endsWith("_ACK");
    item.className = `alert-item ${severity}${acknowledged ? " acked" : ""}`;
    const [head, msg, foot, error] = item.children;
    const parts = [
      el("span", { class: `badge sev-${severity}`, text: alert.level || alert.severity }),
      el("span", { class: "alert-type", text: alert.type }),
    ];
    if (alert.asset_id) parts.push(el("span", { text: `on ${alert.asset_id}` }));
    parts.push(relTime(alert.last_seen || alert.ts));
    head.replaceChildren(...parts);
    msg.textContent = alert.message || "";
    const meta = foot.querySelector(".alert-meta");
    const count = alert.count && alert.count > 1 ? ` · seen ${alert.count}×` : "";
    const action = alert.plan && alert.plan.action ? alert.plan.action : alert.action;
    meta.textContent = `from ${alert.source}${count}${action ? ` · action ${action}` : ""}`;
    const button = foot.querySelector("button.ack");
    const slot = foot.querySelector(".alert-action");
    const label = `Acknowledge alert ${alert.type}${alert.asset_id ? ` on ${alert.asset_id}` : ""}`;
    button.setAttribute("aria-label", label);
    let note = slot.querySelector(".alert-ack-note");
    if (acknowledged) {
      button.hidden = true;
      if (!note) {
        note = el("span", { class: "alert-ack-note" });
        slot.append(note);
      }
      const by = alert.acknowledged_by ? ` by ${alert.acknowledged_by}` : "";
      const at = alert.acknowledged_at ? ` at ${fmtTime(toMs(alert.acknowledged_at))}` : "";
      note.textContent = `Acknowledged${by}${at}`;
    } else {
      button.hidden = false;
      if (note) note.remove();
    }
    const message = state.alertErrors.get(alert.alert_id);
    error.hidden = !message;
    error.textContent = message || "";
  }

  function renderAlerts() {
    const alerts = Array.from(state.alerts.values()).sort((a, b) => alertTime(b) - alertTime(a));
    syncChildren($("alert-list"), alerts, (a) => a.alert_id, createAlertItem, updateAlertItem);
    $("alerts-empty").hidden = alerts.length > 0;
    $("alerts-empty").textContent = state.authProblem ? "Not shown: the API needs a key (see above)." : "No open alerts.";
    const unacked = alerts.filter((a) => !a.acknowledged_at && !String(a.state || "").endsWith("_ACK")).length;
    $("alerts-summary").textContent = alerts.length ? `${alerts.length} open, ${unacked} not acknowledged` : "";
  }

  async function acknowledge(alertId, button) {
    button.disabled = true;
    const label = button.textContent;
    button.textContent = "Acknowledging…";
    try {
      const alert = await api(`/alerts/${encodeURIComponent(alertId)}/ack`, { method: "POST", body: {} });
      state.alertErrors.delete(alertId);
      upsertAlert(alert);
    } catch (exc) {
      state.alertErrors.set(alertId, `Not acknowledged: ${problemText(exc)}`);
    } finally {
      button.disabled = false;
      button.textContent = label;
      schedule("alerts");
    }
  }

  function upsertAlert(alert) {
    if (!alert || !alert.alert_id) return;
    state.alertsTouched.set(alert.alert_id, Date.now());
    if (alert.cleared_at || String(alert.state || "").startsWith("CLEARED")) {
      state.alerts.delete(alert.alert_id);
      state.alertErrors.delete(alert.alert_id);
    } else {
      const known = state.alerts.get(alert.alert_id) || {};
      const merged = { ...known, ...alert };
      if (!alert.last_seen && alert.ts) merged.last_seen = alert.ts; // a live event: `ts` is its last sighting
      // An event's `state` is the truth now (a raised severity may ask for a new acknowledgement); the
      // acknowledgement fields it does not carry follow that state.
      if (alert.state && !("acknowledged_at" in alert) && String(alert.state).endsWith("_UNACK")) {
        merged.acknowledged_at = null;
        merged.acknowledged_by = null;
      }
      state.alerts.set(alert.alert_id, merged);
    }
    schedule("alerts");
  }

  // ---------- asset chart ----------

  function assetIds() {
    const ids = new Set(state.robots.keys());
    for (const id of state.telemetry.keys()) ids.add(id);
    if (state.selectedAsset) ids.add(state.selectedAsset);
    return Array.from(ids).sort();
  }

  function setOptions(select, values, selected, emptyText) {
    const current = Array.from(select.options).map((o) => o.value);
    const wanted = values.length ? values : [""];
    if (current.join("\n") !== wanted.join("\n")) {
      select.replaceChildren(...wanted.map((v) => el("option", { value: v, text: v || emptyText })));
    }
    select.value = selected && values.includes(selected) ? selected : wanted[0];
    select.disabled = values.length === 0;
  }

  function renderAssetOptions() {
    if (!state.selectedAsset && state.robots.size) {
      state.selectedAsset = sortedRobots()[0].robot_id;
      loadAssetData().catch(() => {});
    }
    setOptions($("asset-select"), assetIds(), state.selectedAsset, "no assets yet");
  }

  function selectAsset(assetId) {
    if (!assetId || assetId === state.selectedAsset) return;
    state.selectedAsset = assetId;
    writeStored(ASSET_STORAGE, assetId);
    state.predictions = [];
    state.selectedMetric = null;
    state.selectedModel = null;
    schedule("fleet");
    schedule("chart");
    loadAssetData().catch(() => {});
  }

  /** Numeric fields of a reading, nested ones as "vibration.rms". */
  function numericFields(reading, prefix = "", out = {}) {
    for (const [name, value] of Object.entries(reading || {})) {
      const path = prefix + name;
      if (typeof value === "number" && Number.isFinite(value) && !SKIPPED_METRICS.has(path)) out[path] = value;
      else if (value && typeof value === "object" && !Array.isArray(value)) numericFields(value, `${path}.`, out);
    }
    return out;
  }

  function appendTelemetry(item) {
    if (!item || !item.asset_id || !item.reading) return;
    // The same reading reaches us twice when a poll repeats what the live feed sent (or the other way round).
    const stamp = `${item.kind}|${item.reading.ts || item.received_at}|${item.reading.seq ?? ""}`;
    let series = state.telemetry.get(item.asset_id);
    if (series && series.slice(-RECENT_DUPLICATES).some((point) => point.stamp === stamp)) return;
    const t = toMs(item.reading.ts) || toMs(item.received_at) || Date.now();
    if (!series) {
      series = [];
      state.telemetry.set(item.asset_id, series);
      schedule("assets");
    }
    series.push({ t, stamp, values: numericFields(item.reading) });
    if (series.length > 1 && series[series.length - 2].t > t) series.sort((a, b) => a.t - b.t);
    if (series.length > HISTORY_POINTS) series.splice(0, series.length - HISTORY_POINTS);
    if (item.asset_id === state.selectedAsset) schedule("chart");
  }

  function predictionTime(p) {
    return toMs(p.window_end) || toMs(p.window_start) || toMs(p.produced_at) || 0;
  }

  function addPredictions(items) {
    const byId = new Map(state.predictions.map((p) => [`${p.model_name}/${p.window_key}`, p]));
    for (const p of items) byId.set(`${p.model_name}/${p.window_key}`, p);
    state.predictions = Array.from(byId.values()).sort((a, b) => predictionTime(a) - predictionTime(b));
    schedule("chart");
  }

  function renderChart() {
    const asset = state.selectedAsset;
    $("chart-title").textContent = asset ? `Asset ${asset}` : "Asset";
    const series = (asset && state.telemetry.get(asset)) || [];
    const metrics = new Set();
    for (const point of series) for (const name of Object.keys(point.values)) metrics.add(name);
    const metricList = Array.from(metrics).sort();
    if (!state.selectedMetric || !metrics.has(state.selectedMetric)) {
      state.selectedMetric = PREFERRED_METRICS.find((m) => metrics.has(m)) || metricList[0] || null;
    }
    setOptions($("metric-select"), metricList, state.selectedMetric, "no telemetry yet");

    const models = Array.from(new Set(state.predictions.map((p) => p.model_name))).sort();
    if (!state.selectedModel || !models.includes(state.selectedModel)) {
      state.selectedModel = models.includes("rul_lstm") ? "rul_lstm" : models[0] || null;
    }
    setOptions($("model-select"), models, state.selectedModel, "no predictions yet");

    const metric = state.selectedMetric;
    const points = metric
      ? series.filter((p) => metric in p.values).map((p) => ({ t: p.t, v: p.values[metric] }))
      : [];
    const telemetryCanvas = $("telemetry-chart");
    drawChart(telemetryCanvas, { points, empty: asset ? "Waiting for telemetry from this asset…" : "Pick an asset" });
    const latest = points[points.length - 1];
    const telemetryText = latest
      ? `${metric} of ${asset}: ${plural(points.length, "reading")}, latest ${fmtNumber(latest.v)} at ${fmtTime(latest.t)}`
      : `No telemetry readings of ${asset || "any asset"} yet`;
    $("telemetry-caption").textContent = metric ? `Telemetry: ${metric}` : "Telemetry";
    telemetryCanvas.setAttribute("aria-label", telemetryText);

    const model = state.selectedModel;
    const chosen = state.predictions.filter((p) => p.model_name === model);
    const predictionPoints = chosen.map((p) => ({ t: predictionTime(p), v: p.score }));
    const band = chosen
      .filter((p) => typeof p.rul_lower === "number" && typeof p.rul_upper === "number")
      .map((p) => ({ t: predictionTime(p), lo: p.rul_lower, hi: p.rul_upper }));
    const predictionCanvas = $("prediction-chart");
    drawChart(predictionCanvas, {
      points: predictionPoints,
      band,
      empty: "No predictions for this asset yet",
      minSpanMs: 10 * 60000,
    });
    const last = chosen[chosen.length - 1];
    $("prediction-caption").textContent = model
      ? `Predictions: ${model} score${band.length ? " with its interval" : ""}`
      : "Predictions";
    predictionCanvas.setAttribute(
      "aria-label",
      last
        ? `${model} on ${asset}: ${plural(chosen.length, "prediction")}, latest score ${fmtNumber(last.score)} (${last.label}), model version ${last.model_version}`
        : `No predictions for ${asset || "any asset"} yet`,
    );
    $("chart-note").textContent = asset
      ? "Telemetry is drawn from when this page opened (the API keeps the latest reading only); predictions come from the store."
      : "";
  }

  /** A line chart on a canvas: time on x (at least `minSpanMs`, newest at the right edge), `points` [{t, v}],
   * an optional band [{t, lo, hi}]. */
  function drawChart(canvas, { points, band = [], empty, minSpanMs = 60000 }) {
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(50, canvas.clientWidth);
    const height = Math.max(50, canvas.clientHeight);
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const css = getComputedStyle(document.documentElement);
    const color = (name) => css.getPropertyValue(name).trim();
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = color("--chart-text");
    if (!points.length) {
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillText(empty, width / 2, height / 2);
      return;
    }
    const left = 52;
    const right = 10;
    const top = 8;
    const bottom = 18;
    const ts = points.map((p) => p.t).concat(band.map((b) => b.t));
    const t1 = Math.max(...ts);
    const t0 = Math.min(Math.min(...ts), t1 - minSpanMs);
    const vs = points.map((p) => p.v).concat(band.flatMap((b) => [b.lo, b.hi]));
    let v0 = Math.min(...vs);
    let v1 = Math.max(...vs);
    if (v1 - v0 < 1e-9) {
      v0 -= Math.abs(v0) * 0.1 || 1;
      v1 += Math.abs(v1) * 0.1 || 1;
    }
    const pad = (v1 - v0) * 0.08;
    v0 -= pad;
    v1 += pad;
    const x = (t) => left + ((t - t0) / (t1 - t0)) * (width - left - right);
    const y = (v) => top + (1 - (v - v0) / (v1 - v0)) * (height - top - bottom);

    ctx.strokeStyle = color("--chart-grid");
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= 4; i += 1) {
      const v = v0 + ((v1 - v0) * i) / 4;
      const yy = Math.round(y(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(left, yy);
      ctx.lineTo(width - right, yy);
      ctx.stroke();
      ctx.fillText(fmtNumber(v), left - 6, yy);
    }
    ctx.textBaseline = "top";
    ctx.textAlign = "left";
    ctx.fillText(fmtTime(t0), left, height - bottom + 4);
    ctx.textAlign = "right";
    ctx.fillText(fmtTime(t1), width - right, height - bottom + 4);

    if (band.length) {
      ctx.fillStyle = color("--chart-band");
      ctx.beginPath();
      band.forEach((b, i) => (i ? ctx.lineTo(x(b.t), y(b.hi)) : ctx.moveTo(x(b.t), y(b.hi))));
      for (let i = band.length - 1; i >= 0; i -= 1) ctx.lineTo(x(band[i].t), y(band[i].lo));
      ctx.closePath();
      ctx.fill();
    }
    ctx.strokeStyle = color("--chart-line");
    ctx.fillStyle = color("--chart-line");
    ctx.lineWidth = 2;
    ctx.beginPath();
    points.forEach((p, i) => (i ? ctx.lineTo(x(p.t), y(p.v)) : ctx.moveTo(x(p.t), y(p.v))));
    ctx.stroke();
    if (points.length < 80) {
      for (const p of points) {
        ctx.beginPath();
        ctx.arc(x(p.t), y(p.v), 2.5, 0, Math.PI * 2);
        ctx.fill();
      }
    }
  }

  // ---------- backlog ----------

  function renderBacklog() {
    const backlog = state.backlog;
    const table = $("backlog-table");
    const empty = $("backlog-empty");
    const meta = $("backlog-meta");
    const summary = $("backlog-summary");
    if (!backlog) {
      table.hidden = true;
      summary.textContent = "";
      meta.textContent = "";
      let detail = "";
      if (state.authProblem) empty.textContent = "Not shown: the API needs a key (see above).";
      else if (backlog === undefined && !state.backlogProblem) empty.textContent = "Loading…";
      else if (state.backlogProblem && state.backlogProblem.status !== 404) {
        empty.textContent = "The backlog cannot be read right now.";
        detail = problemText({ problem: state.backlogProblem });
      } else {
        empty.textContent = "No backlog yet for this shift.";
        detail = (state.backlogProblem && state.backlogProblem.detail) || "";
      }
      empty.hidden = false;
      $("backlog-detail").textContent = detail;
      $("backlog-detail").hidden = !detail;
      return;
    }
    $("backlog-detail").hidden = true;
    const shift = backlog.shift || {};
    const earlier = toMs(shift.end) !== null && toMs(shift.end) < Date.now();
    meta.textContent =
      `${shift.name || "?"} shift, ${fmtDateTime(shift.start)} – ${fmtDateTime(shift.end)}` +
      ` · written ${fmtDateTime(backlog.generated_at)} by the ${(backlog.writer && backlog.writer.name) || "?"} writer` +
      (earlier ? " · an earlier shift: the one in progress has no backlog yet" : "");
    summary.textContent = backlog.summary || "";
    const tasks = backlog.tasks || [];
    table.hidden = tasks.length === 0;
    empty.hidden = tasks.length > 0;
    empty.textContent = tasks.length ? "" : "This backlog has no tasks.";
    const body = $("backlog-body");
    body.replaceChildren(
      ...tasks.map((task, index) =>
        el(
          "tr",
          { "data-task-id": task.task_id },
          el("td", { class: "num", text: String(index + 1) }),
          el("td", { class: "num", text: fmtNumber(task.priority_score), title: (task.priority_reasons || []).join("; ") }),
          el("td", { text: task.asset_id }),
          el("td", {}, el("span", { text: task.title }), el("span", { class: "task-action", text: task.action })),
          el("td", { class: "nowrap", text: fmtDateTime(task.due_at) }),
          el("td", { class: "nowrap", text: `${task.estimated_minutes} min, ${task.required_skill}` }),
        ),
      ),
    );
  }

  const RENDERERS = {
    fleet: renderFleet,
    alerts: renderAlerts,
    chart: renderChart,
    backlog: renderBacklog,
    status: renderStatus,
    assets: renderAssetOptions,
  };

  // ---------- REST ----------

  /** The answer of a request sent at `sentAt`, except entries the live feed changed since (or just before). */
  function mergeAnswer(current, answer, touched, sentAt) {
    const merged = new Map(answer);
    for (const [key, at] of touched) {
      if (at < sentAt - STALE_ANSWER_MS) {
        touched.delete(key); // old enough: the API's answers include it by now
      } else if (current.has(key)) merged.set(key, current.get(key));
      else merged.delete(key); // gone (e.g. cleared) after the answer was made
    }
    return merged;
  }

  async function loadRobots() {
    const sentAt = Date.now();
    const page = await api("/api/robots?limit=1000");
    const answer = new Map(page.items.map((r) => [r.robot_id, r]));
    state.robots = mergeAnswer(state.robots, answer, state.robotsTouched, sentAt);
    schedule("fleet");
  }

  async function loadAlerts() {
    const sentAt = Date.now();
    const page = await api("/alerts?open_only=true&limit=200");
    const answer = new Map(page.items.map((a) => [a.alert_id, a]));
    state.alerts = mergeAnswer(state.alerts, answer, state.alertsTouched, sentAt);
    for (const id of state.alertErrors.keys()) if (!state.alerts.has(id)) state.alertErrors.delete(id);
    schedule("alerts");
  }

  async function loadBacklog() {
    const sentAt = Date.now();
    try {
      const backlog = await api("/backlog/current?fallback=latest");
      if (state.backlogTouched < sentAt - STALE_ANSWER_MS) {
        state.backlog = backlog;
        state.backlogProblem = null;
      }
    } catch (exc) {
      if (exc.status === 404 && state.backlogTouched < sentAt - STALE_ANSWER_MS) state.backlog = null;
      state.backlogProblem = exc.problem || { status: exc.status, detail: exc.message };
      if (exc.status !== 404) throw exc;
    } finally {
      schedule("backlog");
    }
  }

  function setRobot(robot) {
    state.robots.set(robot.robot_id, robot);
    state.robotsTouched.set(robot.robot_id, Date.now());
    schedule("fleet");
  }

  function setBacklog(backlog) {
    state.backlog = backlog;
    state.backlogProblem = null;
    state.backlogTouched = Date.now();
    schedule("backlog");
  }

  async function loadAssetData() {
    const asset = state.selectedAsset;
    if (!asset) return;
    const query = encodeURIComponent(asset);
    const [latest, history] = await Promise.allSettled([
      api(`/api/telemetry/latest?asset_id=${query}`),
      api(`/predictions/history?asset_id=${query}&limit=${PREDICTION_PAGE}`),
    ]);
    if (asset !== state.selectedAsset) return; // picked another meanwhile
    if (latest.status === "fulfilled") for (const item of latest.value.items) appendTelemetry(item);
    if (history.status === "fulfilled") addPredictions(history.value.items);
    schedule("chart");
    const failed = [latest, history].find((r) => r.status === "rejected");
    if (failed) throw failed.reason;
  }

  async function refreshAll() {
    if (state.polling) {
      state.refreshAgain = true; // e.g. a new key while a poll with the old one is on its way
      return;
    }
    state.polling = true;
    state.refreshAgain = false;
    try {
      const results = await Promise.allSettled([loadRobots(), loadAlerts(), loadBacklog(), loadAssetData()]);
      const refused = results.find((r) => r.status === "rejected" && r.reason && r.reason.status === 401);
      state.authProblem = refused ? problemText(refused.reason) : null;
      if (refused) {
        // what an earlier key showed must not stay on screen as if this one could read it
        state.robots = new Map();
        state.alerts = new Map();
        state.backlog = undefined;
        state.backlogProblem = null;
        state.predictions = [];
      }
      if (results[0].status === "fulfilled") state.lastRefresh = Date.now();
      // the empty-state texts depend on authProblem, known only now
      for (const panel of ["fleet", "alerts", "backlog", "chart"]) schedule(panel);
      const failed = results.find((r) => r.status === "rejected" && r.reason && r.reason.status !== 401);
      if (failed && !refused) console.warn("dashboard refresh:", problemText(failed.reason));
    } finally {
      state.polling = false;
      schedule("status");
      if (state.refreshAgain) refreshAll();
      else schedulePoll();
    }
  }

  function schedulePoll() {
    clearTimeout(state.pollTimer);
    state.pollTimer = setTimeout(refreshAll, state.live === "open" ? POLL_LIVE_MS : POLL_MS);
  }

  // ---------- live feed (WebSocket) ----------

  function handleEvent(message) {
    const payload = message.payload;
    switch (message.type) {
      case "init":
        if (payload.robots) {
          state.robots = new Map();
          for (const robot of payload.robots) setRobot(robot);
          schedule("fleet");
        }
        if (payload.alerts) {
          state.alerts = new Map();
          for (const alert of payload.alerts) upsertAlert(alert);
          schedule("alerts");
        }
        if (payload.predictions && state.selectedAsset) {
          addPredictions(payload.predictions.filter((p) => p.asset_id === state.selectedAsset));
        }
        if (payload.backlog) setBacklog(payload.backlog);
        state.lastRefresh = Date.now();
        schedule("status");
        break;
      case "telemetry":
        appendTelemetry(payload);
        break;
      case "robot_update":
        if (payload && payload.robot_id) setRobot(payload);
        break;
      case "prediction":
        if (payload && payload.asset_id === state.selectedAsset) addPredictions([payload]);
        break;
      case "alert":
        upsertAlert(payload);
        break;
      case "backlog":
        if (payload && payload.shift) setBacklog(payload);
        break;
      case "error":
        console.warn("live feed:", payload);
        break;
      default:
        break; // subscribed, pong, cleanroom and anything newer: nothing to show
    }
  }

  function setLive(value, reason = "") {
    state.live = value;
    state.liveReason = reason;
    schedule("status");
  }

  function stopLive() {
    clearTimeout(state.reconnectTimer);
    clearInterval(state.pingTimer);
    if (state.ws) {
      const ws = state.ws;
      state.ws = null;
      ws.onclose = null;
      ws.close(1000, "key changed");
    }
  }

  function connectLive() {
    stopLive();
    if (!("WebSocket" in window)) return;
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    const query = state.key ? `?api_key=${encodeURIComponent(state.key)}` : "";
    let ws;
    try {
      ws = new WebSocket(`${scheme}//${window.location.host}/ws${query}`);
    } catch {
      reconnectLater();
      return;
    }
    state.ws = ws;
    setLive("connecting");
    ws.onopen = () => {
      state.reconnectDelay = RECONNECT_MIN_MS;
      ws.send(JSON.stringify({ type: "subscribe", channel: "all" }));
      state.pingTimer = setInterval(() => {
        if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "ping" }));
      }, PING_MS);
      setLive("open"); // the poll already scheduled runs, then polls slow down to POLL_LIVE_MS
    };
    ws.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (message && typeof message === "object") handleEvent(message);
    };
    ws.onclose = (event) => {
      if (state.ws !== ws) return;
      state.ws = null;
      clearInterval(state.pingTimer);
      const wasOpen = state.live === "open";
      if (event.code === 4401) {
        setLive("refused", event.reason); // wait for another key rather than hammering the server
      } else {
        setLive("off");
        reconnectLater();
      }
      if (wasOpen) refreshAll(); // events may have been missed; polling at POLL_MS again from here
    };
  }

  function reconnectLater() {
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = setTimeout(connectLive, state.reconnectDelay);
    state.reconnectDelay = Math.min(state.reconnectDelay * 2, RECONNECT_MAX_MS);
  }

  // ---------- wiring ----------

  function useKey(key) {
    state.key = key;
    writeStored(KEY_STORAGE, key);
    state.alertErrors.clear();
    renderKeyStatus();
    state.reconnectDelay = RECONNECT_MIN_MS;
    connectLive();
    refreshAll();
  }

  function start() {
    $("api-key").value = state.key;
    renderKeyStatus();
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      useKey($("api-key").value.trim());
    });
    $("forget-key").addEventListener("click", () => {
      $("api-key").value = "";
      useKey("");
    });
    $("asset-select").addEventListener("change", (event) => selectAsset(event.target.value));
    $("metric-select").addEventListener("change", (event) => {
      state.selectedMetric = event.target.value;
      schedule("chart");
    });
    $("model-select").addEventListener("change", (event) => {
      state.selectedModel = event.target.value;
      schedule("chart");
    });
    if ("ResizeObserver" in window) {
      const observer = new ResizeObserver(() => schedule("chart"));
      for (const box of document.querySelectorAll(".canvas-box")) observer.observe(box);
    } else window.addEventListener("resize", () => schedule("chart"));
    setInterval(() => {
      for (const node of document.querySelectorAll("time[data-relative]")) {
        node.textContent = relative(node.getAttribute("datetime"));
      }
    }, 1000);
    schedule("status");
    schedule("chart");
    connectLive();
    refreshAll();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
