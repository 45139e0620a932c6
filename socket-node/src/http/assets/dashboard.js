// The t2t socket dashboard: plain JavaScript, no build step. It reads the JSON API of
// socket-node (/api/v1/...) with the operator token the owner gives it, and follows the
// outlets live through /api/v1/events (server-sent events, read with fetch so that the token
// goes in the Authorization header, never in a URL).
"use strict";

const TOKEN_KEY = "t2t-token";
let token = null;
let scope = null;

// An element with attributes and children (strings become text: data is never parsed as HTML).
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const wh = (mwh) => (mwh / 1000).toFixed(3);
const watts = (mw) => (mw / 1000).toFixed(1);
const sat = (msat) => (msat / 1000).toLocaleString("en", { maximumFractionDigits: 3 });
const time = (ms) => (ms ? new Date(ms).toLocaleString() : "");
const short = (hex) => (hex && hex.length > 20 ? hex.slice(0, 10) + "…" + hex.slice(-8) : hex || "");
const num = (text) => el("td", { class: "num" }, text);

function showError(message) {
  const error = document.getElementById("error");
  error.textContent = message;
  error.hidden = !message;
}

async function api(path, options) {
  const response = await fetch(path, {
    ...(options || {}),
    headers: { Authorization: "Bearer " + token, "Content-Type": "application/json" },
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(body.error || response.statusText);
    error.status = response.status;
    throw error;
  }
  return body;
}

function fillTable(id, rows, row) {
  const tbody = document.querySelector(`#${id} tbody`);
  tbody.replaceChildren(...rows.map(row));
}

function renderOutlets(views) {
  const box = document.getElementById("outlets");
  box.replaceChildren(
    ...views.map((v) => {
      const item = (label, value, cls) => [el("dt", {}, label), el("dd", { class: cls || "" }, value)];
      return el(
        "div",
        { class: `outlet state-${v.state}`, "data-outlet-id": v.outlet_id },
        el("h3", {}, `${v.outlet_id}: ${v.state}`),
        el(
          "dl",
          {},
          ...item("relay", v.relay_closed ? "closed" : "open", "relay"),
          ...item("power", `${watts(v.power_mw)} W`, "power"),
          ...item("session", short(v.session_id) || "none", "session mono"),
          ...item("energy", `${wh(v.energy_used_mwh)} Wh`, "energy"),
          ...item("quota left", `${wh(v.quota_remaining_mwh)} Wh`, "quota"),
          ...item("payments", v.payments, "payments"),
          ...item("price", `${v.price_msat_per_wh} msat/Wh`, "price"),
          ...(v.state === "lockout"
            ? item("lockout", `${v.lockout_remaining_secs} s: ${v.lockout_reason}`, "lockout")
            : [])
        )
      );
    })
  );
}

// An SVG line plot of one outlet's samples: power (W, left scale) and energy (Wh, right).
function plot(outletId, samples) {
  const W = 360, H = 140, P = 28;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", W);
  svg.setAttribute("height", H);
  const t0 = Date.now() - 3600 * 1000;
  const maxPower = Math.max(1, ...samples.map((s) => s.power_mw));
  const maxEnergy = Math.max(1, ...samples.map((s) => s.energy_used_mwh));
  const x = (t) => P + ((t - t0) / (3600 * 1000)) * (W - 2 * P);
  const line = (cls, value, max) => {
    const path = document.createElementNS(ns, "polyline");
    path.setAttribute("class", cls);
    path.setAttribute(
      "points",
      samples.map((s) => `${x(s.time_unix_ms).toFixed(1)},${(H - P - (value(s) / max) * (H - 2 * P)).toFixed(1)}`).join(" ")
    );
    svg.append(path);
  };
  const label = (x0, y0, text, anchor) => {
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", x0);
    t.setAttribute("y", y0);
    if (anchor) t.setAttribute("text-anchor", anchor);
    t.textContent = text;
    svg.append(t);
  };
  line("power", (s) => s.power_mw, maxPower);
  line("energy", (s) => s.energy_used_mwh, maxEnergy);
  label(2, P - 8, `${watts(maxPower)} W`);
  label(W - 2, P - 8, `${wh(maxEnergy)} Wh`, "end");
  label(P, H - 8, "−1 h");
  label(W - P, H - 8, "now", "end");
  return el("div", { class: "plot", "data-outlet-id": outletId }, el("strong", {}, outletId), svg);
}

// The latest outlet views from the event stream: the plots end on them.
let latestViews = [];

async function refreshPlots() {
  const history = await api("/api/v1/history");
  document.getElementById("plots").replaceChildren(
    ...Object.entries(history).map(([id, samples]) => {
      const now = latestViews.find((v) => v.outlet_id === id);
      return plot(id, now ? [...samples, now] : samples);
    })
  );
}

async function refreshTables() {
  const [outlets, sessions, payments, channels, devices, audit, anchors, anomalies] = await Promise.all([
    api("/api/v1/outlets"),
    api("/api/v1/sessions"),
    api("/api/v1/payments"),
    api("/api/v1/channels"),
    api("/api/v1/devices"),
    api("/api/v1/audit"),
    api("/api/v1/anchors"),
    api("/api/v1/anomalies"),
  ]);
  fillTable("anomalies", anomalies, (a) =>
    el("tr", { class: "anomaly" }, el("td", {}, time(a.at_unix_ms)), el("td", {}, a.outlet_id),
      el("td", { class: "mono", title: a.session_id || "" }, short(a.session_id)),
      el("td", { class: "mono", title: a.cable_key_hex }, short(a.cable_key_hex)), el("td", {}, a.rule),
      el("td", {}, a.action), el("td", { class: "mono" }, a.evidence))
  );
  fillTable("anchors", anchors.slice().reverse(), (a) =>
    el("tr", {}, el("td", {}, `1…${a.seq}`), el("td", { class: "mono", title: a.head_hash_hex }, short(a.head_hash_hex)),
      el("td", { class: "mono txid", title: a.txid }, a.txid), el("td", {}, time(a.at_unix_ms)),
      num(a.fee_sat), num(a.vsize))
  );
  fillTable("totals", outlets.totals, (t) =>
    el("tr", {}, el("td", {}, t.outlet_id), el("td", {}, t.scheme), num(t.sessions), num(t.lockouts),
      num(wh(t.energy_used_mwh)), num(sat(t.revenue_msat)), num(t.payments), num(t.payments_lost))
  );
  fillTable("sessions", sessions, (s) =>
    el("tr", { "data-session-id": s.id }, el("td", {}, time(s.started_at_unix_ms)), el("td", {}, s.outlet_id),
      el("td", {}, s.scheme), el("td", { class: "mono", title: s.id }, short(s.id)),
      el("td", { class: "mono", title: s.cable_key_hex }, short(s.cable_key_hex)),
      num(wh(s.energy_used_mwh)), num(sat(s.revenue_msat)), num(s.payments),
      el("td", {}, s.ended_at_unix_ms ? `${time(s.ended_at_unix_ms)}: ${s.end_reason || ""}` : "in progress"))
  );
  fillTable("payments", payments, (p) =>
    el("tr", {}, el("td", {}, time(p.at_unix_ms)), el("td", {}, p.outlet_id), el("td", {}, p.scheme),
      num(p.payment_id), el("td", { class: "mono txid", title: p.txid_or_payment_hash }, short(p.txid_or_payment_hash)),
      num(sat(p.amount_msat)), num(wh(p.quota_mwh)), el("td", { class: `status-${p.status}` }, p.status),
      num(p.confirmations == null ? "" : p.confirmations))
  );
  fillTable("channels", channels, (c) =>
    el("tr", {}, el("td", { class: "mono", title: c.channel_id }, short(c.channel_id)),
      el("td", { class: "mono", title: c.counterparty_node_id }, short(c.counterparty_node_id)),
      num(c.capacity_sat.toLocaleString("en")), num(sat(c.outbound_msat)), num(sat(c.inbound_msat)),
      el("td", {}, c.usable ? "usable" : "not usable"))
  );
  fillTable("devices", devices, (d) => {
    const action = el("td", {});
    if (scope === "admin" && d.status !== "revoked") {
      action.append(el("button", { class: "revoke", onclick: () => revoke(d.key_hex) }, "Revoke"));
    }
    return el("tr", { class: "device", "data-key": d.key_hex },
      el("td", { class: "mono", title: d.key_hex }, short(d.key_hex)),
      el("td", { class: `status status-${d.status}` }, d.status), num(d.sessions), num(wh(d.energy_used_mwh)),
      num(sat(d.revenue_msat)), num(d.refusals), num(d.lost_sat), el("td", {}, d.reason || ""),
      num(d.anomalies), action);
  });
  fillTable("audit", audit, (a) =>
    el("tr", {}, num(a.seq), el("td", {}, time(a.at_unix_ms)), el("td", {}, a.outlet_id),
      el("td", {}, a.event), el("td", {}, a.detail), el("td", { class: "mono", title: a.hash_hex }, short(a.hash_hex)))
  );
}

async function revoke(key) {
  const reason = window.prompt(`Revoke cable ${short(key)} for good? Its sessions end now. Reason:`, "revoked by the owner");
  if (!reason) return;
  try {
    await api(`/api/v1/devices/${key}/revoke`, { method: "POST", body: JSON.stringify({ reason }) });
    await refreshTables();
  } catch (e) {
    showError(`revoke failed: ${e.message}`);
  }
}

// Follow /api/v1/events: each `outlets` event replaces the outlet cards. Reconnects on loss.
async function follow() {
  const live = document.getElementById("live");
  for (;;) {
    try {
      const response = await fetch("/api/v1/events", { headers: { Authorization: "Bearer " + token } });
      if (!response.ok) throw new Error(response.statusText);
      live.className = "on";
      live.textContent = "● live";
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
          if (block.includes("event: outlets") && data) {
            latestViews = JSON.parse(data);
            renderOutlets(latestViews);
          }
        }
      }
    } catch (e) {
      // fall through to the retry
    }
    live.className = "";
    live.textContent = "○ reconnecting";
    await new Promise((r) => setTimeout(r, 2000));
  }
}

async function start() {
  const login = document.getElementById("login");
  try {
    scope = (await api("/api/v1/whoami")).scope;
  } catch (e) {
    showError(`refused: ${e.message}`);
    sessionStorage.removeItem(TOKEN_KEY);
    login.hidden = false;
    return;
  }
  showError("");
  login.hidden = true;
  document.getElementById("scope").textContent = `signed in: ${scope}`;
  document.getElementById("dashboard").hidden = false;
  const tick = () => refreshTables().catch((e) => showError(`cannot read the socket: ${e.message}`));
  await tick();
  setInterval(tick, 3000);
  refreshPlots().catch(() => {});
  setInterval(() => refreshPlots().catch(() => {}), 10000);
  follow();
}

document.addEventListener("DOMContentLoaded", () => {
  // A link may carry the token in its fragment (#token=...), which never reaches a server;
  // it is kept for this tab and taken out of the address bar.
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("token")) {
    sessionStorage.setItem(TOKEN_KEY, fragment.get("token"));
    history.replaceState(null, "", location.pathname);
  }
  token = sessionStorage.getItem(TOKEN_KEY);
  document.getElementById("login").addEventListener("submit", (event) => {
    event.preventDefault();
    token = document.getElementById("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    start();
  });
  if (token) start();
  else {
    showError("refused: no token");
    document.getElementById("login").hidden = false;
  }
});
