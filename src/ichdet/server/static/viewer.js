/* ichdet viewer: plain JS against the HTTP contract in docs/serve-api.md. No build step, no
 * external resources. State lives in `state`; every change goes through render(). */
"use strict";

(function () {
  const WINDOWS = {
    brain: { label: "Brain", cw: "40/80" },
    subdural: { label: "Subdural", cw: "80/200" },
    bone: { label: "Bone", cw: "600/2800" },
  };
  const WINDOW_KEYS = { "1": "brain", "2": "subdural", "3": "bone" };
  const PREFETCH_RADIUS = 4; // slices each side, plain images
  const PREFETCH_RADIUS_OVERLAY = 1; // Grad-CAM goes through the inference queue: be gentle
  const CACHE_LIMIT = 256; // prefetched <img> objects kept alive
  const WHEEL_NOTCH = 50; // px of pixel-mode wheel delta that count as one notch

  const state = {
    study: null, // Study JSON
    k: 0, // current display slice (0 = most inferior)
    window: "brain",
    overlay: false,
    mask: false, // a segmentation model's bleed mask drawn over the slice
    hidden: new Set(), // subtype labels (1..5) switched off in the mask overlay
    src: "", // src currently set on #slice-image
    busy: false,
  };
  const prefetched = new Map(); // url -> Image (insertion order = LRU order)
  let wheelAccum = 0;
  let loadingTimer = null;

  const $ = (id) => document.getElementById(id);
  const el = {};

  function fmtP(p) {
    return typeof p === "number" && isFinite(p) ? p.toFixed(3) : "\u2013";
  }

  function fmtBytes(n) {
    if (n < 1024) return n + " B";
    if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KB";
    if (n < 1024 * 1024 * 1024) return (n / 1024 / 1024).toFixed(1) + " MB";
    return (n / 1024 / 1024 / 1024).toFixed(2) + " GB";
  }

  /* ---------- status line ---------- */

  function setStatus(text, kind) {
    el.status.textContent = text || "";
    el.status.className = "status" + (kind ? " " + kind : "");
  }

  /** The server's one-line `detail` from an error body, or a fallback. */
  function detailOf(status, bodyText) {
    try {
      const body = JSON.parse(bodyText);
      if (body && typeof body.detail === "string") return body.detail;
      if (body && body.detail !== undefined) return JSON.stringify(body.detail);
    } catch (e) {
      /* not JSON */
    }
    if (status === 413) return "file too large for this server";
    if (status === 503) return "the server is busy; try again shortly";
    return status ? "HTTP " + status : "network error (is the server running?)";
  }

  async function fetchJSON(url, options) {
    let resp;
    try {
      resp = await fetch(url, options);
    } catch (e) {
      const err = new Error(detailOf(0, ""));
      err.status = 0;
      throw err;
    }
    const text = await resp.text();
    if (!resp.ok) {
      const err = new Error(detailOf(resp.status, text));
      err.status = resp.status;
      throw err;
    }
    return text ? JSON.parse(text) : null;
  }

  /* ---------- header: model, studies list ---------- */

  async function loadHealth() {
    try {
      const h = await fetchJSON("/api/health");
      const m = (h && h.model) || {};
      el.modelInfo.textContent = [m.name, m.kind].filter(Boolean).join(" \u00b7 ");
      el.modelInfo.title = "Model: " + (m.name || "?") + " (" + (m.kind || "?") + "), threshold " + fmtP(m.threshold);
    } catch (e) {
      setStatus("Server not reachable: " + e.message, "error");
    }
  }

  async function loadAvailable() {
    let studies = [];
    try {
      const data = await fetchJSON("/api/studies/available");
      studies = (data && data.studies) || [];
    } catch (e) {
      setStatus("Could not list studies: " + e.message, "error");
    }
    el.studiesList.textContent = "";
    for (const s of studies) {
      const opt = document.createElement("option");
      opt.value = s.name;
      opt.textContent = (s.name === "." ? "the whole studies folder" : s.name) + (s.type ? "  (" + s.type + ")" : "");
      el.studiesList.appendChild(opt);
    }
    el.studiesBox.hidden = studies.length === 0;
  }

  /* ---------- opening and closing studies ---------- */

  function setBusy(busy) {
    state.busy = busy;
    document.body.classList.toggle("busy", busy);
    el.fileInput.disabled = busy;
    el.openStudy.disabled = busy;
  }

  function safeHeaderValue(name) {
    // Header values must be Latin-1; keep printable ASCII, replace the rest.
    return String(name || "upload").replace(/[^\x20-\x7e]/g, "_").slice(0, 255);
  }

  function uploadFile(file) {
    if (!file) return;
    if (state.busy) {
      setStatus("Still working on the previous request\u2026", "busy");
      return;
    }
    setBusy(true);
    setStatus("Uploading " + file.name + " (" + fmtBytes(file.size) + ")\u2026", "busy");
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/studies");
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.setRequestHeader("X-Filename", safeHeaderValue(file.name));
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable && e.total > 0) {
        const pct = Math.floor((100 * e.loaded) / e.total);
        setStatus(pct < 100 ? "Uploading " + file.name + "\u2026 " + pct + "%" : "Analysing " + file.name + "\u2026", "busy");
      }
    };
    xhr.upload.onload = () => setStatus("Analysing " + file.name + "\u2026", "busy");
    xhr.onload = () => {
      setBusy(false);
      el.fileInput.value = "";
      if (xhr.status === 201 || xhr.status === 200) {
        let study;
        try {
          study = JSON.parse(xhr.responseText);
        } catch (e) {
          setStatus("Upload failed: the server sent an unreadable answer", "error");
          return;
        }
        showStudy(study);
      } else {
        setStatus("Upload failed (" + xhr.status + "): " + detailOf(xhr.status, xhr.responseText), "error");
      }
    };
    xhr.onerror = () => {
      setBusy(false);
      el.fileInput.value = "";
      setStatus("Upload failed: " + detailOf(0, ""), "error");
    };
    xhr.send(file);
  }

  async function openAvailable() {
    const name = el.studiesList.value;
    if (!name || state.busy) return;
    setBusy(true);
    setStatus("Opening " + name + "\u2026", "busy");
    try {
      const study = await fetchJSON("/api/studies/open", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ name: name }),
      });
      showStudy(study);
    } catch (e) {
      setStatus("Could not open " + name + ": " + e.message, "error");
    } finally {
      setBusy(false);
    }
  }

  function deleteStudy(id) {
    return fetch("/api/studies/" + encodeURIComponent(id), { method: "DELETE" });
  }

  async function closeStudy() {
    const study = state.study;
    if (!study) return;
    try {
      const resp = await deleteStudy(study.id);
      if (!resp.ok && resp.status !== 404) {
        setStatus("Could not close the study: " + detailOf(resp.status, await resp.text()), "error");
        return;
      }
    } catch (e) {
      setStatus("Could not close the study: " + detailOf(0, ""), "error");
      return;
    }
    hideViewer();
    setStatus("Study closed.", "ok");
  }

  function hideViewer() {
    state.study = null;
    state.src = "";
    prefetched.clear();
    el.viewer.hidden = true;
    el.emptyState.hidden = false;
    el.image.removeAttribute("src");
    el.image.dataset.loaded = "false";
    document.title = "ichdet viewer";
  }

  function showStudy(study) {
    const previous = state.study;
    if (previous && previous.id !== study.id) {
      deleteStudy(previous.id).catch(() => {}); // one study at a time: free the server's copy
    }
    prefetched.clear();
    state.study = study;
    const n = study.n_slices;
    const top = study.top_slices || [];
    state.k = top.length ? clamp(top[0]) : Math.floor((n - 1) / 2);

    document.title = (study.decision ? "BLEED" : "no bleed") + " \u00b7 " + study.name + " \u00b7 ichdet";
    el.decision.textContent = study.decision ? "BLEED" : "no bleed";
    el.decision.className = "decision " + (study.decision ? "positive" : "negative");
    el.decisionCard.classList.toggle("positive", !!study.decision);
    el.probability.textContent = fmtP(study.probability);
    el.threshold.textContent = fmtP(study.threshold);
    const meta = [study.name];
    if (Array.isArray(study.shape)) meta.push(study.shape.join(" \u00d7 "));
    if (typeof study.seconds === "number") meta.push("analysed in " + study.seconds.toFixed(2) + " s");
    el.studyMeta.textContent = meta.join(" \u00b7 ");

    buildStrip(study);
    buildTopSlices(study);
    buildSubtypes(study.subtypes);
    buildMask(study);
    buildWarnings(study.warnings || []);

    el.slider.min = "0";
    el.slider.max = String(Math.max(0, n - 1));
    el.emptyState.hidden = true;
    el.viewer.hidden = false;
    const nw = (study.warnings || []).length;
    setStatus("Opened " + study.name + (nw ? " \u2013 " + nw + " warning" + (nw > 1 ? "s" : "") : "") + ".", nw ? "warn" : "ok");
    render();
  }

  /* ---------- side panel and strip ---------- */

  function buildStrip(study) {
    const probs = study.slice_probabilities || [];
    const labels = study.slice_labels || [];
    const t = study.threshold;
    el.strip.textContent = "";
    probs.forEach((p, i) => {
      const bar = document.createElement("div");
      bar.className = "bar" + (p >= t ? " hot" : "");
      bar.dataset.index = String(i);
      bar.setAttribute("role", "option");
      bar.title = "Image " + (i + 1) + " / " + probs.length + (labels[i] ? " \u00b7 source " + labels[i] : "") + " \u00b7 p = " + fmtP(p);
      const fill = document.createElement("div");
      fill.className = "fill";
      fill.style.height = Math.max(0, Math.min(1, p)) * 100 + "%";
      bar.appendChild(fill);
      bar.addEventListener("click", () => setSlice(i));
      el.strip.appendChild(bar);
    });
    const line = document.createElement("div");
    line.className = "threshold-line";
    line.style.bottom = Math.max(0, Math.min(1, t)) * 100 + "%";
    line.title = "threshold " + fmtP(t);
    line.dataset.label = "threshold " + (typeof t === "number" ? t.toFixed(2) : "");
    el.strip.appendChild(line);
  }

  function buildTopSlices(study) {
    el.topSlices.textContent = "";
    const probs = study.slice_probabilities || [];
    const labels = study.slice_labels || [];
    for (const i of study.top_slices || []) {
      const chip = document.createElement("button");
      chip.type = "button";
      chip.className = "chip" + (probs[i] >= study.threshold ? " hot" : "");
      chip.dataset.index = String(i);
      chip.title = "Go to image " + (i + 1) + " / " + probs.length;
      const name = document.createElement("span");
      name.textContent = labels[i] || "slice " + (i + 1);
      const p = document.createElement("span");
      p.className = "chip-p";
      p.textContent = fmtP(probs[i]);
      chip.append(name, p);
      chip.addEventListener("click", () => setSlice(i));
      el.topSlices.appendChild(chip);
    }
    if (!el.topSlices.childElementCount) el.topSlices.textContent = "\u2013";
  }

  function buildSubtypes(subtypes) {
    el.subtypes.textContent = "";
    const has = subtypes && typeof subtypes === "object" && Object.keys(subtypes).length > 0;
    el.subtypesCard.hidden = !has;
    if (!has) return;
    const table = document.createElement("table");
    table.className = "subtypes-table";
    for (const [name, p] of Object.entries(subtypes)) {
      const tr = document.createElement("tr");
      const th = document.createElement("th");
      th.textContent = name;
      const tdBar = document.createElement("td");
      tdBar.className = "sub-bar";
      const fill = document.createElement("div");
      fill.style.width = Math.max(0, Math.min(1, p)) * 100 + "%";
      tdBar.appendChild(fill);
      const td = document.createElement("td");
      td.className = "num";
      td.textContent = fmtP(p);
      tr.append(th, tdBar, td);
      table.appendChild(tr);
    }
    el.subtypes.appendChild(table);
  }

  function buildMask(study) {
    el.volumes.textContent = "";
    el.abc2.textContent = "";
    const segments = Array.isArray(study.segments) ? study.segments : null;
    el.maskCard.hidden = !segments;
    state.hidden = new Set();
    if (!segments) {
      state.mask = false;
      return;
    }
    const vols = study.volumes || { subtypes: {}, total: 0 };
    for (const seg of segments) {
      const tr = document.createElement("tr");
      const th = document.createElement("th");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.checked = true;
      box.dataset.label = String(seg.label);
      box.id = "mask-label-" + seg.label;
      box.title = "Show " + seg.name + " in the mask overlay";
      box.addEventListener("change", () => {
        if (box.checked) state.hidden.delete(seg.label);
        else state.hidden.add(seg.label);
        render();
      });
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = seg.colour;
      const name = document.createElement("label");
      name.htmlFor = box.id;
      name.textContent = seg.name;
      th.append(box, swatch, name);
      const td = document.createElement("td");
      td.className = "num";
      const ml = (vols.subtypes || {})[seg.name];
      td.textContent = typeof ml === "number" ? ml.toFixed(1) + " mL" : "\u2013";
      tr.append(th, td);
      el.volumes.appendChild(tr);
    }
    const total = document.createElement("tr");
    total.className = "total";
    const th = document.createElement("th");
    th.textContent = "total";
    const td = document.createElement("td");
    td.className = "num";
    td.id = "volume-total";
    td.textContent = typeof vols.total === "number" ? vols.total.toFixed(1) + " mL" : "\u2013";
    total.append(th, td);
    el.volumes.appendChild(total);
    const abc = vols.abc2;
    if (abc && typeof abc.volume_ml === "number") {
      el.abc2.textContent = "ABC/2 of the largest lesion: " + abc.volume_ml.toFixed(1) + " mL" +
        (abc.a_mm ? " (A " + abc.a_mm.toFixed(0) + ", B " + abc.b_mm.toFixed(0) + ", C " + abc.c_mm.toFixed(0) + " mm)" : "");
    }
  }

  function maskParam() {
    if (!state.mask || !state.study || !Array.isArray(state.study.segments)) return "";
    const shown = state.study.segments.map((s) => s.label).filter((l) => !state.hidden.has(l));
    return shown.length ? shown.join(",") : "";
  }

  function setMask(on) {
    if (!state.study || !Array.isArray(state.study.segments)) return;
    state.mask = !!on;
    render();
  }

  function buildWarnings(warnings) {
    el.warnings.textContent = "";
    for (const w of warnings) {
      const li = document.createElement("li");
      li.textContent = String(w);
      el.warnings.appendChild(li);
    }
    el.warningsCard.hidden = warnings.length === 0;
  }

  /* ---------- slices ---------- */

  function clamp(k) {
    const n = state.study ? state.study.n_slices : 1;
    return Math.max(0, Math.min(n - 1, Math.round(k)));
  }

  function sliceUrl(k, win, overlay) {
    const mask = maskParam();
    return "/api/studies/" + encodeURIComponent(state.study.id) + "/slices/" + k +
      "?window=" + encodeURIComponent(win) + "&overlay=" + (overlay ? "true" : "false") +
      (mask ? "&mask=" + encodeURIComponent(mask) : "");
  }

  function setSlice(k) {
    if (!state.study) return;
    const next = clamp(k);
    if (next === state.k) return;
    state.k = next;
    render();
  }

  function setWindow(win) {
    if (!state.study || !WINDOWS[win] || win === state.window) return;
    state.window = win;
    render();
  }

  function setOverlay(on) {
    if (!state.study) return;
    state.overlay = !!on;
    render();
  }

  function prefetch(url) {
    if (prefetched.has(url)) {
      const img = prefetched.get(url); // refresh LRU position
      prefetched.delete(url);
      prefetched.set(url, img);
      return;
    }
    const img = new Image();
    img.decoding = "async";
    img.src = url;
    prefetched.set(url, img);
    while (prefetched.size > CACHE_LIMIT) prefetched.delete(prefetched.keys().next().value);
  }

  function prefetchAround() {
    const n = state.study.n_slices;
    const radius = state.overlay ? PREFETCH_RADIUS_OVERLAY : PREFETCH_RADIUS;
    for (let d = 1; d <= radius; d++) {
      for (const k of [state.k + d, state.k - d]) {
        if (k >= 0 && k < n) prefetch(sliceUrl(k, state.window, state.overlay));
      }
    }
  }

  function render() {
    const study = state.study;
    if (!study) return;
    const n = study.n_slices;
    const k = state.k;
    const src = sliceUrl(k, state.window, state.overlay);
    const img = el.image;
    img.dataset.window = state.window;
    img.dataset.overlay = state.overlay ? "true" : "false";
    img.dataset.mask = maskParam();
    img.dataset.slice = String(k);
    if (src !== state.src) {
      state.src = src;
      img.dataset.loaded = "false";
      img.setAttribute("src", src);
      clearTimeout(loadingTimer);
      loadingTimer = setTimeout(() => {
        if (img.dataset.loaded === "false") el.hudLoading.hidden = false;
      }, 200);
    }
    img.alt = "CT image " + (k + 1) + " of " + n + ", " + state.window + " window" + (state.overlay ? ", heatmap overlay" : "") +
      (maskParam() ? ", bleed mask" : "");

    el.sliceIndex.textContent = k + 1 + " / " + n;
    el.sliceLabel.textContent = (study.slice_labels || [])[k] || "";
    const p = (study.slice_probabilities || [])[k];
    el.sliceProb.textContent = fmtP(p);
    el.sliceProb.classList.toggle("hot", p >= study.threshold);
    el.hudWindow.textContent = WINDOWS[state.window].label + " " + WINDOWS[state.window].cw;
    el.hudOverlay.textContent = [state.overlay ? "heatmap on" : "", maskParam() ? "mask on" : ""].filter(Boolean).join(" \u00b7 ");

    el.slider.value = String(k);
    for (const btn of el.windowButtons) btn.classList.toggle("active", btn.dataset.window === state.window);
    for (const btn of el.windowButtons) btn.setAttribute("aria-pressed", btn.dataset.window === state.window ? "true" : "false");
    el.overlayToggle.checked = state.overlay;
    el.maskToggle.checked = state.mask;

    const prev = el.strip.querySelector(".bar.current");
    if (prev) prev.classList.remove("current");
    const bar = el.strip.querySelector('.bar[data-index="' + k + '"]');
    if (bar) bar.classList.add("current");
    for (const chip of el.topSlices.querySelectorAll(".chip")) chip.classList.toggle("current", Number(chip.dataset.index) === k);

    prefetchAround();
  }

  function onImageLoad() {
    const img = el.image;
    if (img.getAttribute("src") === state.src && img.complete && img.naturalWidth > 0) {
      img.dataset.loaded = "true";
      clearTimeout(loadingTimer);
      el.hudLoading.hidden = true;
      if (el.status.classList.contains("slice-error")) setStatus("", "");
    }
  }

  async function onImageError() {
    const img = el.image;
    const src = img.getAttribute("src");
    if (!src || src !== state.src) return;
    img.dataset.loaded = "error";
    clearTimeout(loadingTimer);
    el.hudLoading.hidden = true;
    const study = state.study;
    let detail = "";
    let status = 0;
    try {
      const resp = await fetch(src);
      status = resp.status;
      detail = resp.ok ? "" : detailOf(resp.status, await resp.text());
    } catch (e) {
      detail = detailOf(0, "");
    }
    if (src !== state.src) return; // moved on meanwhile
    if (status === 404 && study) {
      try {
        const r = await fetch("/api/studies/" + encodeURIComponent(study.id));
        if (r.status === 404) {
          hideViewer();
          setStatus("The study is no longer on the server (expired or closed). Open it again.", "error");
          return;
        }
      } catch (e) {
        /* fall through */
      }
    }
    if (status && status < 400) {
      // a transient failure: the image is fine now, show it
      img.dataset.loaded = "false";
      state.src = "";
      render();
      return;
    }
    setStatus("Could not load slice " + (state.k + 1) + ": " + (detail || "unknown error"), "error slice-error");
  }

  /* ---------- input: keys, wheel, drag and drop ---------- */

  function onKeyDown(e) {
    if (!state.study || e.ctrlKey || e.metaKey || e.altKey) return;
    const t = e.target;
    if (t && (t.tagName === "SELECT" || t.tagName === "TEXTAREA" || t.isContentEditable ||
        (t.tagName === "INPUT" && !["range", "checkbox", "file", "button", "submit"].includes(t.type)))) return;
    const n = state.study.n_slices;
    let handled = true;
    switch (e.key) {
      case "ArrowUp":
      case "ArrowRight":
        setSlice(state.k + 1);
        break;
      case "ArrowDown":
      case "ArrowLeft":
        setSlice(state.k - 1);
        break;
      case "PageUp":
        setSlice(state.k + 5);
        break;
      case "PageDown":
        setSlice(state.k - 5);
        break;
      case "Home":
        setSlice(0);
        break;
      case "End":
        setSlice(n - 1);
        break;
      case "o":
      case "O":
        setOverlay(!state.overlay);
        break;
      case "m":
      case "M":
        if (Array.isArray(state.study.segments)) setMask(!state.mask);
        else handled = false;
        break;
      default:
        if (WINDOW_KEYS[e.key]) setWindow(WINDOW_KEYS[e.key]);
        else handled = false;
    }
    if (handled) e.preventDefault();
  }

  function onWheel(e) {
    if (!state.study) return;
    e.preventDefault();
    const dy = e.deltaY;
    if (dy === 0) return;
    let steps = 0;
    if (e.deltaMode !== 0 || Math.abs(dy) >= WHEEL_NOTCH) {
      steps = dy < 0 ? 1 : -1; // one notch (whatever its pixel size) = one slice; up = superior
      wheelAccum = 0;
    } else {
      wheelAccum += dy; // touchpads: many small deltas
      if (Math.abs(wheelAccum) >= WHEEL_NOTCH) {
        steps = wheelAccum < 0 ? 1 : -1;
        wheelAccum = 0;
      }
    }
    if (steps) setSlice(state.k + steps);
  }

  /** Press and drag along the strip to scrub through the slices. */
  function setupStripScrub() {
    let scrubbing = false;
    const pick = (e) => {
      const rect = el.strip.getBoundingClientRect();
      const hit = document.elementFromPoint(
        Math.max(rect.left + 1, Math.min(rect.right - 1, e.clientX)), rect.top + rect.height / 2);
      const bar = hit && hit.closest ? hit.closest(".bar") : null;
      if (bar && el.strip.contains(bar)) setSlice(Number(bar.dataset.index));
    };
    el.strip.addEventListener("pointerdown", (e) => {
      if (!state.study || e.button !== 0) return;
      scrubbing = true;
      el.strip.setPointerCapture(e.pointerId);
      pick(e);
    });
    el.strip.addEventListener("pointermove", (e) => {
      if (scrubbing) pick(e);
    });
    const stop = () => {
      scrubbing = false;
    };
    el.strip.addEventListener("pointerup", stop);
    el.strip.addEventListener("pointercancel", stop);
  }

  function hasFiles(e) {
    return e.dataTransfer && Array.from(e.dataTransfer.types || []).includes("Files");
  }

  function setupDragDrop() {
    let depth = 0;
    window.addEventListener("dragenter", (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      depth++;
      document.body.classList.add("dragging");
    });
    window.addEventListener("dragleave", (e) => {
      if (!hasFiles(e)) return;
      depth = Math.max(0, depth - 1);
      if (!depth) document.body.classList.remove("dragging");
    });
    window.addEventListener("dragover", (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault(); // without this the browser would navigate to the dropped file
      e.dataTransfer.dropEffect = "copy";
    });
    window.addEventListener("drop", (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      depth = 0;
      document.body.classList.remove("dragging");
      const files = e.dataTransfer.files;
      if (files && files.length > 1) setStatus("Drop one file: a zip of the DICOM series, a NIfTI or an image.", "error");
      else if (files && files.length === 1) uploadFile(files[0]);
    });
    el.dropZone.addEventListener("dragover", () => el.dropZone.classList.add("over"));
    el.dropZone.addEventListener("dragleave", () => el.dropZone.classList.remove("over"));
    el.dropZone.addEventListener("drop", () => el.dropZone.classList.remove("over"));
  }

  /* ---------- start ---------- */

  function init() {
    Object.assign(el, {
      status: $("status"),
      modelInfo: $("model-info"),
      dropZone: $("drop-zone"),
      fileInput: $("file-input"),
      studiesBox: $("studies-box"),
      studiesList: $("studies-list"),
      openStudy: $("open-study"),
      emptyState: $("empty-state"),
      viewer: $("viewer"),
      imageBox: $("image-box"),
      image: $("slice-image"),
      sliceIndex: $("slice-index"),
      sliceLabel: $("slice-label"),
      sliceProb: $("slice-prob"),
      hudWindow: $("hud-window"),
      hudOverlay: $("hud-overlay"),
      hudLoading: $("hud-loading"),
      strip: $("strip"),
      slider: $("slice-slider"),
      decision: $("decision"),
      decisionCard: document.querySelector(".decision-card"),
      probability: $("probability"),
      threshold: $("threshold"),
      studyMeta: $("study-meta"),
      windowButtons: [$("window-brain"), $("window-subdural"), $("window-bone")],
      overlayToggle: $("overlay-toggle"),
      topSlices: $("top-slices"),
      subtypes: $("subtypes"),
      subtypesCard: $("subtypes-card"),
      maskCard: $("mask-card"),
      maskToggle: $("mask-toggle"),
      volumes: $("volumes"),
      abc2: $("abc2"),
      warnings: $("warnings"),
      warningsCard: $("warnings-card"),
      closeStudy: $("close-study"),
    });
    setStatus("", "");
    el.fileInput.addEventListener("change", () => uploadFile(el.fileInput.files && el.fileInput.files[0]));
    el.openStudy.addEventListener("click", openAvailable);
    el.closeStudy.addEventListener("click", closeStudy);
    el.slider.addEventListener("input", () => setSlice(Number(el.slider.value)));
    for (const btn of el.windowButtons) btn.addEventListener("click", () => setWindow(btn.dataset.window));
    el.overlayToggle.addEventListener("change", () => setOverlay(el.overlayToggle.checked));
    el.maskToggle.addEventListener("change", () => setMask(el.maskToggle.checked));
    el.image.addEventListener("load", onImageLoad);
    el.image.addEventListener("error", onImageError);
    el.imageBox.addEventListener("wheel", onWheel, { passive: false });
    el.strip.addEventListener("wheel", onWheel, { passive: false });
    setupStripScrub();
    document.addEventListener("keydown", onKeyDown);
    setupDragDrop();
    loadHealth();
    loadAvailable();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
