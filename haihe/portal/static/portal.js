/* Haihe portal: small progressive enhancements. Every page works without it; no network beyond this origin
   (and S3 presigned URLs for uploads). Messages come from data-* attributes, which the catalogues fill. */
"use strict";

function readJSON(id) {
  const el = document.getElementById(id);
  return el ? JSON.parse(el.textContent) : null;
}

function csrfToken() {
  const m = document.cookie.match(/(?:^|; )haihe_csrf=([^;]+)/);
  return m ? decodeURIComponent(m[1]) : "";
}

function fmt(template, values) {
  return template.replace(/\{(\w+)\}/g, (_, k) => (k in values ? String(values[k]) : ""));
}

/* -- live logs over server-sent events, follow/pause ------------------------------------------------------------ */
function initLogs() {
  const pre = document.getElementById("logs");
  if (!pre || !window.EventSource) return;
  const status = document.getElementById("log-status");
  const toggle = document.getElementById("log-toggle");
  const notice = document.getElementById("log-notice");
  const badge = document.getElementById("job-state");
  let follow = true;
  let paused = [];
  const setStatus = (key) => { status.textContent = status.dataset[key]; status.dataset.state = key; };
  const append = (text) => {
    pre.appendChild(document.createTextNode(text));
    if (follow) pre.scrollTop = pre.scrollHeight;
  };
  toggle.addEventListener("click", () => {
    follow = !follow;
    toggle.setAttribute("aria-pressed", String(!follow));
    toggle.textContent = follow ? toggle.dataset.pause : toggle.dataset.follow;
    if (follow) { paused.forEach(append); paused = []; setStatus(es ? "live" : "ended"); }
    else setStatus("paused");
  });
  let es = new EventSource(pre.dataset.stream);
  es.addEventListener("open", () => { if (follow) setStatus("live"); });
  es.addEventListener("log", (ev) => {
    const text = JSON.parse(ev.data).text;
    if (follow) append(text); else paused.push(text);
  });
  es.addEventListener("state", (ev) => {
    const d = JSON.parse(ev.data);
    const span = badge && badge.querySelector(".badge");
    if (span && span.dataset.state !== d.state) {
      span.dataset.state = d.state;
      span.className = "badge badge-" + d.tone;
      span.textContent = (window.HAIHE_STATES && window.HAIHE_STATES[d.state]) || d.state;
    }
  });
  es.addEventListener("job", (ev) => updateJob(JSON.parse(ev.data)));
  es.addEventListener("metrics", (ev) => drawCharts(JSON.parse(ev.data).series));
  es.addEventListener("notice", (ev) => { notice.hidden = false; notice.textContent = JSON.parse(ev.data).message; });
  es.addEventListener("end", () => { es.close(); es = null; setStatus("ended"); paused.forEach(append); paused = []; });
}

/* -- metric curves on <canvas> ---------------------------------------------------------------------------------- */
function drawSeries(canvas, points) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = w * dpr; canvas.height = h * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  const pad = { l: 52, r: 12, t: 10, b: 26 };
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const sx = (x) => pad.l + ((x - x0) / (x1 - x0 || 1)) * (w - pad.l - pad.r);
  const sy = (y) => h - pad.b - ((y - y0) / (y1 - y0 || 1)) * (h - pad.t - pad.b);
  g.strokeStyle = "#dde3ea"; g.fillStyle = "#556070"; g.font = "11px system-ui, sans-serif"; g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = y0 + ((y1 - y0) * i) / 4, y = sy(v);
    g.beginPath(); g.moveTo(pad.l, y); g.lineTo(w - pad.r, y); g.stroke();
    g.fillText(v.toPrecision(3), 4, y + 4);
  }
  g.fillText(String(x0), pad.l, h - 8);
  g.fillText(String(x1), w - pad.r - g.measureText(String(x1)).width, h - 8);
  g.strokeStyle = "#0b5cad"; g.fillStyle = "#0b5cad"; g.lineWidth = 2; g.beginPath();
  if (points.length === 1) {  /* a final metric (test accuracy): one dot, not an invisible line */
    g.arc(sx(points[0][0]), sy(points[0][1]), 4, 0, 2 * Math.PI); g.fill(); return;
  }
  points.forEach((p, i) => (i ? g.lineTo(sx(p[0]), sy(p[1])) : g.moveTo(sx(p[0]), sy(p[1]))));
  g.stroke();
}

/* the job page's facts as the stream's "job" event sends them: state, reason, nodes, elapsed, timeline, actions */
function updateJob(d) {
  const setText = (id, v) => { const el = document.getElementById(id); if (el && el.textContent !== v) el.textContent = v; };
  const span = document.querySelector("#job-state .badge");
  if (span) { span.dataset.state = d.state; span.className = "badge badge-" + d.tone; span.textContent = d.label; }
  setText("job-nodes", d.nodes);
  setText("job-elapsed", d.elapsed);
  setText("job-reason", d.reason);
  const line = document.getElementById("job-reason-line");
  if (line) line.hidden = !d.reason;
  const cancel = document.getElementById("cancel-form");
  if (cancel && d.terminal) cancel.remove();  /* nothing left to cancel */
  const list = document.getElementById("timeline");
  if (list && list.children.length !== d.timeline.length) {
    list.replaceChildren(...d.timeline.map((e) => {
      const li = document.createElement("li");
      const kind = document.createElement("span"); kind.className = "tl-kind"; kind.textContent = e.kind;
      const at = document.createElement("time"); at.className = "sub"; at.textContent = e.at;
      li.append(kind, " ", at);
      if (e.message) {
        const m = document.createElement("div"); m.className = "sub"; m.textContent = e.message;
        if (e.detail) m.title = e.detail;
        li.append(m);
      }
      return li;
    }));
  }
}

function initCharts() { drawCharts(readJSON("metrics-data")); }

function drawCharts(data) {
  const box = document.getElementById("charts");
  if (!data || !box || !Object.keys(data).length) return;
  const empty = document.getElementById("no-metrics");
  if (empty) empty.hidden = true;
  box.replaceChildren();
  /* the run's own metrics first, MLflow's system metrics (system/...) after them */
  const rank = (name) => (name.startsWith("system/") || name.includes("/system/") ? 1 : 0);
  Object.keys(data).sort((a, b) => rank(a) - rank(b) || a.localeCompare(b)).forEach((name) => {
    const fig = document.createElement("figure");
    fig.className = "chart";
    const cap = document.createElement("figcaption");
    cap.textContent = name; cap.translate = false;  /* a metric key is a name, kept as logged */
    const canvas = document.createElement("canvas");
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", name);
    canvas.dataset.metric = name;
    canvas.dataset.points = String(data[name].length);
    fig.append(cap, canvas);
    box.appendChild(fig);
    drawSeries(canvas, data[name]);
  });
}

/* -- new job: partition panel, live estimate vs quota, own-code archive upload ---------------------------------- */
function walltimeMinutes(text) {
  text = (text || "").trim();
  if (/^\d+$/.test(text)) return parseInt(text, 10);
  let days = 0;
  if (text.includes("-")) { const [d, rest] = text.split("-", 2); days = parseInt(d, 10); text = rest; }
  const parts = text.split(":").map((p) => parseInt(p, 10));
  if (parts.some(isNaN) || !parts.length || parts.length > 3) return null;
  let h = 0, m = 0, s = 0;
  if (days) [h, m = 0, s = 0] = parts; else if (parts.length === 3) [h, m, s] = parts;
  else if (parts.length === 2) [m, s] = parts; else [m] = parts;
  return days * 1440 + h * 60 + m + (s ? 1 : 0);
}

function initNewJob() {
  const form = document.getElementById("job-form");
  if (!form || !document.getElementById("f-nodes")) return;
  const parts = readJSON("partition-data") || {};
  const lefts = readJSON("quota-left") || {};
  const val = (n) => (form.elements[n] ? form.elements[n].value : "");
  const info = document.getElementById("partition-info");
  const setText = (id, v) => { const el = document.getElementById(id); if (el) el.textContent = v; };
  const fmtNum = (v) => (v === null || v === undefined ? info.dataset.unlimited : Number(v).toFixed(2));
  function update() {
    const sched = val("scheduler");
    const p = parts[sched + "/" + val("partition")] || Object.values(parts).find((q) => q.scheduler === sched && q.default);
    const cell = (k, v) => { info.querySelector(`[data-k="${k}"]`).textContent = v; };
    if (p) {
      cell("nodes", p.nodes); cell("max_time_min", p.max_time_min ? fmt(info.dataset.minutes, { min: p.max_time_min }) : info.dataset.unlimited);
      cell("cpus", p.cpus_free + " / " + p.cpus_total); cell("gpus", p.gpus_free + " / " + p.gpus_total);
    }
    const minutes = walltimeMinutes(val("time_limit"));
    const nodes = parseInt(val("nodes"), 10), gpn = parseInt(val("gpus_per_node"), 10);
    const tpn = parseInt(val("tasks_per_node"), 10), cpt = parseInt(val("cpus_per_task"), 10);
    if (minutes === null || [nodes, gpn, tpn, cpt].some(isNaN)) return;
    const gpuH = (nodes * gpn * minutes) / 60, cpuH = (nodes * tpn * cpt * minutes) / 60;
    setText("est-gpu", gpuH.toFixed(2)); setText("est-cpu", cpuH.toFixed(2));
    const left = lefts[val("target")] || {};
    setText("left-gpu", fmtNum(left.gpu_hours)); setText("left-cpu", fmtNum(left.cpu_hours));
    const over = (left.gpu_hours != null && gpuH > left.gpu_hours + 1e-9) || (left.cpu_hours != null && cpuH > left.cpu_hours + 1e-9);
    document.getElementById("est-over").hidden = !over;
  }
  form.addEventListener("input", update);
  form.addEventListener("change", (ev) => {
    if (ev.target.name === "source") document.getElementById("own-code").hidden = ev.target.value !== "own";
    /* the scheduler follows the partition (each partition belongs to one scheduler), and a partition the newly
       chosen scheduler does not have is cleared */
    const sched = form.elements.scheduler, part = form.elements.partition;
    if (ev.target === part && part.selectedOptions[0] && part.selectedOptions[0].dataset.scheduler && sched) {
      sched.value = part.selectedOptions[0].dataset.scheduler;
    } else if (ev.target === sched && part && part.selectedOptions[0] && part.selectedOptions[0].dataset.scheduler
               && part.selectedOptions[0].dataset.scheduler !== sched.value) {
      part.value = "";
    }
    update();
  });
  update();
  const archive = document.getElementById("f-workdir");
  if (archive) {
    archive.addEventListener("change", () => uploadCode(archive, form));
    /* a bundle belongs to one project: another target means uploading it again */
    form.elements.target.addEventListener("change", () => {
      document.getElementById("f-code_uri").value = "";
      if (archive.files[0]) uploadCode(archive, form);
    });
  }
}

async function sha256Hex(buf) {
  if (!(window.crypto && crypto.subtle)) {
    /* plain http to a host other than localhost has no WebCrypto: upload.js's SHA-256 stands in */
    return new window.HaiheSha256().update(new Uint8Array(buf)).hex();
  }
  const digest = await crypto.subtle.digest("SHA-256", buf);
  return Array.from(new Uint8Array(digest)).map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function uploadCode(input, form) {
  const hint = document.getElementById("hint-workdir");
  const file = input.files[0];
  if (!file) return;
  const [org, project] = form.elements.target.value.split("/");
  document.getElementById("f-code_uri").value = "";
  if (file.size > Number(hint.dataset.max)) {
    /* refused before reading a byte: the server would refuse it too, after the whole file was hashed */
    hint.textContent = hint.dataset.tooBig;
    input.value = "";
    return;
  }
  hint.textContent = hint.dataset.uploading;
  try {
    const buf = await file.arrayBuffer();
    const r = await fetch(`/api/v1/orgs/${encodeURIComponent(org)}/projects/${encodeURIComponent(project)}/code`, {
      method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken() },
      body: JSON.stringify({ size: buf.byteLength, sha256: await sha256Hex(buf) }),
    });
    if (!r.ok) throw new Error((await r.json()).error.message);
    const ticket = await r.json();
    const put = await fetch(ticket.upload_url, { method: "PUT", body: buf });
    if (!put.ok) throw new Error("HTTP " + put.status);
    document.getElementById("f-code_uri").value = ticket.code_uri;
    hint.textContent = hint.dataset.done;
  } catch (err) {
    hint.textContent = hint.dataset.failed + " " + err.message;
  }
}

/* the dataset folder upload lives in upload.js */

/* -- copy buttons: data-copy names the element whose text goes to the clipboard ---------------------------------- */
function initCopy() {
  document.querySelectorAll("button[data-copy]").forEach((btn) => {
    btn.addEventListener("click", async () => {
      const el = document.getElementById(btn.dataset.copy);
      if (!el || !navigator.clipboard) return;
      try {
        await navigator.clipboard.writeText(el.textContent);
        if (btn.dataset.copied) btn.textContent = btn.dataset.copied;
      } catch (err) {
        /* no clipboard permission (plain http): the text stays selectable */
      }
    });
  });
}

/* -- destructive forms ask first: data-confirm holds the question (without JavaScript the form just submits) --- */
function initConfirm() {
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (ev) => { if (!window.confirm(form.dataset.confirm)) ev.preventDefault(); });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  window.HAIHE_STATES = readJSON("state-names");
  initLogs();
  initCharts();
  initNewJob();
  initCopy();
  initConfirm();
});
