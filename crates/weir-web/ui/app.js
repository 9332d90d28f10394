// weir web UI: polls GET /api/v1/overview every second and fills in the server-rendered page.
// Data goes into the page only as text (textContent) or as numbers in attributes, never as HTML.
"use strict";

const POLL_MS = 1000;
let selected = null;
let lastReload = Date.now();

const $ = (sel) => document.querySelector(sel);

function num(n) {
  if (n === null || n === undefined) return "–";
  const a = Math.abs(n);
  if (a >= 1e9) return (n / 1e9).toFixed(2) + "G";
  if (a >= 1e6) return (n / 1e6).toFixed(2) + "M";
  if (a >= 1e4) return (n / 1e3).toFixed(1) + "k";
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}
function bytes(n) {
  if (n === null || n === undefined) return "–";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + u[i];
}
const pct = (f) => (f === null || f === undefined) ? "–" : Math.round(f * 100) + "%";
const ms = (v) => (v === null || v === undefined) ? "–" : (v >= 10000 ? (v / 1000).toFixed(1) + " s" : Math.round(v) + " ms");
function time(msEpoch) {
  if (msEpoch === null || msEpoch === undefined) return "–";
  return new Date(msEpoch).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}
function secs(s) {
  s = Math.floor(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return (h ? h + "h " : "") + (h || m ? m + "m " : "") + r + "s";
}

// Flink's colouring: blue when idle, towards red when busy, grey-black when backpressured.
function colour(r) {
  if (r.backpressured > 0.1 && r.backpressured >= r.busy) {
    return "hsl(0, 0%, " + Math.round(85 - 50 * r.backpressured) + "%)";
  }
  const b = Math.min(1, Math.max(0, r.busy));
  return "hsl(" + Math.round(210 * (1 - b)) + ", 72%, " + Math.round(88 - 26 * b) + "%)";
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}
function fill(tbody, rows, render) {
  const body = typeof tbody === "string" ? $(tbody) : tbody;
  const frag = document.createDocumentFragment();
  for (const row of rows) {
    const tr = document.createElement("tr");
    render(tr, row);
    frag.appendChild(tr);
  }
  body.replaceChildren(frag);
}

function header(o) {
  const j = o.job;
  const st = $("#job-state");
  st.textContent = j.state;
  st.className = "state " + j.state;
  $("#job-summary").textContent = "up " + secs(j.uptime_s) + " · " + num(j.rows_read) + " rows read · " +
    num(j.rows_written) + " written" + (j.dead_letters ? " · " + num(j.dead_letters) + " dead letters" : "") +
    (j.attempts > 1 ? " · attempt " + j.attempts : "") + (j.failure ? " · " + j.failure : "");
  $("#updated").textContent = "updated " + new Date().toLocaleTimeString();
  const why = $("#why");
  if (o.why.current.length) {
    why.hidden = false;
    why.textContent = "why slow: " + o.why.current.map((r) => r.message).join("; ");
  } else {
    why.hidden = true;
  }
}

function graph(o) {
  const drawn = new Set();
  for (const op of o.operators) {
    const g = document.querySelector('g.node[data-step="' + CSS.escape(op.name) + '"]');
    if (!g) continue;
    drawn.add(op.name);
    const r = op.rates;
    g.querySelector("rect").setAttribute("fill", colour(r));
    g.querySelector("rect").style.fill = colour(r);
    const rate = op.role === "sink" ? r.rows_in_per_s : r.rows_out_per_s;
    g.querySelector("text.rate").textContent = num(rate) + " rows/s · " + num(op.role === "sink" ? op.counters.rows_in : op.counters.rows_out) + " rows";
    g.querySelector("text.load").textContent = "busy " + pct(r.busy) + " · bp " + pct(r.backpressured) +
      (op.watermark_ms !== null ? " · wm " + time(op.watermark_ms).slice(11) : "");
  }
  // The graph is drawn by the server: reload once the job's steps are known (after its start).
  if (o.operators.length && o.operators.some((op) => !drawn.has(op.name)) && Date.now() - lastReload > 5000) {
    lastReload = Date.now();
    location.reload();
  }
  fill("#steps tbody", o.operators, (tr, op) => {
    tr.dataset.step = op.name;
    cell(tr, op.name);
    cell(tr, op.role);
    cell(tr, String(op.parallelism));
    cell(tr, op.role === "source" ? "–" : num(op.counters.rows_in), "rows-in");
    cell(tr, op.role === "sink" ? "–" : num(op.counters.rows_out), "rows-out");
    cell(tr, num(op.role === "sink" ? op.rates.rows_in_per_s : op.rates.rows_out_per_s));
    cell(tr, pct(op.rates.busy));
    cell(tr, pct(op.rates.backpressured));
    cell(tr, pct(op.rates.idle));
    cell(tr, (op.watermark_ms === null ? "–" : time(op.watermark_ms)) +
      (op.watermark_idle_subtasks ? " (" + op.watermark_idle_subtasks + "/" + op.parallelism + " idle)" : ""), "watermark");
    cell(tr, pct(op.queue_fill));
    cell(tr, num(op.counters.errors));
    cell(tr, num(op.counters.dead_letters));
    tr.addEventListener("click", () => select(op.name));
  });
}

async function detail() {
  if (!selected) return;
  const res = await fetch("/api/v1/operators/" + encodeURIComponent(selected), { credentials: "same-origin" });
  if (!res.ok) return;
  const d = await res.json();
  $("#detail").hidden = false;
  $("#detail-name").textContent = d.name + " (" + d.role + ", parallelism " + d.parallelism + ")";
  $("#detail-description").textContent = d.description;
  fill("#subtasks tbody", d.subtasks, (tr, s) => {
    cell(tr, String(s.subtask));
    cell(tr, num(s.counters.rows_in));
    cell(tr, num(s.counters.rows_out));
    cell(tr, num(d.role === "sink" ? s.rates.rows_in_per_s : s.rates.rows_out_per_s));
    cell(tr, pct(s.rates.busy));
    cell(tr, pct(s.rates.backpressured));
    cell(tr, pct(s.rates.idle));
    cell(tr, (s.watermark_ms === null ? "–" : time(s.watermark_ms)) + (s.watermark_idle ? " (idle)" : ""));
    cell(tr, s.input_queues.length ? s.input_queues.map((q) => pct(q.queued_bytes / Math.max(1, q.capacity_bytes))).join(" ") : "–");
  });
}

function select(name) {
  selected = name;
  for (const g of document.querySelectorAll("g.node")) g.classList.toggle("selected", g.dataset.step === name);
  detail();
}

function checkpoints(o) {
  const c = o.checkpoints;
  const t = c.totals;
  $("#checkpoint-totals").textContent = !c.enabled ? "this job takes no checkpoints" :
    t.completed + " completed, " + t.failed + " failed, " + t.in_progress + " in progress" +
    (t.last_completed !== null ? " · newest complete " + t.last_completed + " (" + bytes(t.last_completed_size_bytes) + ")" : "");
  fill("#checkpoints tbody", c.history, (tr, r) => {
    tr.className = r.status;
    cell(tr, String(r.id));
    cell(tr, r.status.replace("_", " ") + (r.is_final ? " (final)" : "") + (r.requested ? " (requested)" : ""));
    cell(tr, r.kind);
    cell(tr, time(r.triggered_at_ms));
    cell(tr, ms(r.duration_ms));
    cell(tr, bytes(r.size_bytes));
    const acks = cell(tr, r.acks.length + "/" + r.expected_tasks);
    acks.title = r.acks.map((a) => a.node + "[" + a.subtask + "] " + a.after_ms + " ms, " + bytes(a.state_bytes)).join("\n");
    cell(tr, r.failure || "", "text");
  });
  chart(c.history.slice(0, 40).reverse());
}

// Durations of the newest checkpoints as bars, oldest left.
function chart(rows) {
  const svg = $("#checkpoint-chart");
  const W = 720, H = 160, L = 44, B = 20, T = 8;
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  const max = Math.max(1, ...rows.map((r) => r.duration_ms || 0));
  const bw = rows.length ? Math.min(24, (W - L - 8) / rows.length) : 0;
  const label = (x, y, text, anchor) => {
    const el = document.createElementNS(ns, "text");
    el.setAttribute("x", x); el.setAttribute("y", y);
    if (anchor) el.setAttribute("text-anchor", anchor);
    el.textContent = text;
    svg.appendChild(el);
  };
  label(L - 4, T + 8, ms(max), "end");
  label(L - 4, H - B, "0", "end");
  rows.forEach((r, i) => {
    const h = ((r.duration_ms || 0) / max) * (H - B - T);
    const rect = document.createElementNS(ns, "rect");
    rect.setAttribute("x", L + i * bw + 1);
    rect.setAttribute("y", H - B - h);
    rect.setAttribute("width", Math.max(1, bw - 2));
    rect.setAttribute("height", Math.max(1, h));
    rect.setAttribute("class", r.status);
    const title = document.createElementNS(ns, "title");
    title.textContent = "checkpoint " + r.id + ": " + ms(r.duration_ms) + ", " + r.status;
    rect.appendChild(title);
    svg.appendChild(rect);
    if (rows.length <= 20 || i % 5 === 0) label(L + i * bw + bw / 2, H - 6, String(r.id), "middle");
  });
}

function deadLetters(o) {
  const d = o.dead_letters;
  fill("#dead-letter-counts tbody", d.counts, (tr, c) => {
    cell(tr, c.operator); cell(tr, c.reason, "text"); cell(tr, num(c.count));
  });
  fill("#dead-letter-samples tbody", d.samples, (tr, s) => {
    cell(tr, time(s.at_ms)); cell(tr, s.operator + "[" + s.subtask + "]");
    cell(tr, s.input || "–", "text"); cell(tr, s.position || "–");
    cell(tr, s.error, "text"); cell(tr, s.raw_preview || "", "text");
  });
}

function services(o) {
  fill("#services tbody", o.services, (tr, s) => {
    cell(tr, s.name); cell(tr, String(s.ready)); cell(tr, String(s.loading)); cell(tr, String(s.draining));
    cell(tr, String(s.target)); cell(tr, String(s.queued)); cell(tr, String(s.in_flight));
    cell(tr, pct(s.utilisation)); cell(tr, num(s.answered)); cell(tr, ms(s.latency_p50_ms));
    cell(tr, ms(s.latency_p99_ms)); cell(tr, num(s.retries)); cell(tr, num(s.deaths)); cell(tr, num(s.failed));
  });
  const inst = [];
  for (const s of o.services) for (const i of (s.instances || [])) inst.push([s.name, i]);
  fill("#instances tbody", inst, (tr, [name, i]) => {
    cell(tr, name); cell(tr, String(i.id)); cell(tr, i.phase); cell(tr, String(i.outstanding_requests));
    cell(tr, String(i.outstanding_rows)); cell(tr, num(i.answered)); cell(tr, ms(i.running_ms));
  });
}

async function poll() {
  try {
    const res = await fetch("/api/v1/overview", { credentials: "same-origin" });
    if (res.ok) {
      const o = await res.json();
      header(o); graph(o); checkpoints(o); deadLetters(o); services(o);
      await detail();
    } else {
      $("#updated").textContent = "API answered " + res.status;
    }
  } catch (e) {
    $("#updated").textContent = "job not reachable (ended?)";
  }
  setTimeout(poll, POLL_MS);
}

function tabs() {
  for (const b of document.querySelectorAll("button.tab")) {
    b.addEventListener("click", () => {
      for (const o of document.querySelectorAll("button.tab")) o.classList.toggle("active", o === b);
      for (const p of document.querySelectorAll(".panel")) p.classList.toggle("active", p.id === b.dataset.tab);
    });
  }
  for (const g of document.querySelectorAll("g.node")) g.addEventListener("click", () => select(g.dataset.step));
  $("#detail-close").addEventListener("click", () => { selected = null; $("#detail").hidden = true; select(null); });
}

document.addEventListener("DOMContentLoaded", () => { tabs(); poll(); });
