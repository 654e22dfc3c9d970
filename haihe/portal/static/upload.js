/* Haihe portal: upload a folder as a new dataset version, straight from the browser to S3.

   The API hands out presigned part URLs (POST …/versions) and checks sizes when the upload completes; the bytes go
   from here to the S3 server only (its gateway answers CORS), so the platform server is never in the data path.
   Each file is read once, part by part in order: every part feeds the file's SHA-256 (the manifest records it) and
   is PUT while the next one is read, a few in flight at a time. Cancel aborts the PUTs and the upload.
   Messages come from data-msg-* attributes on #dataset-upload, which the i18n catalogues fill. No build step. */
"use strict";

(function () {
  const IN_FLIGHT = 4; // parts PUT at once; memory held is about (IN_FLIGHT + 1) parts

  /* -- SHA-256, incremental: crypto.subtle has no streaming API and is missing outside secure contexts -------- */
  const K = new Uint32Array([
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2]);
  const H0 = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

  class Sha256 {
    constructor() {
      this.h = new Uint32Array(H0);
      this.w = new Uint32Array(64);
      this.pending = new Uint8Array(64);
      this.pendingLen = 0;
      this.length = 0; // bytes seen (a JS number is exact up to 2^53, far beyond S3's 5 TiB)
    }

    update(data) {
      let i = 0;
      this.length += data.length;
      if (this.pendingLen) {
        const n = Math.min(64 - this.pendingLen, data.length);
        this.pending.set(data.subarray(0, n), this.pendingLen);
        this.pendingLen += n;
        i = n;
        if (this.pendingLen < 64) return this;
        this.block(this.pending, 0);
        this.pendingLen = 0;
      }
      for (; i + 64 <= data.length; i += 64) this.block(data, i);
      if (i < data.length) {
        this.pending.set(data.subarray(i), 0);
        this.pendingLen = data.length - i;
      }
      return this;
    }

    block(d, o) {
      const w = this.w, h = this.h;
      for (let t = 0; t < 16; t++, o += 4) w[t] = (d[o] << 24) | (d[o + 1] << 16) | (d[o + 2] << 8) | d[o + 3];
      for (let t = 16; t < 64; t++) {
        const a = w[t - 15], b = w[t - 2];
        const s0 = ((a >>> 7) | (a << 25)) ^ ((a >>> 18) | (a << 14)) ^ (a >>> 3);
        const s1 = ((b >>> 17) | (b << 15)) ^ ((b >>> 19) | (b << 13)) ^ (b >>> 10);
        w[t] = (w[t - 16] + s0 + w[t - 7] + s1) | 0;
      }
      let a = h[0], b = h[1], c = h[2], e = h[4], f = h[5], g = h[6], dd = h[3], hh = h[7];
      for (let t = 0; t < 64; t++) {
        const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
        const t1 = (hh + S1 + ((e & f) ^ (~e & g)) + K[t] + w[t]) | 0;
        const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
        const t2 = (S0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
        hh = g; g = f; f = e; e = (dd + t1) | 0; dd = c; c = b; b = a; a = (t1 + t2) | 0;
      }
      h[0] += a; h[1] += b; h[2] += c; h[3] += dd; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
    }

    hex() {
      const bits = this.length * 8;
      const tail = new Uint8Array(this.pendingLen < 56 ? 64 : 128);
      tail.set(this.pending.subarray(0, this.pendingLen));
      tail[this.pendingLen] = 0x80;
      const view = new DataView(tail.buffer);
      view.setUint32(tail.length - 8, Math.floor(bits / 0x100000000));
      view.setUint32(tail.length - 4, bits >>> 0);
      for (let o = 0; o < tail.length; o += 64) this.block(tail, o);
      return Array.from(this.h, (x) => x.toString(16).padStart(8, "0")).join("");
    }
  }

  async function sha256Whole(bytes) {
    if (window.crypto && crypto.subtle) {
      const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
      return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
    }
    return new Sha256().update(bytes).hex();
  }

  /* -- talking to the API and to S3 ---------------------------------------------------------------------------- */
  class UploadError extends Error {
    constructor(kind, detail) {
      super(detail);
      this.kind = kind; // a data-msg-* suffix: Quota, Storage, Failed, Cancelled
    }
  }

  function kindOf(status) {
    if (status === 402) return "Quota";
    if (status === 503 || status === 0) return "Storage";
    return "Failed";
  }

  function csrfToken(box) {
    const m = document.cookie.match(/(?:^|; )haihe_csrf=([^;]+)/);
    return box.dataset.csrf || (m ? decodeURIComponent(m[1]) : "");
  }

  async function callApi(box, method, path, body) {
    let r;
    try {
      r = await fetch(box.dataset.api + path, {
        method, credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken(box) },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new UploadError("Storage", err.message);
    }
    let data = null;
    try { data = await r.json(); } catch (err) { /* an empty or HTML body: the status says enough */ }
    if (!r.ok) {
      const message = data && data.error ? data.error.message : "HTTP " + r.status;
      throw new UploadError(kindOf(r.status), message);
    }
    return data;
  }

  /* One part to S3 with XMLHttpRequest: fetch() reports no upload progress. */
  function putPart(url, bytes, onProgress, live) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      live.add(xhr);
      xhr.open("PUT", url);
      xhr.upload.onprogress = (ev) => onProgress(ev.loaded);
      xhr.onload = () => {
        live.delete(xhr);
        if (xhr.status >= 200 && xhr.status < 300) { onProgress(bytes.byteLength); resolve(); return; }
        const code = (xhr.responseText.match(/<Code>([^<]+)<\/Code>/) || [])[1];
        reject(new UploadError(xhr.status >= 500 ? "Storage" : "Failed", "S3 " + xhr.status + (code ? " " + code : "")));
      };
      xhr.onerror = () => { live.delete(xhr); reject(new UploadError("Storage", "S3 unreachable")); };
      xhr.onabort = () => { live.delete(xhr); reject(new UploadError("Cancelled", "")); };
      xhr.send(bytes);
    });
  }

  /* The path inside the version: the chosen folder's own name is dropped. */
  function relativePath(file) {
    const p = file.webkitRelativePath || file.name;
    const i = p.indexOf("/");
    return i > 0 ? p.slice(i + 1) : p;
  }

  function fmt(template, values) {
    return (template || "").replace(/\{(\w+)\}/g, (_, k) => (k in values ? String(values[k]) : ""));
  }

  function human(bytes) {
    if (bytes < 1024) return bytes + " B";
    if (bytes < 1024 * 1024) return (bytes / 1024).toFixed(1) + " KiB";
    if (bytes < 1024 ** 3) return (bytes / 1024 ** 2).toFixed(1) + " MiB";
    return (bytes / 1024 ** 3).toFixed(2) + " GiB";
  }

  /* -- the form --------------------------------------------------------------------------------------------------- */
  function init() {
    const box = document.getElementById("dataset-upload");
    if (!box) return;
    const input = document.getElementById("ds-folder");
    const note = document.getElementById("ds-note");
    const startBtn = document.getElementById("ds-upload-start");
    const cancelBtn = document.getElementById("ds-upload-cancel");
    const bar = document.getElementById("ds-upload-progress");
    const status = document.getElementById("ds-upload-status");
    const error = document.getElementById("ds-upload-error");
    const done = document.getElementById("ds-upload-done");
    const msg = (key, values) => fmt(box.dataset["msg" + key], values || {});
    const say = (key, values) => { status.textContent = msg(key, values); };
    const fail = (text) => { error.textContent = text; error.hidden = false; };
    let run = null;
    // .btn sets a display, which beats the hidden attribute: toggle both
    const showCancel = (on) => { cancelBtn.hidden = !on; cancelBtn.style.display = on ? "" : "none"; };

    input.addEventListener("change", () => {
      const files = Array.from(input.files || []);
      const total = files.reduce((n, f) => n + f.size, 0);
      status.textContent = files.length ? msg("Chosen", { files: files.length, size: human(total) }) : "";
    });

    cancelBtn.addEventListener("click", () => {
      if (!run) return;
      run.cancelled = true;
      run.live.forEach((xhr) => xhr.abort());
    });

    startBtn.addEventListener("click", async () => {
      if (run) return;
      const files = Array.from(input.files || []);
      error.hidden = true;
      done.hidden = true;
      if (!files.length) { fail(msg("NoFiles")); return; }
      run = { cancelled: false, live: new Set(), uploadId: null };
      startBtn.disabled = true;
      input.disabled = true;
      showCancel(true);
      bar.value = 0;
      say("Preparing");
      try {
        const version = await upload(run, files);
        bar.value = bar.max;
        say("Done", { version: "v" + version });
        const link = done.querySelector("a");
        link.href = `${box.dataset.page}?version=${version}&done=uploaded`;
        link.textContent = msg("View", { version: "v" + version });
        done.hidden = false;
      } catch (err) {
        const kind = run.cancelled ? "Cancelled" : err.kind || "Failed";
        if (run.uploadId) {
          // nothing half-uploaded may stay: abort removes the parts and marks the version aborted
          try { await callApi(box, "DELETE", `/uploads/${encodeURIComponent(run.uploadId)}`); } catch (e) { /* GC expires it */ }
        }
        bar.value = 0;
        if (kind === "Cancelled") say("Cancelled");
        else { status.textContent = ""; fail(msg(kind, { detail: err.message })); }
      } finally {
        run = null;
        startBtn.disabled = false;
        input.disabled = false;
        showCancel(false);
      }
    });

    async function upload(state, files) {
      const byPath = new Map(files.map((f) => [relativePath(f), f]));
      const ticket = await callApi(box, "POST", "/versions", {
        files: files.map((f) => ({ path: relativePath(f), size: f.size })), note: note.value });
      state.uploadId = ticket.upload_id;
      const total = files.reduce((n, f) => n + f.size, 0);
      bar.max = Math.max(total, 1);
      const loaded = new Map(); // part key -> bytes sent so far
      let sent = 0;
      const progress = (key) => (n) => {
        sent += n - (loaded.get(key) || 0);
        loaded.set(key, n);
        bar.value = Math.min(sent, bar.max);
        const pct = total ? Math.floor((100 * sent) / total) : 100;
        say("Sending", { pct, done: human(sent), total: human(total) });
      };
      const inflight = new Set();
      let failure = null;
      const hashes = {};
      for (const target of ticket.files) {
        const file = byPath.get(target.path);
        if (!file || file.size !== target.size) throw new UploadError("Failed", target.path);
        const parts = target.parts.slice().sort((a, b) => a.number - b.number);
        const hasher = parts.length > 1 ? new Sha256() : null;
        for (const part of parts) {
          while (inflight.size >= IN_FLIGHT && !failure) await Promise.race(inflight);
          if (state.cancelled) throw new UploadError("Cancelled", "");
          if (failure) throw failure;
          const bytes = new Uint8Array(await file.slice(part.offset, part.offset + part.size).arrayBuffer());
          if (bytes.byteLength !== part.size) throw new UploadError("Failed", target.path);
          if (hasher) hasher.update(bytes);
          else hashes[target.path] = await sha256Whole(bytes);
          const p = putPart(part.url, bytes, progress(target.path + "#" + part.number), state.live)
            .catch((err) => { failure = failure || err; })
            .finally(() => inflight.delete(p));
          inflight.add(p);
        }
        if (hasher) hashes[target.path] = hasher.hex();
      }
      await Promise.all(inflight);
      if (state.cancelled) throw new UploadError("Cancelled", "");
      if (failure) throw failure;
      say("Committing");
      showCancel(false); // the server is checking and committing: too late to take it back
      const committed = await callApi(box, "POST", `/uploads/${encodeURIComponent(ticket.upload_id)}/complete`,
                                      { hashes });
      state.uploadId = null;
      return committed.version.number;
    }
  }

  window.HaiheSha256 = Sha256; // the browser test checks it against known digests
  document.addEventListener("DOMContentLoaded", init);
})();
