// Progressive enhancement only: drag-and-drop onto the page and a preview of the chosen photo.
// The form works without this script.
(function () {
  "use strict";
  const input = document.getElementById("image-input");
  const zone = document.getElementById("drop-zone");
  const preview = document.getElementById("preview");
  const form = document.getElementById("upload-form");
  if (!input || !zone) return;

  function showPreview(file) {
    if (!preview || !file || !file.type.startsWith("image/")) return;
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.src = URL.createObjectURL(file);
    preview.hidden = false;
  }

  input.addEventListener("change", function () { showPreview(input.files[0]); });

  ["dragenter", "dragover"].forEach(function (name) {
    document.addEventListener(name, function (event) {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  });
  ["dragleave", "drop"].forEach(function (name) {
    document.addEventListener(name, function (event) {
      event.preventDefault();
      zone.classList.remove("dragging");
    });
  });
  document.addEventListener("drop", function (event) {
    const files = event.dataTransfer && event.dataTransfer.files;
    if (!files || !files.length) return;
    const transfer = new DataTransfer();
    transfer.items.add(files[0]);
    input.files = transfer.files;
    showPreview(files[0]);
  });
  if (form) {
    form.addEventListener("submit", function () {
      const button = document.getElementById("submit-button");
      if (button) { button.disabled = true; button.textContent = "Predicting..."; }
    });
  }
})();
