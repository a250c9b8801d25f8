// VeriSeg audit page: anchored batches, their frames, and anchor-verify per frame.
"use strict";

function td(text, cls) {
  const c = document.createElement("td");
  c.textContent = text === null || text === undefined ? "—" : String(text);
  if (cls) c.className = cls;
  return c;
}
function short(hex, n) { return hex ? String(hex).slice(0, n) + "…" : "—"; }
function q(params) { return new URLSearchParams(params).toString(); }

async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store" });
  const body = await r.json().catch(() => ({ error: "HTTP " + r.status }));
  if (!r.ok) throw new Error(body.error || "HTTP " + r.status);
  return body;
}

function showVerdict(cell, v) {
  cell.replaceChildren();
  const head = document.createElement("div");
  head.className = "verdict " + (v.ok ? "ok" : "bad");
  head.textContent = v.ok ? "verified" : (v.failed === "error" ? "could not verify" : "FAILED: " + v.failed);
  cell.appendChild(head);
  if (v.message) {
    const m = document.createElement("div");
    m.className = "msg";
    m.textContent = v.message;
    cell.appendChild(m);
  }
  if (v.line) {
    const m = document.createElement("div");
    m.className = "muted line";
    m.textContent = v.line;
    cell.appendChild(m);
  }
  if (v.picture) {   // re-score: the kept frame, the pixels the model does not give in red
    const img = document.createElement("img");
    img.className = "disagreement";
    img.alt = "pixels whose anchored class the re-run model does not give (red)";
    img.src = v.picture;
    cell.appendChild(img);
  }
  const ul = document.createElement("ul");
  ul.className = "checks";
  for (const c of v.checks) {
    const li = document.createElement("li");
    li.className = c.state.replace(" ", "-");
    li.dataset.check = c.check;
    li.textContent = c.label + " [" + c.check + "]";
    ul.appendChild(li);
  }
  cell.appendChild(ul);
  cell.dataset.verdict = v.ok ? "ok" : "failed";
  cell.dataset.failed = v.failed || "";
}

async function verify(batch, seq, cell, button, action = "verify") {
  button.disabled = true;
  cell.dataset.verdict = "running";
  try {
    showVerdict(cell, await getJSON("/api/" + action + "?" + q({ batch, seq })));
  } catch (e) {
    cell.textContent = "error: " + e.message;
    cell.dataset.verdict = "error";
  }
  button.disabled = false;
}

async function openBatch(row, b) {
  document.querySelectorAll("#batches tr.sel").forEach((r) => r.classList.remove("sel"));
  row.classList.add("sel");
  const data = await getJSON("/api/frames?" + q({ batch: b.id }));
  document.getElementById("batch-name").textContent =
    b.stream + " seq " + b.first_seq + "–" + b.last_seq + " (" + b.file + ")";
  const body = document.getElementById("frames");
  body.replaceChildren(...data.frames.map((f) => {
    const tr = document.createElement("tr");
    tr.dataset.seq = f.seq;
    tr.appendChild(td(f.seq));
    const mc = document.createElement("td");
    if (f.line && f.line.mask) {
      const img = document.createElement("img");
      img.loading = "lazy";
      img.alt = "mask of seq " + f.seq;
      img.src = "/api/thumb?" + q({ stream: b.stream, seq: f.seq });
      mc.appendChild(img);
    } else {
      mc.textContent = "—";
    }
    tr.appendChild(mc);
    tr.appendChild(td(f.line ? JSON.stringify(f.line) : "(no results line)", "line"));
    const vc = document.createElement("td");
    const out = document.createElement("div");
    out.className = "result";
    const button = document.createElement("button");
    button.textContent = "verify";
    button.className = "verify";
    button.addEventListener("click", () => verify(b.id, f.seq, out, button));
    const again = document.createElement("button");
    again.textContent = "re-score";
    again.className = "rescore";
    again.title = "re-run the model on the kept frame and compare with the anchored mask";
    again.addEventListener("click", () => verify(b.id, f.seq, out, again, "rescore"));
    vc.append(button, again, out);
    tr.appendChild(vc);
    return tr;
  }));
  const more = document.getElementById("more");
  more.hidden = !data.more;
  more.textContent = data.more ? data.more + " more frames not listed" : "";
  document.getElementById("frames-card").hidden = false;
}

async function load() {
  const where = document.getElementById("where");
  try {
    const data = await getJSON("/api/batches");
    where.textContent = data.out + " · chain " + (data.endpoint || "?");
    where.className = "pill ok";
    const body = document.querySelector("#batches tbody");
    body.replaceChildren(...data.batches.map((b) => {
      const tr = document.createElement("tr");
      tr.dataset.batch = b.id;
      tr.append(td(b.stream), td(b.first_seq + "–" + b.last_seq + " (" + b.frames + ")"),
                td(short(b.model_key, 16), "mono"), td(short(b.root, 16), "mono"),
                td(b.block === null ? "not on chain" : b.block), td(b.tx || "—", "mono"));
      const fc = document.createElement("td");
      const a = document.createElement("a");
      a.href = "/files/" + b.file.split("/").map(encodeURIComponent).join("/");
      a.textContent = "json";
      a.addEventListener("click", (e) => e.stopPropagation());
      fc.appendChild(a);
      tr.appendChild(fc);
      tr.addEventListener("click", () => openBatch(tr, b));
      return tr;
    }));
    if (!data.batches.length) {
      const tr = document.createElement("tr");
      tr.appendChild(td("no anchor batches in this folder"));
      body.appendChild(tr);
    }
  } catch (e) {
    where.textContent = "error: " + e.message;
    where.className = "pill bad";
  }
}

load();
