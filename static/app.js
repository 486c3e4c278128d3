// Progressive enhancement of the server-rendered pages; every form also works without it.
// With this script: files are checked (type, size) and large photos shrunk before upload, the
// upload shows progress, the photo is sent to /api/predict and the result page is rendered in
// place under its own link (/result?r=..., signed by the server, which hands it over in the
// answer's result_link), with the photo, face thumbnails and downloads made here in the
// browser. Nothing is kept anywhere but this tab's history entry.
(function () {
  "use strict";

  const EXTENSIONS = /\.(jpe?g|png|webp|avif|gif|bmp)$/i;
  const LABEL_PX = 13; // box labels, in screen pixels

  let chosen = null; // {file, prepared: Promise<{upload, display}>}
  let shownUrl = location.pathname + location.search;
  let stream = null; // the webcam, only while its panel is open

  const byId = (id) => document.getElementById(id);

  function formatSize(bytes) {
    return bytes >= 1024 * 1024 ? (bytes / 1024 / 1024).toFixed(1) + " MB" : Math.ceil(bytes / 1024) + " KB";
  }

  // --- messages and the busy state -------------------------------------------------------

  function say(form, text) {
    const status = form.querySelector("#upload-status");
    if (status) status.textContent = text;
  }

  function showError(form, text) {
    const box = form.querySelector("#form-error");
    box.textContent = text;
    box.hidden = false;
    say(form, "");
  }

  function clearError(form) {
    const box = form.querySelector("#form-error");
    box.hidden = true;
    box.textContent = "";
  }

  function setBusy(form, busy) {
    const button = form.querySelector("#submit-button");
    const progress = form.querySelector("#upload-progress");
    form.setAttribute("aria-busy", busy ? "true" : "false");
    button.disabled = busy;
    button.textContent = busy ? "Predicting..." : "Predict age group";
    progress.hidden = !busy;
    if (busy) { progress.value = 0; progress.textContent = "0%"; }
  }

  // --- choosing a file -------------------------------------------------------------------

  // An iPhone's HEIC photo: the server cannot read it, but a browser that can (Safari) sends a
  // JPEG copy made here (prepare).
  function isHeic(file) {
    return /^image\/hei[cf]/.test(file.type) || /\.hei[cf]$/i.test(file.name || "");
  }

  function typeProblem(form, file) {
    const types = form.dataset.types.split(",");
    if (types.includes(file.type) || (!file.type && EXTENSIONS.test(file.name)) || isHeic(file)) return null;
    return "This file type is not supported. Please upload a " + form.dataset.formatNames + " photo.";
  }

  function sizeProblem(form, blob) {
    if (blob.size <= Number(form.dataset.maxBytes)) return null;
    return "The upload is larger than the limit of " + form.dataset.maxMb + " MB.";
  }

  function hidePreview(form) {
    const preview = form.querySelector("#preview");
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.removeAttribute("src");
    preview.hidden = true;
  }

  function canvasFor(source, width, height) {
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    const context = canvas.getContext("2d");
    context.fillStyle = "#fff"; // transparent pixels become white, as on the server
    context.fillRect(0, 0, width, height);
    context.drawImage(source, 0, 0, width, height);
    return canvas;
  }

  function toBlob(canvas, type, quality) {
    return new Promise((resolve) => canvas.toBlob(resolve, type, quality));
  }

  // The photo to upload (shrunk to the server's working size when larger, upright by its EXIF
  // orientation; HEIC always as a JPEG) and a copy to display. A file the browser cannot decode
  // goes up as it is (the server says what is wrong with it), except HEIC: the server cannot
  // read that, so its message is given here.
  async function prepare(form, file) {
    let bitmap;
    try {
      bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
    } catch (error) {
      if (isHeic(file)) return { problem: form.dataset.heicMessage };
      return { upload: file, display: null };
    }
    const scale = Math.min(1, Number(form.dataset.workSize) / Math.max(bitmap.width, bitmap.height));
    const canvas = canvasFor(bitmap, Math.round(bitmap.width * scale), Math.round(bitmap.height * scale));
    bitmap.close();
    let upload = file;
    if (scale < 1 || isHeic(file)) {
      const blob = await toBlob(canvas, "image/jpeg", 0.9);
      upload = new File([blob], file.name.replace(/\.[^.]*$/, "") + ".jpg", { type: "image/jpeg" });
    }
    return { upload: upload, display: canvas.toDataURL("image/jpeg", 0.85), shrunk: scale < 1 };
  }

  function choose(form, files, how) {
    if (!files || !files.length) return false;
    const file = files[0];
    const input = form.querySelector("#image-input");
    clearError(form);
    const problem = typeProblem(form, file);
    if (problem) {
      chosen = null;
      input.value = "";
      hidePreview(form);
      showError(form, problem + " (" + (file.name || "pasted data") + ")");
      return false;
    }
    if (input.files[0] !== file) {
      const transfer = new DataTransfer();
      transfer.items.add(file);
      input.files = transfer.files;
    }
    const preview = form.querySelector("#preview");
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.src = URL.createObjectURL(file);
    preview.hidden = false;
    const note = files.length > 1 ? files.length + " files " + how + "; only the first is used. " : "";
    const entry = { file: file, prepared: prepare(form, file) };
    chosen = entry;
    say(form, note + (file.name || "The image") + " (" + formatSize(file.size) + ") is ready.");
    entry.prepared.then((prepared) => {
      if (chosen !== entry) return;
      const problem = prepared.problem || sizeProblem(form, prepared.upload);
      if (problem) {
        chosen = null;
        input.value = "";
        hidePreview(form);
        showError(form, problem + " (" + (prepared.problem ? file.name : formatSize(file.size)) + ")");
      }
    });
    return true;
  }

  // --- sending and showing ---------------------------------------------------------------

  function send(form, file) {
    return new Promise((resolve, reject) => {
      // XMLHttpRequest, not fetch: only it reports upload progress.
      const request = new XMLHttpRequest();
      const progress = form.querySelector("#upload-progress");
      let announced = -1;
      request.open("POST", form.dataset.api);
      request.responseType = "json";
      request.upload.addEventListener("progress", (event) => {
        if (!event.lengthComputable) return;
        const percent = Math.round((100 * event.loaded) / event.total);
        progress.value = percent;
        progress.textContent = percent + "%";
        if (percent >= announced + 25) { announced = percent; say(form, "Uploading: " + percent + "%"); }
      });
      request.upload.addEventListener("load", () => say(form, "Uploaded. Finding faces..."));
      request.addEventListener("load", () => resolve({ status: request.status, body: request.response }));
      request.addEventListener("error", () => reject(new Error("The connection failed. Please try again.")));
      const data = new FormData();
      data.append("image", file, file.name || "photo.jpg");
      request.send(data);
    });
  }

  async function show(url, state, push) {
    const response = await fetch(url, { headers: { Accept: "text/html" } });
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const main = page.getElementById("main");
    if (!main) throw new Error("The page could not be shown. Please try again.");
    if (push) history.pushState(state, "", url);
    shownUrl = url;
    document.title = page.title;
    byId("main").replaceWith(document.adoptNode(main));
    init();
    const title = byId("result-title") || document.querySelector("main h1");
    if (title && push) { title.setAttribute("tabindex", "-1"); title.focus(); }
  }

  async function run(form, entry) {
    clearError(form);
    setBusy(form, true);
    say(form, "Preparing the photo...");
    try {
      const prepared = await entry.prepared;
      if (prepared.problem) throw new Error(prepared.problem);
      const tooLarge = sizeProblem(form, prepared.upload);
      if (tooLarge) throw new Error(tooLarge);
      const answer = await send(form, prepared.upload);
      if (answer.status !== 200) {
        const error = answer.body && answer.body.error;
        throw new Error(error ? error.message : "The server could not answer (" + answer.status + ").");
      }
      say(form, "Done.");
      // The link is signed by the server (agegroup/links.py): the browser never holds the key.
      await show(answer.body.result_link, { photo: prepared.display, api: answer.body }, true);
    } catch (error) {
      setBusy(form, false);
      showError(form, error.message);
    }
  }

  // --- the result page ---------------------------------------------------------------------

  function faceNumber(element) {
    return element.getAttribute("data-face");
  }

  // A face is highlighted (box and card) while hovered or focused, and once clicked or tapped
  // it stays highlighted until another is.
  function linkBoxesAndCards(section) {
    let pinned = null;
    let hovered = null;
    const paint = () => {
      section.querySelectorAll(".face-box, .face").forEach((element) => {
        const number = faceNumber(element);
        element.classList.toggle("active", number === pinned || number === hovered);
      });
    };
    section.querySelectorAll(".face-box, .face[data-box]").forEach((element) => {
      const number = faceNumber(element);
      const hover = (on) => () => { hovered = on ? number : null; paint(); };
      element.addEventListener("mouseenter", hover(true));
      element.addEventListener("mouseleave", hover(false));
      element.addEventListener("focusin", hover(true));
      element.addEventListener("focusout", hover(false));
      element.addEventListener("click", (event) => {
        if (event.target.closest("summary")) return;
        pinned = number;
        paint();
        if (element.classList.contains("face-box")) {
          event.preventDefault(); // no #face-n history entry: Back leaves the result
          byId("face-" + number).scrollIntoView({ block: "nearest" });
        } else {
          const box = section.querySelector('.face-box[data-face="' + number + '"]');
          if (box) box.scrollIntoView({ block: "nearest" });
        }
      });
    });
  }

  // Box labels stay LABEL_PX high on screen, whatever the photo's size.
  function fitLabels(svg) {
    const width = svg.viewBox.baseVal.width;
    const height = svg.viewBox.baseVal.height;
    const shown = svg.getBoundingClientRect().width;
    if (!shown) return;
    const size = (LABEL_PX * width) / shown;
    svg.querySelectorAll(".face-box").forEach((group) => {
      const box = group.querySelector(".box");
      const tag = group.querySelector(".tag");
      const label = group.querySelector(".label");
      label.setAttribute("font-size", size.toFixed(2));
      const tagWidth = label.getComputedTextLength() + size * 0.8;
      // Above the box when there is room, else inside it; never past the photo's edges.
      const x = Math.max(0, Math.min(box.x.baseVal.value, width - tagWidth));
      const y = box.y.baseVal.value;
      const tagY = Math.min(y >= size * 1.5 ? y - size * 1.5 : y, height - size * 1.5);
      label.setAttribute("x", (x + size * 0.4).toFixed(2));
      label.setAttribute("y", (tagY + size * 1.1).toFixed(2));
      tag.setAttribute("x", x.toFixed(2));
      tag.setAttribute("y", tagY.toFixed(2));
      tag.setAttribute("height", (size * 1.5).toFixed(2));
      tag.setAttribute("width", tagWidth.toFixed(2));
    });
  }

  function boxOf(card) {
    return card.getAttribute("data-box").split(",").map(Number);
  }

  function makeThumbnails(section, photo) {
    const scale = photo.naturalWidth / Number(section.dataset.width);
    section.querySelectorAll(".face[data-box]").forEach((card) => {
      const [x, y, w, h] = boxOf(card).map((v) => v * scale);
      const side = Math.max(w, h) * 1.2;
      const canvas = document.createElement("canvas");
      canvas.width = canvas.height = 112;
      canvas.getContext("2d").drawImage(photo, x + w / 2 - side / 2, y + h / 2 - side / 2, side, side, 0, 0, 112, 112);
      const thumb = card.querySelector(".thumb");
      thumb.src = canvas.toDataURL("image/jpeg", 0.85);
      thumb.hidden = false;
    });
  }

  // The photo with its boxes and labels drawn in, as a PNG to download.
  function annotatedPng(section, photo) {
    const canvas = canvasFor(photo, photo.naturalWidth, photo.naturalHeight);
    const context = canvas.getContext("2d");
    const scale = photo.naturalWidth / Number(section.dataset.width);
    const size = Math.max(14, Math.round(Math.max(canvas.width, canvas.height) / 45));
    context.font = "bold " + size + "px system-ui, sans-serif";
    context.lineWidth = Math.max(2, size / 6);
    section.querySelectorAll(".face[data-box]").forEach((card) => {
      const [x, y, w, h] = boxOf(card).map((v) => v * scale);
      const label = faceNumber(card) + " · " + card.querySelector(".bucket").textContent;
      const tagY = y >= size * 1.5 ? y - size * 1.5 : y;
      context.strokeStyle = "#f28c28";
      context.strokeRect(x, y, w, h);
      context.fillStyle = "#1d2330";
      context.fillRect(x, tagY, context.measureText(label).width + size * 0.8, size * 1.5);
      context.fillStyle = "#fff";
      context.fillText(label, x + size * 0.4, tagY + size * 1.1);
    });
    return toBlob(canvas, "image/png");
  }

  function enhanceResult(section, state) {
    const downloads = byId("downloads");
    const data = (state && state.api) || JSON.parse(section.dataset.result);
    const json = byId("download-json");
    json.href = URL.createObjectURL(new Blob([JSON.stringify(data, null, 2)], { type: "application/json" }));
    downloads.hidden = false;
    linkBoxesAndCards(section);
    const figure = byId("photo-figure");
    if (!figure || !state || !state.photo) return;
    const photo = byId("photo");
    const svg = byId("face-boxes");
    photo.addEventListener("load", () => {
      figure.hidden = false;
      byId("photo-note").hidden = true;
      fitLabels(svg);
      new ResizeObserver(() => fitLabels(svg)).observe(photo);
      makeThumbnails(section, photo);
      annotatedPng(section, photo).then((blob) => {
        const link = byId("download-png");
        if (!link || !section.isConnected) return; // Back or another photo came first
        link.href = URL.createObjectURL(blob);
        link.hidden = false;
      });
    }, { once: true });
    photo.src = state.photo;
  }

  // --- inputs: file field, drop, paste, examples, camera -----------------------------------

  function currentForm() {
    return byId("upload-form");
  }

  async function chooseExample(form, button) {
    const response = await fetch(button.dataset.src);
    const blob = await response.blob();
    const file = new File([blob], button.dataset.file, { type: blob.type });
    if (choose(form, [file], "chosen")) run(form, chosen);
  }

  function stopCamera() {
    if (stream) stream.getTracks().forEach((track) => track.stop());
    stream = null;
    const video = byId("webcam-video");
    if (video) { video.srcObject = null; video.hidden = true; }
  }

  function bindWebcam(form) {
    const button = byId("webcam-button");
    const panel = byId("webcam");
    if (!button || !panel || !(navigator.mediaDevices && navigator.mediaDevices.getUserMedia)) return;
    const start = byId("webcam-start");
    const snap = byId("webcam-snap");
    const video = byId("webcam-video");
    const close = () => {
      stopCamera();
      panel.hidden = true;
      start.hidden = false;
      snap.hidden = true;
    };
    button.hidden = false;
    button.addEventListener("click", () => { panel.hidden = false; start.focus(); });
    byId("webcam-cancel").addEventListener("click", () => { close(); button.focus(); });
    start.addEventListener("click", async () => {
      try {
        stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
      } catch (error) {
        showError(form, "The camera could not be turned on (" + error.name + ").");
        return;
      }
      video.srcObject = stream;
      video.hidden = false;
      start.hidden = true;
      snap.hidden = false;
      snap.focus();
    });
    snap.addEventListener("click", async () => {
      if (!video.videoWidth) return;
      const blob = await toBlob(canvasFor(video, video.videoWidth, video.videoHeight), "image/jpeg", 0.9);
      close();
      const file = new File([blob], "webcam.jpg", { type: "image/jpeg" });
      if (choose(form, [file], "taken")) run(form, chosen);
    });
  }

  function bindForm(form) {
    const input = form.querySelector("#image-input");
    input.addEventListener("change", () => choose(form, input.files, "chosen"));
    const camera = byId("camera-input");
    if (camera && window.matchMedia("(pointer: coarse)").matches) {
      camera.disabled = false; // disabled without this script, so the plain form sends one file
      byId("camera-label").hidden = false;
      camera.addEventListener("change", () => {
        if (choose(form, camera.files, "taken")) camera.value = "";
      });
    }
    form.querySelector(".paste-hint").hidden = false;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (!chosen) { showError(form, "Choose a photo first."); input.focus(); return; }
      run(form, chosen);
    });
    // After Back, the browser may restore the chosen file: show it again.
    if (input.files.length) choose(form, input.files, "chosen");
    bindWebcam(form);
  }

  function init() {
    chosen = null;
    stopCamera();
    const form = currentForm();
    if (form) bindForm(form);
    document.querySelectorAll(".example[data-src]").forEach((button) => {
      button.addEventListener("click", (event) => {
        event.preventDefault();
        chooseExample(currentForm(), button).catch((error) => showError(currentForm(), error.message));
      });
    });
    const section = byId("result");
    if (section) enhanceResult(section, history.state);
  }

  ["dragenter", "dragover"].forEach((name) => {
    document.addEventListener(name, (event) => {
      event.preventDefault();
      const zone = byId("drop-zone");
      if (zone) zone.classList.add("dragging");
    });
  });
  ["dragleave", "drop"].forEach((name) => {
    document.addEventListener(name, (event) => {
      event.preventDefault();
      const zone = byId("drop-zone");
      if (zone) zone.classList.remove("dragging");
    });
  });
  document.addEventListener("drop", (event) => {
    const form = currentForm();
    if (form && event.dataTransfer) choose(form, event.dataTransfer.files, "dropped");
  });
  document.addEventListener("paste", (event) => {
    const form = currentForm();
    const files = event.clipboardData && event.clipboardData.files;
    if (!form || !files || !files.length) return;
    event.preventDefault();
    choose(form, files, "pasted");
  });
  window.addEventListener("popstate", () => {
    const url = location.pathname + location.search;
    if (url === shownUrl) return; // only the #fragment changed
    show(url, history.state, false).catch(() => location.reload());
  });
  window.addEventListener("pageshow", (event) => {
    const form = currentForm();
    if (!event.persisted || !form) return;
    setBusy(form, false);
  });
  // What static/batch.js (several photos at once) shares with this script.
  window.ageGroupPage = { prepare: prepare, typeProblem: typeProblem, sizeProblem: sizeProblem, show: show };
  init();
})();
