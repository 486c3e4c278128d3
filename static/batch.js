// Several photos at once (templates/_batch.html): up to 50 chosen, dropped, pasted or from a
// folder, each checked and shrunk as static/app.js does for one photo (its functions, shared
// through window.ageGroupPage), then sent to /api/predict one after another, so the server only
// ever sees ordinary requests under its usual limits. A 429 or 503 waits as Retry-After says
// and the photo is sent again. The results form a table (a row opens that photo's full result)
// and a CSV with one row per face, the columns of `agegroup predict` (agegroup/rows.py).
// Everything stays in this tab's memory; nothing is stored on the server.
(function () {
  "use strict";

  // agegroup/rows.py COLUMNS, in order (the browser test compares the header).
  const BUCKETS = ["0-10", "11-20", "21-30", "31-40", "41-50", "51-60", "61+"];
  const COLUMNS = ["path", "face", "x", "y", "width", "height", "face_found", "low_resolution",
    "group", "confidence"].concat(BUCKETS.map((b) => "p_" + b),
    ["age", "age_low", "age_high", "model", "error_code", "error_message"]);
  const PHOTO_NAME = /\.(jpe?g|jpe|png|webp|avif|gif|bmp|heic|heif)$/i;
  const DEFAULT_WAIT_S = 5; // a 429/503 without Retry-After
  const MAX_WAIT_S = 300;
  const MAX_TRIES = 20; // per photo, counting waits for a busy or limiting server

  // The batch lives here, not in the page: app.js replaces <main> when a full result is shown
  // and again on Back, and the table is drawn anew from this.
  const batch = { items: [], total: 0, running: false, controller: null, csvUrl: null, note: "" };

  const byId = (id) => document.getElementById(id);
  const page = () => window.ageGroupPage;

  // --- choosing photos ---------------------------------------------------------------------

  function photoLike(file) {
    return file.type.startsWith("image/") || PHOTO_NAME.test(file.name);
  }

  // Files of a dropped folder (Chromium, Firefox, Safari: webkitGetAsEntry), walked in name
  // order; hidden files and files without a photo's name are left out, as the command does.
  function readEntries(reader) {
    return new Promise((resolve, reject) => reader.readEntries(resolve, reject));
  }

  async function walk(entry, prefix, found) {
    if (entry.name.startsWith(".")) return;
    if (entry.isFile) {
      const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
      if (photoLike(file)) found.push({ file: file, name: prefix + file.name });
      return;
    }
    const reader = entry.createReader();
    const entries = [];
    for (let chunk = await readEntries(reader); chunk.length; chunk = await readEntries(reader)) {
      entries.push(...chunk);
    }
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const child of entries) await walk(child, prefix + entry.name + "/", found);
  }

  async function droppedFiles(transfer) {
    const entries = [...(transfer.items || [])]
      .map((item) => (item.kind === "file" && item.webkitGetAsEntry ? item.webkitGetAsEntry() : null));
    if (!entries.some((entry) => entry && entry.isDirectory)) {
      return [...transfer.files].map((file) => ({ file: file, name: file.name }));
    }
    const found = [];
    for (const entry of entries) if (entry) await walk(entry, "", found);
    return found;
  }

  function fromInput(input, folder) {
    const files = [...input.files].map((file) => ({ file: file, name: file.webkitRelativePath || file.name }));
    input.value = "";
    return folder ? files.filter((f) => photoLike(f.file) && !/(^|\/)\./.test(f.name)) : files;
  }

  // --- sending, one photo after another ----------------------------------------------------

  function sleep(seconds, signal) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(resolve, seconds * 1000);
      signal.addEventListener("abort", () => { clearTimeout(timer); reject(signal.reason); }, { once: true });
    });
  }

  // Retry-After in seconds (or as an HTTP date), within 0-MAX_WAIT_S.
  function retryAfter(response) {
    const header = response.headers.get("Retry-After");
    let seconds = Number(header);
    if (header && Number.isNaN(seconds)) seconds = (Date.parse(header) - Date.now()) / 1000;
    if (!header || Number.isNaN(seconds)) seconds = DEFAULT_WAIT_S;
    return Math.min(MAX_WAIT_S, Math.max(0, Math.ceil(seconds)));
  }

  async function post(form, upload, signal) {
    const data = new FormData();
    data.append("image", upload, upload.name || "photo.jpg");
    const response = await fetch(form.dataset.api, { method: "POST", body: data, signal: signal });
    let body = null;
    try { body = await response.json(); } catch (error) { body = null; }
    return { response: response, body: body };
  }

  function failure(code, message) {
    return { error: { code: code, message: message } };
  }

  // The API's answer for one photo, or its error; waits out 429 and 503 as asked.
  async function predict(form, item, signal) {
    for (let tries = 1; ; tries++) {
      let answer;
      try {
        answer = await post(form, item.upload, signal);
      } catch (error) {
        if (signal.aborted) throw error;
        if (tries >= 3) return failure("connection_failed", "The connection failed.");
        await sleep(DEFAULT_WAIT_S, signal);
        continue;
      }
      const { response, body } = answer;
      if (response.ok && body && body.faces) return { answer: body };
      const error = (body && body.error) || { code: "http_" + response.status, message: "The server could not answer (" + response.status + ")." };
      if ((response.status === 429 || response.status === 503) && tries < MAX_TRIES) {
        const seconds = retryAfter(response);
        const why = response.status === 429 ? "the server asks to slow down" : "the server is busy";
        say("Waiting " + seconds + " s: " + why + ". " + progressText());
        await sleep(seconds, signal);
        continue;
      }
      return failure(error.code, error.message);
    }
  }

  async function prepareItem(form, item) {
    const shared = page();
    const wrongType = shared.typeProblem(form, item.file);
    if (wrongType) return failure("unsupported_type", wrongType);
    const prepared = await shared.prepare(form, item.file);
    if (prepared.problem) return failure("unsupported_type", prepared.problem);
    const tooLarge = shared.sizeProblem(form, prepared.upload);
    if (tooLarge) return failure("too_large", tooLarge);
    item.upload = prepared.upload;
    item.display = prepared.display;
    item.thumb = prepared.display ? await thumbnail(prepared.display) : null;
    return null;
  }

  function thumbnail(url) {
    return new Promise((resolve) => {
      const image = new Image();
      image.addEventListener("load", () => {
        const side = 96;
        const scale = side / Math.max(image.naturalWidth, image.naturalHeight);
        const canvas = document.createElement("canvas");
        canvas.width = Math.max(1, Math.round(image.naturalWidth * scale));
        canvas.height = Math.max(1, Math.round(image.naturalHeight * scale));
        canvas.getContext("2d").drawImage(image, 0, 0, canvas.width, canvas.height);
        resolve(canvas.toDataURL("image/jpeg", 0.8));
      }, { once: true });
      image.addEventListener("error", () => resolve(null), { once: true });
      image.src = url;
    });
  }

  async function runBatch(chosen) {
    const form = byId("upload-form");
    const limit = Number(byId("batch").dataset.maxPhotos);
    const files = chosen.slice(0, limit);
    batch.note = chosen.length > limit
      ? "Only the first " + limit + " of " + chosen.length + " photos are used; send the rest in another batch. "
      : "";
    batch.items = [];
    batch.total = files.length;
    batch.running = true;
    batch.controller = new AbortController();
    const signal = batch.controller.signal;
    render();
    try {
      for (const chosenFile of files) {
        const item = { name: chosenFile.name, file: chosenFile.file };
        say(progressText());
        const problem = await prepareItem(form, item);
        Object.assign(item, problem || (await predict(form, item, signal)));
        item.file = null;
        item.upload = null;
        batch.items.push(item);
        addRow(item, batch.items.length - 1);
        updateProgress();
      }
      batch.running = false;
      say(summary("Done"));
    } catch (error) {
      batch.running = false;
      if (!signal.aborted) throw error;
      say(summary("Cancelled"));
    } finally {
      batch.controller = null;
      showRunning();
      makeCsv();
    }
  }

  // --- the page ------------------------------------------------------------------------------

  function say(text) {
    const status = byId("batch-status");
    if (status) status.textContent = text;
  }

  function progressText() {
    return batch.note + batch.items.length + " of " + batch.total + " photos done.";
  }

  function summary(how) {
    const failed = batch.items.filter((item) => item.error).length;
    let text = how + ": " + batch.items.length + " of " + batch.total + " photos";
    if (failed) text += ", " + failed + " could not be read";
    return batch.note + text + ".";
  }

  function updateProgress() {
    const progress = byId("batch-progress");
    if (!progress) return;
    progress.max = Math.max(1, batch.total);
    progress.value = batch.items.length;
    say(progressText());
  }

  function showRunning() {
    const running = byId("batch-running");
    if (!running) return;
    running.hidden = !batch.total;
    byId("batch-cancel").hidden = !batch.running;
    byId("batch-files").disabled = batch.running;
    byId("batch-folder").disabled = batch.running;
    byId("batch-results").hidden = !batch.items.length;
    byId("batch-csv").hidden = batch.running || !batch.items.length;
  }

  function render() {
    const body = document.querySelector("#batch-table tbody");
    if (!body) return;
    body.replaceChildren();
    batch.items.forEach(addRow);
    updateProgress();
    if (!batch.running) say(batch.total ? summary(batch.items.length < batch.total ? "Cancelled" : "Done") : "");
    showRunning();
    makeCsv();
  }

  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  function percent(p) {
    return Math.round(p * 100) + "%";
  }

  function faceText(face) {
    let text = percent(face.confidence);
    if (face.age && face.age.estimate != null) text += ", about " + Math.round(face.age.estimate);
    return text;
  }

  function notes(answer) {
    const found = answer.faces.filter((face) => face.face_found);
    const small = answer.faces.map((face, i) => (face.low_resolution ? i + 1 : null)).filter((n) => n);
    const list = [];
    if (!found.length) list.push("No face found: the whole photo was read as one face (unreliable).");
    if (small.length) list.push((small.length === 1 ? "Face " : "Faces ") + small.join(", ") + ": low resolution.");
    return list.join(" ");
  }

  function addRow(item, index) {
    const body = document.querySelector("#batch-table tbody");
    if (!body) return;
    const row = element("tr");
    row.dataset.index = index;
    const thumbCell = element("td");
    if (item.thumb) {
      const image = element("img", null, "thumb");
      image.src = item.thumb;
      image.alt = "";
      thumbCell.append(image);
    }
    const nameCell = element("th");
    nameCell.scope = "row";
    const faces = element("td");
    const groups = element("td");
    const flags = element("td");
    if (item.error) {
      row.className = "error-row";
      nameCell.textContent = item.name;
      faces.textContent = "—";
      groups.textContent = "Not read";
      flags.textContent = item.error.message + " (" + item.error.code + ")";
    } else {
      const answer = item.answer;
      const link = element("a", item.name);
      link.href = answer.result_link;
      link.addEventListener("click", (event) => openResult(event, item));
      nameCell.append(link);
      const found = answer.faces.filter((face) => face.face_found).length;
      faces.textContent = String(found);
      const list = element("ul");
      answer.faces.forEach((face, i) => {
        const entry = element("li");
        const label = found ? (i + 1) + ": " : "Whole photo: ";
        entry.append(label, element("span", face.bucket, "bucket"), " " + faceText(face));
        list.append(entry);
      });
      groups.append(list);
      flags.textContent = notes(answer);
    }
    row.append(thumbCell, nameCell, faces, groups, flags);
    body.append(row);
    byId("batch-results").hidden = false;
  }

  // The photo's full result, rendered in place by app.js with the photo; Back returns here.
  function openResult(event, item) {
    const shared = page();
    if (!shared || event.ctrlKey || event.metaKey || event.shiftKey || event.button) return;
    event.preventDefault();
    shared.show(item.answer.result_link, { photo: item.display, api: item.answer }, true)
      .catch(() => { location.href = item.answer.result_link; });
  }

  // --- CSV --------------------------------------------------------------------------------

  function rowsOf(item) {
    const blank = () => Object.fromEntries(COLUMNS.map((column) => [column, null]));
    if (item.error) {
      return [Object.assign(blank(), { path: item.name, error_code: item.error.code, error_message: item.error.message })];
    }
    const answer = item.answer;
    return answer.faces.map((face, i) => {
      const box = face.box || [null, null, null, null];
      const age = face.age || {};
      const interval = age.interval || [null, null];
      const row = Object.assign(blank(), {
        path: item.name, face: i + 1, x: box[0], y: box[1], width: box[2], height: box[3],
        face_found: face.face_found, low_resolution: face.low_resolution, group: face.bucket,
        confidence: face.confidence, age: age.estimate == null ? null : age.estimate,
        age_low: interval[0], age_high: interval[1],
        model: answer.model.name + " " + answer.model.version,
      });
      BUCKETS.forEach((bucket) => { row["p_" + bucket] = face.probabilities[bucket]; });
      return row;
    });
  }

  function csvCell(value) {
    if (value === null || value === undefined) return "";
    const text = String(value);
    return /[",\n\r]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }

  function makeCsv() {
    const link = byId("batch-csv");
    if (!link) return;
    if (batch.csvUrl) URL.revokeObjectURL(batch.csvUrl);
    const lines = [COLUMNS.join(",")];
    batch.items.forEach((item) => rowsOf(item).forEach((row) => lines.push(COLUMNS.map((c) => csvCell(row[c])).join(","))));
    batch.csvUrl = URL.createObjectURL(new Blob([lines.join("\n") + "\n"], { type: "text/csv" }));
    link.href = batch.csvUrl;
  }

  // --- binding -----------------------------------------------------------------------------

  function start(files) {
    const error = byId("batch-error");
    error.hidden = true;
    if (batch.running) {
      error.textContent = "Wait for these photos to finish, or cancel them first.";
      error.hidden = false;
      return;
    }
    if (!files.length) {
      error.textContent = "No photos were found there.";
      error.hidden = false;
      return;
    }
    runBatch(files).catch((problem) => {
      error.textContent = problem.message;
      error.hidden = false;
    });
  }

  function bind(section) {
    if (section.dataset.bound) return;
    section.dataset.bound = "1";
    section.hidden = false;
    const zone = byId("batch-drop");
    const files = byId("batch-files");
    const folder = byId("batch-folder");
    files.addEventListener("change", () => start(fromInput(files, false)));
    if ("webkitdirectory" in folder) {
      byId("batch-folder-label").hidden = false;
      folder.addEventListener("change", () => start(fromInput(folder, true)));
    }
    // Claimed here, so that app.js's page-wide drop (one photo for the form) does not see it.
    ["dragenter", "dragover"].forEach((name) => zone.addEventListener(name, (event) => {
      event.preventDefault();
      event.stopPropagation();
      zone.classList.add("dragging");
    }));
    zone.addEventListener("dragleave", (event) => {
      event.stopPropagation();
      if (!zone.contains(event.relatedTarget)) zone.classList.remove("dragging");
    });
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      event.stopPropagation();
      zone.classList.remove("dragging");
      if (event.dataTransfer) droppedFiles(event.dataTransfer).then(start);
    });
    zone.addEventListener("paste", (event) => {
      const pasted = event.clipboardData && event.clipboardData.files;
      if (!pasted || !pasted.length) return;
      event.preventDefault();
      event.stopPropagation();
      start([...pasted].map((file, i) => ({ file: file, name: file.name || "pasted-" + (i + 1) + ".png" })));
    });
    byId("batch-cancel").addEventListener("click", () => {
      if (batch.controller) batch.controller.abort(new DOMException("Cancelled", "AbortError"));
    });
    render();
  }

  function bindIfShown() {
    const section = byId("batch");
    if (section && page()) bind(section);
  }

  document.addEventListener("DOMContentLoaded", () => {
    bindIfShown();
    // app.js swaps <main> for a full result and back: the section comes back unbound.
    new MutationObserver(bindIfShown).observe(document.body, { childList: true });
  });
})();
