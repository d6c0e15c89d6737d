// meshd dashboard: one module, no framework, no network beyond this node's API.
//
// The token comes from the URL fragment (#token=..., printed by `mesh
// dashboard`; a fragment never reaches the server), is kept in
// sessionStorage and sent as a bearer token on every request, the live
// stream included (fetch() with a streaming body, not EventSource, so the
// token stays in a header). Everything the node says is written with
// textContent, never parsed as HTML.

const TOKEN_KEY = "meshd.dashboard.token";
const RETRY_MS = 2000;
const LOG_TAIL = 200;

const $ = (sel) => document.querySelector(sel);
let snapshot = null;
let selected = null;
let logsAbort = null;

function takeToken() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function headers() {
  return { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}` };
}

class Unauthorized extends Error {}

async function call(path, options = {}) {
  const resp = await fetch(path, { ...options, headers: headers(), cache: "no-store" });
  if (resp.status === 401) throw new Unauthorized("token refused");
  return resp;
}

function showLogin(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  $("#main").hidden = true;
  $("#login").hidden = false;
  setLive("signed-out", message || "sign in with the node's API token");
}

function setLive(state, text) {
  const el = $("#live");
  el.dataset.state = state;
  el.textContent = text;
}

// ------------------------------------------------------------------ helpers

function el(tag, text, attrs = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function short(id) {
  return id ? String(id).slice(0, 12) : "—";
}

function num(x, digits = 4) {
  return typeof x === "number" ? Number(x.toPrecision(digits)).toString() : "—";
}

function time(ms) {
  return ms ? new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "—";
}

function row(cells, attrs = {}) {
  const tr = el("tr", undefined, attrs);
  for (const c of cells) {
    if (c instanceof Node) {
      const td = el("td");
      td.append(c);
      tr.append(td);
    } else if (c && typeof c === "object") {
      tr.append(el("td", c.text, c.attrs || {}));
    } else {
      tr.append(el("td", c));
    }
  }
  return tr;
}

function fill(tbody, rows, empty, span) {
  tbody.replaceChildren(...(rows.length ? rows : [row([{ text: empty, attrs: { colspan: span } }])]));
}

function facts(dl, pairs) {
  dl.replaceChildren();
  for (const [k, v] of pairs) dl.append(el("dt", k), el("dd", v));
}

// ------------------------------------------------------------------ render

function render(snap) {
  snapshot = snap;
  const n = snap.node;
  $("#node-line").textContent =
    `${short(n.peer_id)} · ${n.role} · ${n.warm ? "warm" : "cold"} · ${n.peers} peers`;
  const hw = n.hardware || {};
  facts($("#node-facts"), [
    ["peer id", n.peer_id],
    ["executor", `${n.executor.name}${n.executor.sandboxed ? "" : " (not sandboxed)"}`],
    ["state", n.warm ? "warm" : `cold: ${n.cold_reason}`],
    ["hardware", `${hw.cores ?? "?"} cores, ${hw.ram_gb ?? "?"} GB RAM, ` +
      `${(hw.gpus || []).map((g) => g.model).join(", ") || "no GPU"}`],
    ["load", `${n.load.running} running, ${n.load.queued} queued of ${n.load.capacity}`],
    ["reachability", `${n.reachability}${(n.relays || []).length ? ` via ${n.relays.length} relay(s)` : ""}`],
    ["listening", (n.listen_addrs || []).join(" ")],
    ["why not picked", (n.standing.why_not_picked || []).join("; ") || "—"],
  ]);
  fill($("#peers tbody"), snap.peers.map((p) => row([
    { text: short(p.peer_id), attrs: { class: "id", title: p.peer_id } },
    p.role, p.tier, p.sandbox,
    { text: p.cores, attrs: { class: "num" } },
    (p.gpus || []).map((g) => `${g.model} (${g.memory_mb} MB)`).join(", ") || "—",
    `${p.running} running, ${p.queued} queued`,
    { text: num(p.score_gflops), attrs: { class: "num" } },
    { text: num(p.reputation, 3), attrs: { class: "num" } },
    p.reached,
    p.warm ? "warm" : `cold: ${p.cold_reason}`,
  ], { "data-peer-id": p.peer_id })), "no peers seen yet", 11);
  renderJobs(snap.jobs);
  fill($("#contributors tbody"), snap.contributors.map((c, i) => row([
    { text: i + 1, attrs: { class: "num" } },
    { text: short(c.peer_id), attrs: { class: "id", title: c.peer_id } },
    { text: num(c.credits, 6), attrs: { class: "num credits" } },
    { text: c.jobs, attrs: { class: "num jobs" } },
  ], { "data-peer-id": c.peer_id })), "no verified work yet", 4);
  fill($("#balances tbody"), snap.balances.map((b) => row([
    { text: short(b.peer_id) + (b.peer_id === n.peer_id ? " (this node)" : ""),
      attrs: { class: "id", title: b.peer_id } },
    { text: num(b.balance, 6), attrs: { class: "num" } },
    { text: num(b.earned, 6), attrs: { class: "num" } },
    { text: num(b.spent, 6), attrs: { class: "num" } },
  ])), "no receipts yet", 4);
  const log = snap.log;
  const status = $("#log-status");
  status.dataset.state = log.state;
  status.textContent = log.state === "broken"
    ? `BROKEN at seq ${log.first_bad_seq}: ${log.reason}`
    : `${log.state}: hash links and signatures checked through seq ${log.verified_seq} of ${log.head_seq}`;
}

function renderJobs(jobs) {
  fill($("#jobs tbody"), jobs.map((j) => {
    const pick = el("button", short(j.job_id), { type: "button", class: "link", title: j.job_id });
    pick.addEventListener("click", () => select(j.job_id));
    const verdict = j.verification ? j.verification.verdict : "—";
    return row([
      pick,
      { text: j.state, attrs: { class: "state", "data-state": j.state } },
      j.spec.image,
      { text: short(j.worker), attrs: { class: "id", title: j.worker || "" } },
      { text: num(j.cost.actual ?? j.cost.estimate), attrs: { class: "num" } },
      verdict,
      j.reason || "",
    ], { "data-job-id": j.job_id, "aria-selected": String(j.job_id === selected) });
  }), "no jobs yet: submit one with `mesh submit`", 7);
  const job = jobs.find((j) => j.job_id === selected);
  $("#job-detail").hidden = !job;
  if (job) renderDetail(job);
}

function renderDetail(j) {
  $("#job-title").textContent = `Job ${j.job_id} — ${j.state}`;
  $("#cancel-job").disabled = ["succeeded", "failed", "cancelled"].includes(j.state);
  $("#retry-job").disabled = !["failed", "cancelled"].includes(j.state);
  $("#job-history").replaceChildren(...j.history.map((h) =>
    el("li", `${time(h.ts_ms)} ${h.state}${h.detail ? ` — ${h.detail}` : ""}`, { "data-state": h.state })));
  const bids = j.bids || [];
  $("#job-bids").replaceChildren(...(bids.length ? bids.map((b) =>
    el("li", `${short(b.peer_id)}: price ${num(b.price)}, finish in ${num(b.est_finish_s, 3)} s, ` +
      `score ${num(b.score)}, queue ${b.queue}`)) : [el("li", "no bids")]));
  const declines = j.declines || [];
  $("#job-declines").replaceChildren(...(declines.length
    ? declines.map((d) => el("li", `${short(d.peer_id)}: ${d.reason}`))
    : [el("li", j.state === "queued" ? (j.reason || "no answers yet") : "—")]));
  const v = j.verification;
  facts($("#job-verdict"), v ? [
    ["verdict", v.verdict],
    ["replicas", `${v.replicas} (needed ${v.needed})`],
    ["agreeing", (v.valid || []).map(short).join(", ") || "—"],
    ["disagreeing", (v.invalid || []).map(short).join(", ") || "—"],
  ] : [["verdict", "not settled"]]);
}

// ------------------------------------------------------------------ jobs

function select(jobId) {
  if (selected === jobId) return;
  selected = jobId;
  $("#action-result").textContent = "";
  if (snapshot) renderJobs(snapshot.jobs);
  followLogs(jobId);
}

async function followLogs(jobId) {
  if (logsAbort) logsAbort.abort();
  const abort = (logsAbort = new AbortController());
  const pre = $("#job-logs");
  pre.replaceChildren();
  const q = `?follow=1&tail=${LOG_TAIL}`;
  try {
    const resp = await call(`/v1/jobs/${encodeURIComponent(jobId)}/logs${q}`, { signal: abort.signal });
    if (!resp.ok) {
      pre.textContent = `(logs unavailable: HTTP ${resp.status})`;
      return;
    }
    await readLines(resp, abort.signal, (text) => {
      const line = JSON.parse(text);
      if (line.end) {
        if (!pre.childNodes.length) pre.append(el("span", `(no output; job ${line.state})\n`));
        return;
      }
      const prefix = line.replica ? `[r${line.replica}] ` : "";
      pre.append(el("span", `${prefix}${line.data}\n`, line.stream === "stderr" ? { class: "stderr" } : {}));
      pre.scrollTop = pre.scrollHeight;
    }, "\n");
  } catch (err) {
    if (err instanceof Unauthorized) showLogin("token refused");
    else if (err.name !== "AbortError") pre.append(el("span", `(log stream ended: ${err.message})\n`));
  }
}

async function act(verb) {
  if (!selected) return;
  const out = $("#action-result");
  try {
    const resp = await call(`/v1/jobs/${encodeURIComponent(selected)}/${verb}`, { method: "POST" });
    const body = await resp.json();
    out.textContent = resp.ok ? `${verb} requested` : `${verb} refused: ${body.error.message}`;
    if (resp.ok && verb === "retry") followLogs(selected);
  } catch (err) {
    if (err instanceof Unauthorized) showLogin("token refused");
    else out.textContent = `${verb} failed: ${err.message}`;
  }
}

// ------------------------------------------------------------------ stream

async function readLines(resp, signal, onItem, separator) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  signal.addEventListener("abort", () => reader.cancel().catch(() => {}));
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let at;
    while ((at = buf.indexOf(separator)) >= 0) {
      const item = buf.slice(0, at);
      buf = buf.slice(at + separator.length);
      if (item.trim()) onItem(item);
    }
  }
}

function onEvent(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
  }
  const doc = JSON.parse(data.join("\n"));
  if (event === "snapshot") {
    render(doc);
    setLive("live", `live · updated ${new Date().toLocaleTimeString()}`);
  } else if (event === "error") {
    throw new Error(doc.error.message);
  }
}

async function live() {
  for (;;) {
    try {
      const resp = await call("/v1/dashboard/stream");
      if (!resp.ok) {
        const body = await resp.json().catch(() => null);
        throw new Error(body ? body.error.message : `HTTP ${resp.status}`);
      }
      $("#login").hidden = true;
      $("#main").hidden = false;
      await readLines(resp, new AbortController().signal, onEvent, "\n\n");
      setLive("lost", "stream ended; reconnecting…");
    } catch (err) {
      if (err instanceof Unauthorized) {
        showLogin("the token was refused: open the URL `mesh dashboard` prints");
        return;
      }
      setLive("lost", `disconnected (${err.message}); retrying…`);
    }
    await new Promise((r) => setTimeout(r, RETRY_MS));
  }
}

function start() {
  $("#cancel-job").addEventListener("click", () => act("cancel"));
  $("#retry-job").addEventListener("click", () => act("retry"));
  $("#login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#token-input").value.trim());
    $("#token-input").value = "";
    live();
  });
  if (takeToken()) live();
  else showLogin();
}

start();
