/* image2prompt web UI: plain JS, no dependencies, works offline.
 * Server data is only ever written with textContent, never innerHTML. */
(function () {
  "use strict";

  const KEY_STORAGE = "image2prompt.apiKey";
  const HYPOTHESIS_TIP = "The image resembles work tagged with this name; it does not say who made it.";
  // A server with no captioner starts the mode lists on a mode that runs on the image alone
  // (GET /v1/models lists them as caption_free_modes), so a first Run works: style if it can
  // (a prompt, of the image's look), else the first such mode.
  const PREFERRED_CAPTION_FREE = "style";
  // Number fields whose upper bound is the server's (read from its OpenAPI schema of
  // POST /v1/interrogate; the page's max attributes are the fallback): [input id, field].
  const SERVER_BOUNDS = [["max-tokens", "max_tokens"], ["beam", "beam"]];
  const REJECTED_NOTE = {
    raise: "These would have raised the prompt's similarity, but the image does not support them on their own: " +
      "each scores too close to its category's median.",
    lower: "These would have lowered the prompt's similarity (what a negative prompt looks for), but the image " +
      "does not clearly lack them: each scores too close to its category's median.",
  };
  const $ = (id) => document.getElementById(id);

  const state = {
    models: null,
    modelsError: false, // the error box shows why the models could not be loaded
    modelsRetry: null, // timer of the next GET /v1/models while the server is still loading
    files: { prompt: null, analyze: null, batch: [] },
    previews: {},
  };

  // ---------- small DOM helpers ----------
  function el(tag, opts, children) {
    const node = document.createElement(tag);
    if (opts) {
      if (opts.className) node.className = opts.className;
      if (opts.text !== undefined && opts.text !== null) node.textContent = String(opts.text);
      if (opts.title) node.title = opts.title;
    }
    (children || []).forEach((c) => c && node.appendChild(c));
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function fmt(x, digits) {
    return typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "–";
  }

  function hypothesisBadge() {
    return el("span", { className: "badge", text: "hypothesis", title: HYPOTHESIS_TIP });
  }

  // ---------- errors ----------
  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = false;
  }

  function clearError() {
    const box = $("error");
    box.textContent = "";
    box.hidden = true;
  }

  function messageOf(err) {
    if (err && typeof err.message === "string" && err.message) return err.message;
    return "Something went wrong.";
  }

  // ---------- API ----------
  function apiKey() {
    try { return localStorage.getItem(KEY_STORAGE) || ""; } catch (e) { return ""; }
  }

  function headers() {
    const h = {};
    const key = apiKey();
    if (key) h["X-API-Key"] = key;
    return h;
  }

  async function failure(res, method, path) {
    let message = "";
    try {
      const body = await res.json();
      if (body && typeof body.error === "string") message = body.error;
    } catch (e) { /* not JSON: fall through */ }
    if (!message) {
      message = `${method} ${path} failed: ${res.status} ${res.statusText || "error"}`.trim();
    }
    if (res.status === 401) {
      showAuth();
      message = apiKey()
        ? `${message} (the saved API key was rejected; enter a new one in the API key box below)`
        : `${message} (this server needs an API key; enter it in the API key box below)`;
    }
    const err = new Error(message);
    err.status = res.status;
    const retry = parseInt(res.headers.get("Retry-After") || "", 10);
    err.retryAfter = isFinite(retry) && retry >= 0 ? retry : null;
    return err;
  }

  async function request(method, path, body) {
    let res;
    try {
      res = await fetch(path, { method, headers: headers(), body });
    } catch (e) {
      throw new Error(`Could not reach the server (${method} ${path}). Is it running?`);
    }
    if (!res.ok) throw await failure(res, method, path);
    return res;
  }

  async function getJSON(path) {
    return (await request("GET", path)).json();
  }

  async function postForm(path, form) {
    return (await request("POST", path, form)).json();
  }

  // ---------- auth ----------
  function showAuth() {
    $("auth").hidden = false;
    $("api-key").value = apiKey();
  }

  function setupAuth() {
    $("auth").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const key = $("api-key").value.trim();
      try {
        if (key) localStorage.setItem(KEY_STORAGE, key);
        else localStorage.removeItem(KEY_STORAGE);
      } catch (e) { /* storage disabled: key lives only for this request */ }
      $("auth").hidden = true;
      clearError();
      loadModels();
    });
  }

  // ---------- models ----------
  function fillSelect(select, modes, def) {
    clear(select);
    modes.forEach((m) => {
      const opt = el("option", { text: m });
      opt.value = m;
      if (m === def) opt.selected = true;
      select.appendChild(opt);
    });
  }

  function listed(words) {
    return words.length > 1 ? `${words.slice(0, -1).join(", ")} and ${words[words.length - 1]}` : words.join("");
  }

  function captionFree(m) {
    return Array.isArray(m.caption_free_modes) ? m.caption_free_modes : [];
  }

  // The mode the lists start on: the server's default, unless it needs a caption that this
  // server cannot generate; then a mode that runs on the image alone.
  function startMode(m) {
    const free = captionFree(m).filter((x) => (m.modes || []).includes(x));
    if (m.caption_model || !free.length || free.includes(m.default_mode)) return m.default_mode;
    return free.includes(PREFERRED_CAPTION_FREE) ? PREFERRED_CAPTION_FREE : free[0];
  }

  function showCaptionHints(m) {
    const free = captionFree(m);
    const needing = (m.modes || []).filter((x) => !free.includes(x));
    document.querySelectorAll(".caption-hint").forEach((hint) => {
      if (hint.dataset.text === undefined) hint.dataset.text = hint.textContent;
      hint.textContent = m.caption_model || !free.length || !needing.length ? hint.dataset.text
        : `(${hint.dataset.lead || ""}this server has no captioner: ${listed(needing)} ` +
          `${needing.length > 1 ? "modes need" : "mode needs"} one typed here)`;
    });
  }

  // The largest value the server accepts for a field, from its JSON schema (pydantic writes an
  // optional field's bound inside anyOf); null when it gives none.
  function schemaMaximum(prop) {
    if (!prop) return null;
    if (typeof prop.maximum === "number") return prop.maximum;
    for (const alt of prop.anyOf || []) {
      if (alt && typeof alt.maximum === "number") return alt.maximum;
    }
    return null;
  }

  async function loadBounds() {
    try {
      const api = await getJSON("/openapi.json");
      const schema = api.paths["/v1/interrogate"].post.requestBody.content["application/json"].schema;
      SERVER_BOUNDS.forEach(([id, name]) => {
        const most = schemaMaximum(schema.properties && schema.properties[name]);
        if (most !== null) $(id).max = String(most);
      });
    } catch (e) { /* no schema: the page's own bounds stand (the server's when it was written) */ }
  }

  async function loadModels() {
    clearTimeout(state.modelsRetry);
    state.modelsRetry = null;
    try {
      const m = await getJSON("/v1/models");
      state.models = m;
      if (state.modelsError) {
        state.modelsError = false;
        clearError();
      }
      const clip = (m.clip_models || []).join(", ") || "unknown";
      $("models").textContent = `CLIP: ${clip} · captions: ${m.caption_model || "none (type a caption)"}` +
        (m.caption_prompt ? ` · asked: “${m.caption_prompt}”` : "");
      if (Array.isArray(m.modes) && m.modes.length) {
        const start = startMode(m);
        fillSelect($("mode"), m.modes, start);
        fillSelect($("batch-mode"), m.modes, start);
      }
      showCaptionHints(m);
      if (m.max_tokens) $("max-tokens").placeholder = `default ${m.max_tokens}`;
      if (m.version) $("version").textContent = `image2prompt ${m.version}`;
      if (m.auth && !apiKey()) showAuth();
    } catch (err) {
      if (err.status === 503 && err.retryAfter !== null) {
        // The server is up but still loading its models (or busy): ask again shortly.
        $("models").textContent = "Loading models… (the server is starting)";
        const seconds = Math.min(2, Math.max(1, err.retryAfter));
        state.modelsRetry = setTimeout(loadModels, seconds * 1000);
        return;
      }
      $("models").textContent = "Models: unavailable";
      state.modelsError = true;
      showError(`Could not load models: ${messageOf(err)}`);
    }
  }

  function checkSize(file) {
    const limit = state.models && state.models.limits && state.models.limits.max_upload_bytes;
    if (limit && file.size > limit) {
      const mb = (n) => (n / 1048576).toFixed(1) + " MB";
      throw new Error(`${file.name || "The file"} is ${mb(file.size)}; the server accepts up to ${mb(limit)}.`);
    }
  }

  // ---------- tabs ----------
  const TABS = ["prompt", "analyze", "batch"];

  function activeTab() {
    return TABS.find((t) => $(`tab-${t}`).getAttribute("aria-selected") === "true");
  }

  function selectTab(name, focus) {
    TABS.forEach((t) => {
      const on = t === name;
      const tab = $(`tab-${t}`);
      tab.setAttribute("aria-selected", on ? "true" : "false");
      tab.tabIndex = on ? 0 : -1;
      $(`panel-${t}`).hidden = !on;
      if (on && focus) tab.focus();
    });
  }

  function setupTabs() {
    TABS.forEach((t, i) => {
      const tab = $(`tab-${t}`);
      tab.addEventListener("click", () => selectTab(t, false));
      tab.addEventListener("keydown", (ev) => {
        let next = null;
        if (ev.key === "ArrowRight") next = (i + 1) % TABS.length;
        else if (ev.key === "ArrowLeft") next = (i - 1 + TABS.length) % TABS.length;
        else if (ev.key === "Home") next = 0;
        else if (ev.key === "End") next = TABS.length - 1;
        if (next !== null) {
          ev.preventDefault();
          selectTab(TABS[next], true);
        }
      });
    });
  }

  // ---------- file intake: input, drop, paste ----------
  function setPreview(which, file) {
    const img = $(`${which}-preview`);
    if (state.previews[which]) URL.revokeObjectURL(state.previews[which]);
    state.previews[which] = URL.createObjectURL(file);
    img.onload = () => { img.hidden = false; };
    img.onerror = () => { img.hidden = true; }; // not an image the browser can show: no broken icon
    img.hidden = true;
    img.src = state.previews[which];
  }

  function takeImage(which, file) {
    if (!file) return;
    state.files[which] = file;
    setPreview(which, file);
    clearError();
  }

  function isBatchFile(f) {
    return (f.type && f.type.startsWith("image/")) || /\.zip$/i.test(f.name || "");
  }

  function takeBatch(files) {
    const all = Array.from(files);
    state.files.batch = all.filter(isBatchFile);
    const skipped = all.filter((f) => !isBatchFile(f)).map((f) => f.name || "unnamed");
    const n = state.files.batch.length;
    let text = n ? `${n} file${n === 1 ? "" : "s"} chosen` : "";
    if (skipped.length) {
      const names = skipped.slice(0, 3).join(", ") + (skipped.length > 3 ? ", …" : "");
      text += `${text ? "; " : ""}skipped ${skipped.length} that ${skipped.length === 1 ? "is" : "are"} ` +
        `neither an image nor a .zip (${names})`;
    }
    $("batch-chosen").textContent = text;
  }

  function setupDropzone(zone, onFiles) {
    zone.addEventListener("dragover", (ev) => {
      ev.preventDefault();
      zone.classList.add("over");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (ev) => {
      ev.preventDefault();
      zone.classList.remove("over");
      const files = ev.dataTransfer && ev.dataTransfer.files;
      if (!files || !files.length) return;
      const input = zone.querySelector("input[type=file]");
      try { input.files = files; } catch (e) { /* older browsers: the label just stays stale */ }
      onFiles(files);
    });
  }

  function setupIntake() {
    const firstImage = (files) => Array.from(files).find((f) => f.type.startsWith("image/"));
    ["prompt", "analyze"].forEach((which) => {
      const input = $(`${which}-file`);
      input.addEventListener("change", () => takeImage(which, input.files[0]));
      setupDropzone(input.closest(".dropzone"), (files) => {
        const f = firstImage(files);
        if (f) takeImage(which, f);
        else showError("That is not an image file.");
      });
    });
    const batchInput = $("batch-files");
    batchInput.addEventListener("change", () => takeBatch(batchInput.files));
    setupDropzone(batchInput.closest(".dropzone"), takeBatch);
    // Stop a stray drop outside a zone from navigating away from the page.
    window.addEventListener("dragover", (ev) => ev.preventDefault());
    window.addEventListener("drop", (ev) => ev.preventDefault());

    document.addEventListener("paste", (ev) => {
      const tab = activeTab();
      if (tab !== "prompt" && tab !== "analyze") return;
      const items = ev.clipboardData ? Array.from(ev.clipboardData.items || []) : [];
      const item = items.find((it) => it.kind === "file" && it.type.startsWith("image/"));
      const file = item && item.getAsFile();
      if (!file) return; // plain text paste (e.g. into the caption field) goes through untouched
      ev.preventDefault();
      takeImage(tab, file);
    });
  }

  // ---------- busy state ----------
  async function busy(button, statusEl, label, work) {
    button.disabled = true;
    statusEl.textContent = label;
    clearError();
    try {
      await work();
      statusEl.textContent = "";
    } catch (err) {
      statusEl.textContent = "";
      showError(messageOf(err));
    } finally {
      button.disabled = false;
    }
  }

  // ---------- copy ----------
  async function copyFrom(textarea, button) {
    const text = textarea.value;
    let ok = false;
    try {
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(text);
        ok = true;
      }
    } catch (e) { /* fall back below */ }
    if (!ok) {
      textarea.focus();
      textarea.select();
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    }
    const original = button.dataset.label || button.textContent;
    button.dataset.label = original;
    button.textContent = ok ? "Copied" : "Press Ctrl+C";
    setTimeout(() => { button.textContent = original; }, 1500);
  }

  // ---------- prompt tab ----------
  function renderPhrases(tbody, phrases) {
    clear(tbody);
    (phrases || []).forEach((p) => {
      const textCell = el("td", null, [el("span", { text: p.text })]);
      if (p.hypothesis) {
        textCell.title = HYPOTHESIS_TIP;
        textCell.appendChild(hypothesisBadge());
      }
      tbody.appendChild(el("tr", null, [
        textCell,
        el("td", { text: p.category }),
        el("td", { className: "num", text: fmt(p.score, 3) }),
        el("td", { className: "num", text: typeof p.support === "number" ? fmt(p.support, 2) : "" }),
      ]));
    });
  }

  function renderResult(r) {
    $("prompt-output").hidden = false;
    $("prompt").value = r.prompt || "";
    const neg = r.negative;
    $("negative-block").hidden = !neg;
    $("negative-prompt").value = neg ? neg.prompt || "" : "";

    const tokens = $("tokens");
    const windowSize = Math.max(1, (r.token_budget || 77) - 2);
    tokens.textContent = `${r.token_count} / ${windowSize} tokens`;
    tokens.classList.toggle("over", r.token_count > 0.9 * windowSize);
    tokens.title = "Text tokens against the CLIP window (start/end tokens excluded)";

    const sim = $("similarity");
    sim.hidden = r.similarity === null || r.similarity === undefined;
    sim.textContent = sim.hidden ? "" : `similarity ${fmt(r.similarity, 3)}`;
    const cap = $("caption-used");
    cap.hidden = !r.caption;
    cap.textContent = r.caption ? `caption: “${r.caption}”${r.caption_truncated ? " (truncated)" : ""}` : "";

    $("weak-warning").hidden = !r.weak_match;
    // An empty prompt: no caption, and (as a rule) the relevance floor kept out every phrase.
    const empty = $("empty-warning");
    empty.hidden = !!r.prompt;
    empty.textContent = (r.rejected || []).length
      ? "Empty prompt: the relevance floor kept out every phrase (listed below), and there is no caption " +
        "to fall back on. Lower the floor under Advanced, or turn it off."
      : "Empty prompt: no phrase came back for this image.";
    renderPhrases($("phrases").tBodies[0], r.phrases);
    const spec = $("specificity");
    spec.hidden = typeof r.specificity !== "number";
    spec.textContent = spec.hidden ? "" : `specific ${Math.round(r.specificity * 100)}%`;
    spec.title = "Share of the phrases that the image supports on their own (they clear the relevance floor)";
    const rejected = r.rejected || [];
    $("rejected-block").hidden = !rejected.length;
    // Negative mode's chain seeks the phrases that lower the similarity: say so of what it kept out.
    $("rejected-note").textContent = r.mode === "negative" ? REJECTED_NOTE.lower : REJECTED_NOTE.raise;
    renderPhrases($("rejected").tBodies[0], rejected);
  }

  // A whole number within the input's min and max (the server's bounds), or nothing when empty.
  function intField(form, name, input, label) {
    const v = input.value.trim();
    if (v === "" && !input.validity.badInput) return;
    const n = Number(v);
    const lo = parseInt(input.min, 10);
    const hi = parseInt(input.max, 10);
    if (v === "" || !Number.isInteger(n) || (isFinite(lo) && n < lo) || (isFinite(hi) && n > hi)) {
      throw new Error(`${label}: give a whole number from ${lo} to ${hi} (this server's limits), ` +
        "or leave it empty for the default.");
    }
    form.append(name, String(n));
  }

  async function runPrompt() {
    const file = state.files.prompt;
    if (!file) throw new Error("Choose, drop or paste an image first.");
    checkSize(file);
    const form = new FormData();
    form.append("image", file, file.name || "pasted.png");
    form.append("mode", $("mode").value);
    form.append("negative", $("negative").checked ? "true" : "false");
    const caption = $("caption").value.trim();
    if (caption) form.append("caption", caption);
    intField(form, "max_tokens", $("max-tokens"), "Max tokens");
    intField(form, "beam", $("beam"), "Beams");
    const floor = $("floor").value.trim().toLowerCase();  // empty: the server's default; "off": none
    if (floor !== "") form.append("floor", floor);  // a bad value gets the server's one-line error
    renderResult(await postForm("/v1/interrogate", form));
  }

  // ---------- analyze tab ----------
  function titleCase(s) {
    return String(s).charAt(0).toUpperCase() + String(s).slice(1);
  }

  // Bar lengths of one category, in percent: proportional to the score when every score is
  // positive (real CLIP similarities), else spread between the lowest and the highest score.
  function barWidths(phrases) {
    const scores = phrases.map((p) => p.score).filter((x) => typeof x === "number" && isFinite(x));
    if (!scores.length) return () => 0;
    const hi = Math.max(...scores);
    const lo = Math.min(...scores);
    if (lo >= 0 && hi > 0) return (x) => Math.max(0, Math.min(100, (x / hi) * 100));
    if (hi === lo) return () => 100;
    return (x) => 20 + 80 * Math.max(0, Math.min(1, (x - lo) / (hi - lo)));
  }

  const FLOOR_TIP = "Its support (margin over its category's median, in standard deviations of the image's scores over the whole vocabulary) is under the relevance floor, which keeps it out of prompts.";

  function belowFloor(p, floor) {
    return typeof floor === "number" && typeof p.support === "number" && p.support < floor;
  }

  function renderAnalysis(data) {
    $("analyze-output").hidden = false;
    $("analyze-weak-warning").hidden = !data.weak_match;
    const root = $("analyze-results");
    clear(root);
    const cats = data.categories || {};

    Object.keys(cats).forEach((name) => {
      const block = el("section", { className: "category" }, [el("h3", { text: titleCase(name) })]);
      const width = barWidths(cats[name] || []);
      (cats[name] || []).forEach((p) => {
        const pct = width(p.score);
        // The fill sits behind the text, so a short bar never squeezes its label or score.
        const fill = el("span", { className: "bar-fill" });
        fill.style.width = `${pct.toFixed(1)}%`;
        const bar = el("div", { className: "bar" }, [
          fill,
          el("span", { className: "bar-label", text: p.text }),
          p.hypothesis ? hypothesisBadge() : null,
          belowFloor(p, data.floor) ? el("span", { className: "badge weak", text: "below floor", title: FLOOR_TIP }) : null,
          el("span", { className: "bar-score", text: fmt(p.score, 3) }),
        ]);
        if (p.hypothesis) bar.title = HYPOTHESIS_TIP;
        block.appendChild(el("div", { className: "bar-row" }, [bar]));
      });
      if (name === "artists") {
        block.appendChild(el("p", {
          className: "note small-note",
          text: "Artist names are hypotheses: the image resembles work tagged with these names. " +
            "It does not say who made it.",
        }));
      }
      root.appendChild(block);
    });
    if (!Object.keys(cats).length) root.appendChild(el("p", { className: "muted", text: "No phrases came back." }));
  }

  async function runAnalyze() {
    const file = state.files.analyze;
    if (!file) throw new Error("Choose, drop or paste an image first.");
    checkSize(file);
    const form = new FormData();
    form.append("image", file, file.name || "pasted.png");
    renderAnalysis(await postForm("/v1/analyze", form));
  }

  // ---------- batch tab ----------
  const DOWNLOADS = ["csv", "jsonl", "zip"];
  let batchDownloads = {};

  function renderBatch(data) {
    const tbody = $("batch-table").tBodies[0];
    clear(tbody);
    (data.records || []).forEach((rec) => {
      const ok = !!rec.ok;
      const row = el("tr", { className: ok ? "" : "error-row" }, [
        el("td", { text: rec.source || "?" }),
        el("td", { className: ok ? "ok" : "failed", text: ok ? "ok" : "error" }),
        el("td", { text: ok ? (rec.result && rec.result.prompt) || "" : rec.error || "failed" }),
      ]);
      tbody.appendChild(row);
    });
    const n = data.count || 0;
    $("batch-summary").textContent = `${n} image${n === 1 ? "" : "s"}: ${data.ok || 0} ok, ${data.failed || 0} failed`;
    batchDownloads = data.downloads || {};
    let any = false;
    DOWNLOADS.forEach((kind) => {
      const show = !!batchDownloads[kind] && n > 0;
      $(`download-${kind}`).hidden = !show;
      any = any || show;
    });
    $("batch-downloads").hidden = !any;
  }

  async function runBatch() {
    const files = state.files.batch;
    if (!files.length) throw new Error("Choose or drop some images or .zip archives first.");
    // One image is held to the per-image limit; a .zip only to the server's batch limit.
    files.filter((f) => !/\.zip$/i.test(f.name || "")).forEach(checkSize);
    const most = state.models && state.models.limits && state.models.limits.max_batch_files;
    if (most && files.length > most) {
      throw new Error(`${files.length} files chosen; the server takes up to ${most} in one batch.`);
    }
    const form = new FormData();
    files.forEach((f) => form.append("files", f, f.name));
    form.append("mode", $("batch-mode").value);
    form.append("negative", $("batch-negative").checked ? "true" : "false");
    const caption = $("batch-caption").value.trim();
    if (caption) form.append("caption", caption);
    const prefix = $("batch-prefix").value.trim();
    const suffix = $("batch-suffix").value.trim();
    if (prefix) form.append("prefix", prefix);
    if (suffix) form.append("suffix", suffix);
    renderBatch(await postForm("/v1/batch", form));
  }

  async function download(kind) {
    const path = batchDownloads[kind];
    if (!path) return;
    try {
      clearError();
      const blob = await (await request("GET", path)).blob();
      const url = URL.createObjectURL(blob);
      const a = el("a");
      a.href = url;
      a.download = `image2prompt-${path.split("/").pop() || `batch.${kind}`}`; // as the server names it
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (err) {
      showError(messageOf(err));
    }
  }

  // ---------- wire up ----------
  function init() {
    setupTabs();
    setupAuth();
    setupIntake();
    $("run").addEventListener("click", () => busy($("run"), $("status"), "Working…", runPrompt));
    $("analyze").addEventListener("click", () => busy($("analyze"), $("analyze-status"), "Working…", runAnalyze));
    $("batch-run").addEventListener("click", () => busy($("batch-run"), $("batch-status"), "Working…", runBatch));
    $("copy").addEventListener("click", () => copyFrom($("prompt"), $("copy")));
    $("copy-negative").addEventListener("click", () => copyFrom($("negative-prompt"), $("copy-negative")));
    DOWNLOADS.forEach((kind) => $(`download-${kind}`).addEventListener("click", () => download(kind)));
    loadBounds();
    loadModels();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
