// ratewarden dashboard: live totals, chart, events, configs (with shadow mode, overrides,
// history and rollback), top clients, client inspector (with reset) and tester.
// Everything that came from a request (paths, client ids, error text) is inserted with
// textContent, never as HTML.
"use strict";

const MAX_EVENTS = 100; // lines shown
const KEPT_EVENTS = 1000; // events kept, whatever the switches show
const CHART_SECONDS = 300;
const $ = (sel) => document.querySelector(sel);

// ---- admin token (kept in this tab only) ----------------------------------------------
let token = sessionStorage.getItem("ratewarden-token") || "";
let tokenWaiters = null;

function askToken() {
  if (tokenWaiters) return tokenWaiters;
  const dialog = $("#token-dialog");
  tokenWaiters = new Promise((resolve) => {
    dialog.addEventListener("close", function onClose() {
      dialog.removeEventListener("close", onClose);
      if (dialog.returnValue === "ok") {
        token = $("#token-input").value.trim();
        sessionStorage.setItem("ratewarden-token", token);
      }
      tokenWaiters = null;
      resolve(token);
    });
    dialog.showModal();
  });
  return tokenWaiters;
}

// fetch for the admin API: adds the token, asks for one on 401 and retries once.
async function api(path, options = {}, retried = false) {
  const headers = Object.assign({}, options.headers || {});
  if (token) headers["Authorization"] = "Bearer " + token;
  if (options.body) headers["Content-Type"] = "application/json";
  const res = await fetch(path, Object.assign({}, options, { headers }));
  if (res.status === 401 && !retried) {
    await askToken();
    reconnectAll();
    return api(path, options, true);
  }
  return res;
}

function feedUrl(path) {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  return proto + "//" + location.host + path;
}

// A browser cannot set headers on a WebSocket, and a token in the URL would end up in
// proxy logs: it travels as a subprotocol instead, "bearer.<hex of the token>", next to
// "ratewarden", which the server selects.
function feedSocket(path) {
  const protocols = ["ratewarden"];
  if (token) {
    const hex = Array.from(new TextEncoder().encode(token), (b) => b.toString(16).padStart(2, "0"));
    protocols.push("bearer." + hex.join(""));
  }
  return new WebSocket(feedUrl(path), protocols);
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = String(text);
  return e;
}

// Gives each cell of a table body its column's header as data-label: on a narrow screen
// a row is drawn as a list of "header  value" lines (dashboard.css).
function labelCells(tbody) {
  const heads = [...tbody.closest("table").querySelectorAll("thead th")].map((th) => th.textContent.trim());
  for (const tr of tbody.children) [...tr.children].forEach((td, i) => { td.dataset.label = heads[i] || ""; });
}

const fmt = (n) => (typeof n === "number" ? n.toLocaleString("en-US") : "–");
const clock = (iso) => (iso ? new Date(iso).toLocaleTimeString([], { hour12: false }) : "");

// ---- totals ---------------------------------------------------------------------------
function showTotals(d) {
  $("#kpi-total").textContent = fmt(d.total_requests_24h);
  $("#kpi-blocked").textContent = fmt(d.blocked_requests_24h);
  const success = $("#kpi-success");
  success.textContent = d.success_rate.toFixed(1) + " %";
  success.className = "kpi-value " + successClass(d.success_rate);
  $("#kpi-rps").textContent = d.requests_per_second.toFixed(1);
  $("#kpi-clients").textContent = fmt(d.active_clients);
  if (d.last_second) addSecond(d.last_second);
}

// The success rate's colour follows the figure: green from 99 %, amber from 90 %, red
// below (docs/feeds-and-dashboard.md says the same).
function successClass(rate) {
  if (rate >= 99) return "good";
  if (rate >= 90) return "warn";
  return "bad";
}

// ---- chart ----------------------------------------------------------------------------
const series = new Map(); // second -> [allowed, blocked]
let plot = null;

function addSecond(s) {
  const before = series.size ? Math.max(...series.keys()) : s.second - 1;
  series.set(s.second, [s.allowed, s.blocked]);
  const newest = Math.max(...series.keys());
  for (const k of series.keys()) if (k <= newest - CHART_SECONDS) series.delete(k);
  drawChart();
  // Each global_stats carries only the second before it was sent. A tick that fires a few
  // ms late across a second boundary skips one (and a reconnect skips several): fetch
  // the skipped seconds instead of charting them as zero.
  if (s.second > before + 1) loadTraffic();
}

function drawChart() {
  const xs = [...series.keys()].sort((a, b) => a - b);
  const data = [xs, xs.map((x) => series.get(x)[0]), xs.map((x) => series.get(x)[1])];
  const box = $("#chart");
  box.dataset.points = String(xs.length);
  box.dataset.blocked = String(data[2].reduce((a, b) => a + b, 0));
  if (typeof uPlot === "undefined") return;
  if (!plot) {
    plot = new uPlot({
      width: box.clientWidth || 600, height: 240,
      // Blocked is dashed: the two lines differ by more than their colour.
      series: [{}, { label: "allowed", stroke: "#15804e", fill: "#15804e22" },
                   { label: "blocked", stroke: "#d1453b", fill: "#d1453b22", dash: [6, 4], width: 2 }],
      // The last minutes only: every x label is a time of day, 24 h, with room to spare
      // between labels (uPlot's default puts the date on the first one, over its
      // neighbour), and steps (in seconds) that give a phone's width two or three labels.
      axes: [{ space: 70, incrs: [1, 5, 10, 15, 30, 60, 120, 300, 600],
               values: (u, splits) => splits.map((t) => new Date(t * 1000).toLocaleTimeString("en-GB", { hour12: false })) },
             { label: "requests / s" }],
    }, data, box);
    new ResizeObserver(() => plot.setSize({ width: box.clientWidth, height: 240 })).observe(box);
  } else {
    plot.setData(data);
  }
}

let trafficLoading = null;

function loadTraffic() {
  if (!trafficLoading) {
    trafficLoading = (async () => {
      const res = await api("/admin/traffic");
      if (!res.ok) return;
      const body = await res.json();
      for (const s of body.seconds) series.set(s.second, [s.allowed, s.blocked]);
      drawChart();
    })().finally(() => { trafficLoading = null; });
  }
  return trafficLoading;
}

// ---- events ---------------------------------------------------------------------------
// The request path, and the config it counted against when that differs.
const where = (m) => (m.path && m.path !== m.endpoint ? `${m.path} (${m.endpoint})` : m.endpoint);

// Who asked for a decision (the feed's "via"), in the events' words; a request to one
// of the server's own routes says nothing more. Events from instances that predate
// "via" were a route's.
const VIA = { route: "", proxy: "reverse proxy", check: "/v1/check", forward_auth: "forward-auth", envoy: "Envoy" };
const viaOf = (m) => m.via || "route";
const asked = (m) => (viaOf(m) === "route" ? "" : ` · via ${VIA[viaOf(m)] || viaOf(m)}`);

function describe(m) {
  switch (m.type) {
    case "request_processed":
      // Shadow mode: over the limit, let through; said apart from a real 429.
      if (m.would_limit) return ["would 429", "tag-shadow", `${m.client_id} ${where(m)} · shadow, over the limit, let through${asked(m)}`];
      return ["200", "tag-ok", `${m.client_id} ${where(m)} · ${m.remaining}/${m.limit} left${asked(m)}`];
    case "rate_limit_exceeded": return ["429", "tag-block", `${m.client_id} ${where(m)}${m.limit_name ? ` · limit ${m.limit_name}` : ""} · retry in ${m.retry_after}s${asked(m)}`];
    case "config_updated": return ["cfg", "tag-cfg", `${m.action} ${m.config.endpoint}`];
    case "client_reset": return ["reset", "tag-cfg", `${m.client_id} quota reset (${m.endpoints.join(", ")})`];
    case "events_dropped": return ["drop", "tag-block", `${m.count} events skipped (feed too slow)`];
    default: return null;
  }
}

// Whether the event list's switches (only 429s, who asked) let an event be shown.
function shown(type, via) {
  const decision = type === "request_processed" || type === "rate_limit_exceeded";
  if ($("#only-blocked").checked && type === "request_processed") return false;
  const from = $("#events-via").value;
  return !from || !decision || via === from;
}

// The last KEPT_EVENTS events, oldest first, shown or not: a switch turned off again
// shows what arrived while it was on.
const recent = [];

function eventLine(m, d) {
  const li = el("li");
  li.append(el("span", "muted", clock(m.timestamp)), el("span", "tag " + d[1], d[0]), el("span", "ev-detail", d[2]));
  return li;
}

// A switch changed: the list is drawn again from the kept events, newest first.
function drawEvents() {
  const lines = [];
  for (let i = recent.length - 1; i >= 0 && lines.length < MAX_EVENTS; i--) {
    const m = recent[i];
    if (shown(m.type, viaOf(m))) lines.push(eventLine(m, describe(m)));
  }
  $("#events").replaceChildren(...lines);
}

function showEvent(m) {
  const d = describe(m);
  if (!d) return;
  recent.push(m);
  if (recent.length > KEPT_EVENTS) recent.shift();
  if (!shown(m.type, viaOf(m))) return;
  const list = $("#events");
  list.prepend(eventLine(m, d));
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
}

// ---- live feed ------------------------------------------------------------------------
let globalSocket = null;
let inspectorSocket = null;
let watching = "";

// The global feed reconnects by itself, with backoff (0.5 s doubling to 10 s), and on
// every (re)connection fetches again what the page shows from it: configs, the chart,
// the top clients and the watched client. It subscribes before it fetches, so a change
// made meanwhile arrives as an event if the fetch missed it.
let backoff = 500;
let everConnected = false;

function setConn(text, on) {
  const c = $("#conn");
  c.textContent = text;
  c.className = "pill " + (on ? "pill-on" : "pill-off");
}

// A feed refused before it ever opened: ask the admin API why, once, and say so (a
// tokenless server reached through a host name it does not answer, for one).
let refusalShown = false;
async function explainRefusal() {
  if (refusalShown) return;
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const res = await fetch("/admin/configs", { headers }).catch(() => null);
  if (!res || res.status !== 403 || refusalShown) return;
  const body = await res.json().catch(() => ({}));
  refusalShown = true;
  const box = $("#access-error");
  box.textContent = body.message || "This server refused the dashboard's requests (403).";
  box.hidden = false;
  setConn("refused", false);
}

function connectGlobal() {
  if (globalSocket) globalSocket.close();
  const ws = feedSocket("/ws/global");
  globalSocket = ws;
  ws.onopen = () => {
    backoff = 500;
    setConn("live", true);
    loadConfigs();
    loadTraffic();
    loadTop();
    if (everConnected && watching) watch(watching);
    everConnected = true;
  };
  ws.onclose = () => {
    if (globalSocket !== ws) return;
    if (!everConnected) explainRefusal();
    setConn(refusalShown ? "refused" : "reconnecting…", false);
    setTimeout(connectGlobal, backoff);
    backoff = Math.min(backoff * 2, 10_000);
  };
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.type === "global_stats") { showTotals(m.data); maybeLoadTop(); }
    else {
      showEvent(m);
      if (m.type === "config_updated") {
        loadConfigs();
        if (historyOf === m.config.endpoint) loadHistory(historyOf);
      }
    }
  };
}

function reconnectAll() {
  connectGlobal();
  if (watching) watch(watching);
}

// ---- configs --------------------------------------------------------------------------
let editing = null;

// Each load is numbered: an answer older than the newest load started is dropped, so a
// slow answer can never overwrite a newer table.
let configLoads = 0;

// A limit's window in words, and a token bucket's capacity and rate ("–" otherwise).
const windowOf = (l) => l.calendar ? `${l.calendar} (UTC)` : l.window_seconds + " s";
// One limit of a config of several, in a line: its numbers, or its cap in flight.
const limitLine = (l) => l.algorithm === "concurrency"
  ? `${l.name}: ${fmt(l.max_in_flight)} in flight concurrency`
  : `${l.name}: ${fmt(l.requests_per_window)}${l.unit ? " " + l.unit : ""} / ${windowOf(l)} ${l.algorithm}` +
    (l.cost_from ? ` (cost from ${l.cost_from.replace("response_header:", "")})` : "");
const bucketOf = (l) => l.algorithm === "token_bucket"
  ? `${l.burst_limit ?? l.requests_per_window} / ${l.refill_rate ?? +(l.requests_per_window / l.window_seconds).toFixed(3)}`
  : "–";

async function loadConfigs() {
  const load = ++configLoads;
  const res = await api("/admin/configs");
  if (!res.ok || load !== configLoads) return;
  const configs = await res.json();
  if (load !== configLoads) return;
  const rows = [];
  for (const c of configs) {
    const tr = el("tr");
    const mode = el("td", "mode");
    mode.append(el("span", "badge " + c.mode, c.mode));
    const overrides = el("td", "overrides", c.overrides.length
      ? c.overrides.map((o) => `${o.client}${o.limit ? " (" + o.limit + ")" : ""}: ${o.requests_per_window}`).join(", ")
      : "–");
    // One limit: its numbers in the columns; several: one line each, by name.
    const several = c.requests_per_window === undefined;
    const cells = several
      ? [el("td", "", c.limits.length + " limits"), el("td", "limits", c.limits.map(limitLine).join("; ")), el("td", "", "–"), el("td", "", "–")]
      : [el("td", "", c.algorithm), el("td", "", fmt(c.requests_per_window)), el("td", "", windowOf(c)), el("td", "", bucketOf(c))];
    tr.append(el("td", "endpoint", c.endpoint), ...cells, el("td", "", c.is_active ? "yes" : "no"), mode, overrides);
    tr.dataset.key = c.endpoint;
    const actions = el("td", "actions");
    const edit = rowButton("ghost small", "Edit", "edit", `Edit ${c.endpoint}`);
    edit.onclick = () => openForm(c);
    const history = rowButton("ghost small history", "History", "history", `History of ${c.endpoint}`);
    history.onclick = () => loadHistory(c.endpoint);
    actions.append(edit, " ", history);
    if (c.endpoint !== "*") {
      const del = rowButton("danger", "Delete", "delete", `Delete ${c.endpoint}`);
      del.onclick = async () => {
        if (!confirm("Delete the config for " + c.endpoint + "?")) return;
        const r = await api(configPath(c.endpoint), { method: "DELETE" });
        if (!r.ok) alert(((await r.json()).message) || "Delete failed");
        loadConfigs();
      };
      actions.append(" ", del);
    }
    tr.append(actions);
    rows.push(tr);
  }
  // One swap after the data arrived: overlapping reloads cannot interleave their rows.
  const place = focusPlace($("#config-rows"));
  $("#config-rows").replaceChildren(...rows);
  labelCells($("#config-rows"));
  if (place) focusRow(place.key, place.role);
}

// A row's button: its text, its role in the row (to find it again once the rows are
// drawn anew) and an accessible name that says which row.
function rowButton(cls, text, role, name) {
  const b = el("button", cls, text);
  b.type = "button";
  b.dataset.role = role;
  b.setAttribute("aria-label", name);
  return b;
}

// Where the keyboard is in a table body about to be drawn again: the row's key and
// the button's role, or null when the focus is elsewhere.
function focusPlace(tbody) {
  const a = document.activeElement;
  if (!a || !tbody.contains(a) || !a.dataset.role) return null;
  return { key: a.closest("tr").dataset.key, role: a.dataset.role };
}

// Puts the focus on that button of that config's row, or on New config when the row
// (or the button) is gone.
function focusRow(key, role) {
  const b = [...$("#config-rows").querySelectorAll("button")]
    .find((x) => x.dataset.role === role && x.closest("tr").dataset.key === key);
  (b || $("#new-config")).focus();
}

function configPath(endpoint) {
  // A descriptor rule's endpoint ("rw: key=value, key", always with ": ") is not a
  // path: it is sent whole, percent-encoded.
  if (endpoint.includes(": ")) return "/admin/configs/" + encodeURIComponent(endpoint);
  const rest = endpoint === "*" ? "*" : endpoint.slice(1);
  return "/admin/configs/" + rest.split("/").map(encodeURIComponent).join("/").replace(/%2A/g, "*");
}

// The config form is drawn from the server's model of a config (its fields, their
// defaults, the choices of choice fields), so a new config field needs no change here.
const MODEL = JSON.parse(document.body.dataset.configModel);
const KINDS = {}; // field -> "choice" | "boolean" | "number" | "text" | "json" | "nullable"

function kindOf(name, value) {
  if (MODEL.choices[name]) return "choice";
  if (typeof value === "boolean") return "boolean";
  if (typeof value === "number") return "number";
  if (typeof value === "string") return "text";
  if (value === null) return "nullable";
  return "json";
}

function drawFields() {
  const box = $("#config-fields");
  for (const [name, value] of Object.entries(MODEL.defaults)) {
    const kind = kindOf(name, value);
    KINDS[name] = kind;
    const label = el("label", kind === "boolean" ? "check" : kind === "json" ? "wide-field" : "", name.replaceAll("_", " ") + " ");
    let input;
    if (kind === "choice") {
      input = el("select");
      // A choice that may be left unset (its default is null) starts with "none".
      const choices = value === null ? ["", ...MODEL.choices[name]] : MODEL.choices[name];
      for (const c of choices) { const o = el("option", "", c || "none"); o.value = c; input.append(o); }
    } else if (kind === "json") {
      input = el("textarea");
      input.rows = 3;
      input.spellcheck = false;
    } else {
      input = el("input");
      input.type = kind === "boolean" ? "checkbox" : kind === "number" ? "number" : "text";
      if (kind === "nullable") input.placeholder = "default";
    }
    input.name = name;
    input.required = MODEL.required.includes(name);
    // A descriptor rule (domain and descriptor) has no endpoint: the server writes it.
    if (name === "endpoint") {
      input.required = false;
      input.placeholder = "/path, /prefix/* (empty for a descriptor rule)";
    }
    if (kind === "boolean") label.prepend(input); else label.append(input);
    box.append(label);
  }
}

// The button that opened the form, for the focus to go back to.
let formOpener = null;

function openForm(config) {
  const f = $("#config-form");
  editing = config;
  formOpener = config ? { key: config.endpoint, role: "edit" } : null;
  f.hidden = false;
  $("#config-error").textContent = "";
  const c = Object.assign({}, MODEL.defaults, { endpoint: "", requests_per_window: 100, window_seconds: 60 }, config || {});
  // A config of one limit named "default" is edited through its top-level fields; any
  // other through the list (so a limit keeps its name), its top-level fields blank.
  const single = config && (!config.limits || (config.limits.length === 1 && config.limits[0].name === "default"));
  if (single) c.limits = [];
  else if (config) for (const name of MODEL.limit_fields) if (KINDS[name] !== "choice") c[name] = null;
  for (const [name, kind] of Object.entries(KINDS)) {
    const input = f.elements[name];
    const v = c[name];
    if (kind === "boolean") input.checked = !!v;
    else if (kind === "json") input.value = JSON.stringify(v);
    else if (kind === "nullable" && typeof v === "object" && v !== null) input.value = JSON.stringify(v);
    else input.value = v ?? "";
  }
  limitFieldsRequired();
  // A config's identity (its endpoint, or a rule's domain and descriptor) is fixed.
  for (const name of ["endpoint", "domain", "descriptor"]) if (f.elements[name]) f.elements[name].disabled = !!config;
  $("#config-save").textContent = config ? "Save" : "Create";
  // The keyboard lands on the first field that can change.
  [...f.elements].find((e) => e.name && !e.disabled)?.focus();
}

// The top-level fields of one limit are required unless the form lists several limits.
function limitFieldsRequired() {
  const f = $("#config-form");
  let listed = false;
  try { listed = JSON.parse(f.elements.limits.value || "[]").length > 0; } catch { listed = true; }
  for (const name of MODEL.limit_fields) {
    if (f.elements[name]) f.elements[name].required = !listed && MODEL.required.includes(name);
  }
}

// Closes the form and gives the keyboard focus back to the button that opened it (the
// row's Edit, or New config).
function closeForm() {
  $("#config-form").hidden = true;
  editing = null;
  if (formOpener) focusRow(formOpener.key, formOpener.role); else $("#new-config").focus();
}

// The body of a create or update: every field of the form, read by its kind. Throws a
// sentence naming the field when one cannot be read.
function readForm(f) {
  const body = {};
  for (const [name, kind] of Object.entries(KINDS)) {
    const input = f.elements[name];
    const raw = input.value.trim();
    if (kind === "boolean") body[name] = input.checked;
    else if (kind === "choice" && raw === "") body[name] = null;
    else if (kind === "number") body[name] = raw === "" ? null : Number(raw);
    else if (kind === "nullable") body[name] = raw === "" ? null : parseLoose(raw);
    else if (kind === "json") body[name] = raw === "" ? MODEL.defaults[name] : parseJson(name, raw);
    else body[name] = raw;
  }
  return body;
}

// A field with no default reads as JSON when it is JSON (a number, a list), else as
// the text typed (a domain).
function parseLoose(raw) {
  try { return JSON.parse(raw); } catch { return raw; }
}

function parseJson(name, raw) {
  try { return JSON.parse(raw); } catch (e) { throw `${name.replaceAll("_", " ")}: not valid JSON (${e.message})`; }
}

async function saveConfig(ev) {
  ev.preventDefault();
  const f = ev.target;
  let body;
  try { body = readForm(f); } catch (message) { $("#config-error").textContent = message; return; }
  // A list of limits replaces the top-level fields of one; an empty list sends none.
  if (Array.isArray(body.limits) && body.limits.length) for (const name of MODEL.limit_fields) delete body[name];
  else body.limits = null;
  // A calendar sets the window: the server writes its length.
  if (body.calendar != null) delete body.window_seconds;
  let res;
  if (editing) {
    body.endpoint = editing.endpoint;
    res = await api(configPath(editing.endpoint), { method: "PUT", body: JSON.stringify(body) });
  } else {
    if (body.endpoint === "" && (body.domain != null || body.descriptor != null)) delete body.endpoint;
    res = await api("/admin/configs", { method: "POST", body: JSON.stringify(body) });
  }
  if (res.ok) {
    closeForm();
    loadConfigs();
  } else {
    const err = await res.json().catch(() => ({ message: "The server answered " + res.status }));
    $("#config-error").textContent = err.message || ("Error " + res.status);
  }
}

// ---- history and rollback -------------------------------------------------------------
let historyOf = null;

// A config's numbers in one line, for a history row.
const summary = (c) => c
  ? (c.requests_per_window === undefined
      ? c.limits.map(limitLine).join(", ")
      : `${c.requests_per_window}/${c.window_seconds}s ${c.algorithm}`) +
    ` ${c.mode}${c.is_active ? "" : " inactive"}` +
    (c.overrides.length ? ` +${c.overrides.length} overrides` : "")
  : "(deleted)";

async function loadHistory(endpoint) {
  historyOf = endpoint;
  const card = $("#history-card");
  card.hidden = false;
  $("#history-endpoint").textContent = endpoint;
  $("#history-error").textContent = "";
  const res = await api("/admin/configs/history?limit=50&endpoint=" + encodeURIComponent(endpoint));
  if (!res.ok || historyOf !== endpoint) return;
  const entries = await res.json();
  const rows = entries.map((h, i) => {
    const tr = el("tr");
    tr.dataset.version = String(h.version);
    tr.append(el("td", "", h.version), el("td", "", clock(h.at)), el("td", "", h.action), el("td", "", h.source),
              el("td", "after", summary(h.after)));
    const cell = el("td", "actions");
    if (i > 0) { // the newest is what runs now
      const back = rowButton("ghost small rollback", "Roll back here", "rollback", `Roll back here: ${endpoint} to version ${h.version}`);
      back.onclick = () => rollback(endpoint, h.version);
      cell.append(back);
    }
    tr.append(cell);
    return tr;
  });
  const place = focusPlace($("#history-rows"));
  $("#history-rows").replaceChildren(...rows);
  labelCells($("#history-rows"));
  // A rollback drew the rows anew: the keyboard stays in the card.
  if (place) $("#history-close").focus();
}

async function rollback(endpoint, version) {
  const res = await api(configPath(endpoint) + "/rollback?to=" + version, { method: "POST" });
  if (!res.ok) {
    const err = await res.json().catch(() => ({ message: "The server answered " + res.status }));
    $("#history-error").textContent = err.message;
    return;
  }
  loadConfigs();
  loadHistory(endpoint);
}

// ---- top clients ----------------------------------------------------------------------
let topLoadedAt = 0;

function maybeLoadTop() {
  if (Date.now() - topLoadedAt >= 5000) loadTop();
}

async function loadTop() {
  topLoadedAt = Date.now();
  const f = $("#top-form");
  const res = await api(`/admin/top?by=${f.by.value}&window=${f.window.value}&limit=10`);
  if (!res.ok) return;
  const body = await res.json();
  const items = body.clients.map((c) => {
    const li = el("li");
    li.append(el("span", "client", c.client_id), el("span", "count", fmt(c.count)));
    return li;
  });
  $("#top-rows").replaceChildren(...items);
  $("#top-note").textContent = body.clients.length
    ? (body.error_bound ? `counts may be short by up to ${fmt(body.error_bound)}` : "exact counts")
    : `no ${body.by} requests in the last ${body.window_minutes} min`;
}

// ---- client inspector -----------------------------------------------------------------
function watch(client) {
  watching = client;
  $("#reset-client").disabled = false;
  if (inspectorSocket) inspectorSocket.close();
  $("#inspector-summary").textContent = "Connecting to " + client + "…";
  const ws = feedSocket("/ws/" + encodeURIComponent(client));
  inspectorSocket = ws;
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.type === "client_stats") showClient(m.data);
    // A config of several limits: every limit's row, from the event's list.
    else if (m.limits) for (const l of m.limits) updateRemaining(rowKey(m.endpoint, l.name), l.remaining, l.limit);
    else if (m.type === "request_processed") updateRemaining(m.endpoint, m.remaining, m.limit);
    else if (m.type === "rate_limit_exceeded") updateRemaining(m.endpoint, 0, m.limit);
    else if (m.type === "client_reset") $("#inspector-summary").append(" · quota reset");
  };
  ws.onclose = () => { if (inspectorSocket === ws) $("#inspector-summary").textContent = "Feed closed for " + client + "."; };
}

function showClient(d) {
  const s = d.status;
  $("#inspector-summary").textContent =
    `${d.client_id}: ${fmt(s.total_requests)} requests, ${fmt(s.blocked_requests)} blocked` +
    (s.last_request ? `, last at ${clock(s.last_request)}` : ", no requests yet");
  const rows = $("#quota-rows");
  rows.replaceChildren();
  for (const e of s.endpoints) {
    const from = e.override ? `override ${e.override}` : "config";
    // A config of several limits: a row per limit, named.
    for (const l of e.limits || [e]) {
      const tr = el("tr");
      tr.dataset.endpoint = rowKey(e.endpoint, l.name);
      // A concurrency limit's row shows the requests in flight; a limit of tokens or
      // bytes its unit, and its debt while overdrawn.
      if (l.algorithm === "concurrency") tr.dataset.held = "1";
      if (l.unit) tr.dataset.unit = l.unit;
      const bar = el("div", "bar");
      bar.append(el("div"));
      const barCell = el("td", "bar-cell");
      barCell.append(bar);
      const resets = l.debt ? `${fmt(l.debt)} owed, repaid in ${l.retry_after} s` : clock(l.reset_time);
      tr.append(el("td", "endpoint", e.endpoint + (l.name ? ` · ${l.name}` : "")), el("td", "", l.algorithm), el("td", "remaining", ""), barCell,
                el("td", "resets", resets), el("td", "limit-from", from + (e.shadow ? " · shadow" : "")));
      rows.append(tr);
      setRemaining(tr, l.remaining, l.limit);
    }
  }
  labelCells(rows);
}

// A quota row's key: its config, and the limit's name under a config of several.
const rowKey = (endpoint, name) => (name ? `${endpoint}#${name}` : endpoint);

function setRemaining(tr, remaining, limit) {
  tr.querySelector(".remaining").textContent = tr.dataset.held
    ? `${fmt(remaining)} / ${fmt(limit)} · ${fmt(limit - remaining)} in flight`
    : `${fmt(remaining)} / ${fmt(limit)}${tr.dataset.unit ? " " + tr.dataset.unit : ""}`;
  const pct = limit ? Math.max(0, Math.min(100, (remaining / limit) * 100)) : 0;
  const bar = tr.querySelector(".bar");
  bar.firstChild.style.width = pct + "%";
  bar.classList.toggle("low", pct < 20);
}

function updateRemaining(endpoint, remaining, limit) {
  for (const tr of $("#quota-rows").children) {
    if (tr.dataset.endpoint === endpoint) setRemaining(tr, remaining, limit);
  }
}

// ---- tester ---------------------------------------------------------------------------
async function fire(ev) {
  ev.preventDefault();
  const f = ev.target;
  const path = f.path.value.trim();
  const method = f.method.value;
  const client = f.client.value.trim();
  const count = Math.max(1, Math.min(1000, Number(f.count.value) || 1));
  const result = $("#tester-result");
  result.textContent = "Sending " + count + " requests…";
  const tally = { passed: 0, limited: 0, other: 0 };
  let next = 0;
  async function worker() {
    while (next < count) {
      next += 1;
      try {
        const r = await fetch(path, { method, headers: { "X-Client-ID": client }, cache: "no-store" });
        if (r.status === 429) tally.limited += 1;
        else if (r.status < 400 || r.status === 404) tally.passed += 1;
        else tally.other += 1;
      } catch (_) { tally.other += 1; }
    }
  }
  await Promise.all(Array.from({ length: Math.min(8, count) }, worker));
  result.replaceChildren();
  const passed = el("strong", "good", tally.passed);
  const limited = el("strong", "bad", tally.limited);
  passed.id = "tester-passed";
  limited.id = "tester-limited";
  result.append(passed, " passed · ", limited, " limited");
  if (tally.other) result.append(" · " + tally.other + " failed");
  result.classList.remove("muted");
}

// ---- start ----------------------------------------------------------------------------
$("#token-button").onclick = async () => { await askToken(); reconnectAll(); loadConfigs(); loadTraffic(); };
drawFields();
$("#new-config").onclick = () => openForm(null);
$("#config-cancel").onclick = closeForm;
$("#config-form").addEventListener("keydown", (ev) => { if (ev.key === "Escape") closeForm(); });
$("#config-form").addEventListener("submit", saveConfig);
$("#config-form").addEventListener("input", (ev) => { if (ev.target.name === "limits") limitFieldsRequired(); });
$("#tester").addEventListener("submit", fire);
$("#history-close").onclick = () => {
  $("#history-card").hidden = true;
  focusRow(historyOf, "history");
  historyOf = null;
};
$("#top-form").addEventListener("change", loadTop);
$("#only-blocked").addEventListener("change", drawEvents);
$("#events-via").addEventListener("change", drawEvents);
$("#reset-client").onclick = async () => {
  if (!watching) return;
  const res = await api("/admin/clients/" + encodeURIComponent(watching) + "/state", { method: "DELETE" });
  if (!res.ok) alert(((await res.json()).message) || "Reset failed");
};
$("#inspector").addEventListener("submit", (ev) => { ev.preventDefault(); watch(ev.target.client.value.trim()); });

(async function start() {
  if (document.body.dataset.tokenRequired === "true" && !token) await askToken();
  // Subscribe first; the feed's opening fetches the rest (see connectGlobal).
  connectGlobal();
})();
