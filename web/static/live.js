// VeriSeg live view: polls /api/state twice a second and each stream's picture a few times
// a second (the server encodes at most 5 JPEGs a second per stream, only while a page asks).
"use strict";

const STATE_MS = 500;
const PICTURE_MS = 250;
const views = new Map();   // stream id -> {root, img, canvas, ...}

function el(root, cls) { return root.querySelector("." + cls); }
function short(hex, n) { return hex ? String(hex).slice(0, n || 16) + "…" : "—"; }
function fmt(v, unit) { return v === null || v === undefined ? "—" : v + (unit || ""); }

function pictureLoop(v) {
  // the next picture is asked for only when the last one arrived: never a queue of requests
  const next = () => setTimeout(() => {
    if (document.hidden) { next(); return; }
    v.n += 1;
    v.img.src = "/api/frame.jpg?stream=" + encodeURIComponent(v.id) + "&n=" + v.n;
  }, PICTURE_MS);
  v.img.addEventListener("load", () => { v.loaded += 1; v.img.dataset.loaded = String(v.loaded); next(); });
  v.img.addEventListener("error", next);
  next();
}

function viewFor(id) {
  let v = views.get(id);
  if (v) return v;
  const tpl = document.getElementById("stream-tpl");
  const root = tpl.content.firstElementChild.cloneNode(true);
  root.dataset.stream = id;
  el(root, "sid").textContent = id;
  document.getElementById("streams").appendChild(root);
  v = { id, root, img: el(root, "overlay"), canvas: el(root, "chart"), n: 0, loaded: 0 };
  views.set(id, v);
  pictureLoop(v);
  return v;
}

function drawChart(canvas, series, windowS) {
  // hand-drawn: FPS on the left scale, latency (ms) on the right one, the last minute
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, L = 34, R = 60, T = 8, B = 16;
  ctx.clearRect(0, 0, W, H);
  ctx.font = "10px sans-serif";
  ctx.strokeStyle = "#e3e6ea";
  ctx.strokeRect(L, T, W - L - R, H - T - B);
  if (!series.length) return;
  const tEnd = series[series.length - 1][0], tStart = tEnd - windowS;
  const maxOf = (i) => Math.max(1, ...series.map((p) => p[i] || 0));
  const fpsMax = maxOf(1) * 1.15, msMax = maxOf(3) * 1.15;
  const x = (t) => L + (W - L - R) * (t - tStart) / windowS;
  const y = (v, max) => H - B - (H - T - B) * v / max;
  const line = (i, max, colour) => {
    ctx.strokeStyle = colour; ctx.lineWidth = 1.5; ctx.beginPath();
    let started = false;
    for (const p of series) {
      if (p[i] === null || p[i] === undefined) { started = false; continue; }
      if (started) ctx.lineTo(x(p[0]), y(p[i], max)); else ctx.moveTo(x(p[0]), y(p[i], max));
      started = true;
    }
    ctx.stroke();
  };
  line(1, fpsMax, "#1a73e8");
  line(2, msMax, "#188038");
  line(3, msMax, "#e37400");
  ctx.fillStyle = "#6b7280";
  ctx.fillText(fpsMax.toFixed(1), 2, T + 8);
  ctx.fillText("0", L - 10, H - B);
  ctx.fillText(msMax.toFixed(0) + " ms", W - R + 3, T + 8);
  ctx.fillText("-" + windowS + " s", L, H - 3);
  ctx.fillText("now", W - R - 18, H - 3);
}

function showStream(s, windowS) {
  const v = viewFor(s.id);
  const r = v.root;
  el(r, "scored").textContent = s.scored;
  el(r, "fps").textContent = s.fps.toFixed(2);
  el(r, "lat").textContent = fmt(s.p50_ms, " ms") + " / " + fmt(s.p99_ms, " ms");
  const drops = Object.entries(s.dropped || {}).map(([k, n]) => k + " " + n);
  el(r, "dropped").textContent = drops.length ? drops.join(", ") : "0";
  el(r, "bad").textContent = s.bad;
  el(r, "seq").textContent = s.seq === null ? "no frame yet" : "latest seq " + s.seq;
  const m = s.model || {};
  el(r, "mname").textContent = (m.name || "—") + (m.deployment && m.deployment !== m.name ? " (" + m.deployment + ")" : "");
  el(r, "mkey").textContent = m.key || "—";
  el(r, "mversion").textContent = m.version === null || m.version === undefined ? "—" : m.version;
  const st = el(r, "mstatus");
  st.textContent = m.status + (m.reason ? ": " + m.reason : "");
  st.className = "mstatus status-" + m.status;
  drawChart(v.canvas, s.series || [], windowS);
}

function showAnchors(anchors) {
  const body = document.querySelector("#anchors tbody");
  body.replaceChildren(...anchors.map((a) => {
    const tr = document.createElement("tr");
    const cells = [a.stream, a.first_seq + "–" + a.last_seq, short(a.model_key, 12), short(a.root, 16),
                   a.tx || (a.sent ? "(already anchored)" : "not sent yet")];
    cells.forEach((c, i) => {
      const td = document.createElement("td");
      td.textContent = c;
      if (i >= 2) td.className = "mono";
      tr.appendChild(td);
    });
    return tr;
  }));
}

function show(state) {
  const banner = document.getElementById("banner");
  banner.replaceChildren(...state.banner.map((t) => { const d = document.createElement("div"); d.textContent = t; return d; }));
  banner.hidden = state.banner.length === 0;
  const chain = document.getElementById("chain");
  chain.textContent = "chain " + state.chain.kind + ": " + (state.chain.reachable ? "reachable" : "UNREACHABLE");
  chain.className = "pill " + (state.chain.reachable ? "ok" : "bad");
  state.streams.forEach((s) => showStream(s, state.window_s));
  showAnchors(state.anchors || []);
  document.body.dataset.updated = String(Date.now());
}

async function poll() {
  try {
    const r = await fetch("/api/state", { cache: "no-store" });
    if (r.ok) show(await r.json());
    else document.getElementById("chain").textContent = "view: HTTP " + r.status;
  } catch (e) {
    const chain = document.getElementById("chain");
    chain.textContent = "flow not reachable (stopped?)";
    chain.className = "pill bad";
  }
  setTimeout(poll, STATE_MS);
}

poll();
