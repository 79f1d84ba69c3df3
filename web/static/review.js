/* Review page viewer: slices, zoom (wheel/buttons), pan (drag), window/level (presets and
   shift/right drag, rendered by the server), mask / heat map / explanation / anomaly map / boxes /
   labels toggles, the denoised copy instead of the original (enhancement jobs), findings
   table -> key slice with the outline highlighted, and keyboard shortcuts (slices, next/previous
   study, approve, reject). Plain JS, no dependencies; the CSP allows no inline script. */
(function () {
  "use strict";
  var viewer = document.getElementById("viewer");
  if (!viewer) { return; }
  var job = viewer.getAttribute("data-job");
  var count = parseInt(viewer.getAttribute("data-frames"), 10);
  var stage = document.getElementById("stage");
  var image = document.getElementById("frame-image");
  var mask = document.getElementById("mask-image");
  var heat = document.getElementById("heatmap-image");
  var explanation = document.getElementById("explanation-image");
  var anomaly = document.getElementById("anomaly-image");
  var layer = document.getElementById("box-layer");
  var slider = document.getElementById("frame-slider");
  var label = document.getElementById("frame-number");
  var opacity = document.getElementById("opacity-slider");
  var opacityValue = document.getElementById("opacity-value");
  var zoomLabel = document.getElementById("zoom-level");
  var windowValue = document.getElementById("window-value");
  var toggles = {
    mask: document.getElementById("toggle-mask"),
    heatmap: document.getElementById("toggle-heatmap"),
    explanation: document.getElementById("toggle-explanation"),
    anomaly: document.getElementById("toggle-anomaly"),
    denoised: document.getElementById("toggle-denoised"),
    boxes: document.getElementById("toggle-boxes"),
    labels: document.getElementById("toggle-labels")
  };
  var MIN_ZOOM = 1, MAX_ZOOM = 16;
  var view = { zoom: 1, x: 0, y: 0 };
  var windowParam = "file";   // what the frame route is asked for
  var current = null;         // {center, width} the server applied (X-Window)
  var selected = null;        // the finding number whose outline is highlighted
  var frameRequest = 0;

  function index() { return parseInt(slider.value, 10); }

  /* -- frames: fetched to read the window the server applied (X-Window), shown as a data: URL
     (one request per frame: pages are no-store, and the CSP allows images from 'self' and data:
     only, no blob:) ----------------------------------------------------------------------- */
  function frameUrl(i) {
    var denoised = toggles.denoised && toggles.denoised.checked;
    var url = "/review/" + job + (denoised ? "/denoised/" : "/frames/") + i + ".png";
    return windowParam === "file" ? url : url + "?window=" + encodeURIComponent(windowParam);
  }

  function loadFrame(i) {
    var ticket = ++frameRequest;
    var url = frameUrl(i);
    var applied = null;
    fetch(url, { credentials: "same-origin" }).then(function (response) {
      if (!response.ok) { throw new Error("frame " + response.status); }
      applied = response.headers.get("X-Window");
      return response.blob();
    }).then(function (blob) {
      return new Promise(function (resolve, reject) {
        var reader = new FileReader();
        reader.onload = function () { resolve(reader.result); };
        reader.onerror = reject;
        reader.readAsDataURL(blob);
      });
    }).then(function (dataUrl) {
      if (ticket !== frameRequest) { return; }  // a newer slice or window was asked for
      viewer.setAttribute("data-shown", url);
      image.src = dataUrl;
      if (applied) {
        var parts = applied.split(",");
        current = { center: parseFloat(parts[0]), width: parseFloat(parts[1]) };
        windowValue.textContent = "C " + Math.round(current.center) + " / W " + Math.round(current.width);
      } else {
        current = null;
        windowValue.textContent = "";
      }
    }).catch(function () { windowValue.textContent = "(frame not available)"; });
  }

  /* -- what is drawn on the current slice ------------------------------------------------ */
  function onFrame(element, i) {
    var frames = element.getAttribute("data-frames");
    if (frames !== null) { return (" " + frames + " ").indexOf(" " + i + " ") >= 0; }
    return parseInt(element.getAttribute("data-frame"), 10) === i;
  }

  function showLayers(i) {
    if (!layer) { return; }
    var boxesOn = !toggles.boxes || toggles.boxes.checked;
    var labelsOn = toggles.labels.checked;
    var dets = layer.querySelectorAll("g.det");
    for (var d = 0; d < dets.length; d++) {
      dets[d].style.display = boxesOn && onFrame(dets[d], i) ? "" : "none";
      var text = dets[d].querySelector("text");
      if (text) { text.style.display = labelsOn ? "" : "none"; }
    }
    var outlines = layer.querySelectorAll(".finding-outline");
    for (var o = 0; o < outlines.length; o++) {
      var own = outlines[o].getAttribute("data-finding") === String(selected);
      outlines[o].classList.toggle("selected", own);
      outlines[o].style.display = onFrame(outlines[o], i) && (own || labelsOn) ? "" : "none";
    }
    var names = layer.querySelectorAll(".finding-label");
    for (var n = 0; n < names.length; n++) {
      var mine = names[n].getAttribute("data-finding") === String(selected);
      names[n].classList.toggle("selected", mine);
      names[n].style.display = labelsOn && onFrame(names[n], i) ? "" : "none";
    }
  }

  function show(i) {
    i = Math.max(0, Math.min(count - 1, i));
    slider.value = String(i);
    label.textContent = String(i + 1);
    loadFrame(i);
    if (mask) { mask.src = "/review/" + job + "/masks/" + i + ".png"; }
    if (heat) { heat.src = "/review/" + job + "/heatmap/" + i + ".png"; }
    if (explanation) { explanation.src = "/review/" + job + "/explanation/" + i + ".png"; }
    if (anomaly) { anomaly.src = "/review/" + job + "/anomaly/" + i + ".png"; }
    showLayers(i);
  }

  function applyToggles() {
    if (mask && toggles.mask) { mask.classList.toggle("hidden", !toggles.mask.checked); }
    if (heat && toggles.heatmap) { heat.classList.toggle("hidden", !toggles.heatmap.checked); }
    if (explanation && toggles.explanation) {
      explanation.classList.toggle("hidden", !toggles.explanation.checked);
    }
    if (anomaly && toggles.anomaly) { anomaly.classList.toggle("hidden", !toggles.anomaly.checked); }
    showLayers(index());
  }

  /* -- zoom and pan: a CSS transform of the stage inside the fixed viewport ----------------- */
  function clampPan() {
    var w = viewer.clientWidth, h = viewer.clientHeight;
    view.x = Math.min(0, Math.max(w - w * view.zoom, view.x));
    view.y = Math.min(0, Math.max(h - h * view.zoom, view.y));
  }

  function applyView() {
    clampPan();
    stage.style.transform = "translate(" + view.x + "px," + view.y + "px) scale(" + view.zoom + ")";
    zoomLabel.textContent = Math.round(view.zoom * 100) + "%";
  }

  function zoomAt(factor, px, py) {
    var next = Math.max(MIN_ZOOM, Math.min(MAX_ZOOM, view.zoom * factor));
    if (px === undefined) { px = viewer.clientWidth / 2; py = viewer.clientHeight / 2; }
    // keep the image point under (px, py) where it is
    view.x = px - (px - view.x) * (next / view.zoom);
    view.y = py - (py - view.y) * (next / view.zoom);
    view.zoom = next;
    applyView();
  }

  function setWindow(param) {
    windowParam = param;
    var presets = document.querySelectorAll(".wl-preset");
    for (var p = 0; p < presets.length; p++) {
      presets[p].classList.toggle("active", presets[p].getAttribute("data-window") === param);
    }
    loadFrame(index());
  }

  function reset() {
    view = { zoom: 1, x: 0, y: 0 };
    applyView();
    setWindow("file");
  }

  viewer.addEventListener("wheel", function (event) {
    event.preventDefault();
    var box = viewer.getBoundingClientRect();
    zoomAt(event.deltaY < 0 ? 1.2 : 1 / 1.2, event.clientX - box.left, event.clientY - box.top);
  }, { passive: false });

  var drag = null;
  viewer.addEventListener("contextmenu", function (event) { event.preventDefault(); });
  viewer.addEventListener("pointerdown", function (event) {
    var level = event.shiftKey || event.button === 2;
    drag = { level: level, x: event.clientX, y: event.clientY, vx: view.x, vy: view.y,
             start: current ? { center: current.center, width: current.width } : null };
    viewer.setPointerCapture(event.pointerId);
    viewer.classList.add(level ? "levelling" : "panning");
  });
  viewer.addEventListener("pointermove", function (event) {
    if (!drag) { return; }
    var dx = event.clientX - drag.x, dy = event.clientY - drag.y;
    if (!drag.level) {
      view.x = drag.vx + dx;
      view.y = drag.vy + dy;
      applyView();
      return;
    }
    if (!drag.start) { return; }  // a colour image or a VOI LUT: no centre/width to move
    // right/left: wider/narrower; down/up: brighter/darker (centre lower/higher), in units of
    // the starting width per viewport width, as most viewers feel
    var scale = drag.start.width / viewer.clientWidth;
    var width = Math.max(1, drag.start.width + dx * scale * 2);
    var center = drag.start.center - dy * scale;
    var param = center.toFixed(1) + "," + width.toFixed(1);
    if (param !== windowParam) { setWindow(param); }
  });
  function endDrag() {
    drag = null;
    viewer.classList.remove("levelling", "panning");
  }
  viewer.addEventListener("pointerup", endDrag);
  viewer.addEventListener("pointercancel", endDrag);

  document.getElementById("zoom-in").addEventListener("click", function () { zoomAt(1.25); });
  document.getElementById("zoom-out").addEventListener("click", function () { zoomAt(1 / 1.25); });
  document.getElementById("reset-view").addEventListener("click", reset);
  var presets = document.querySelectorAll(".wl-preset");
  for (var p = 0; p < presets.length; p++) {
    presets[p].addEventListener("click", function () { setWindow(this.getAttribute("data-window")); });
  }

  /* -- overlays ------------------------------------------------------------------------- */
  Object.keys(toggles).forEach(function (name) {
    if (toggles[name]) { toggles[name].addEventListener("change", applyToggles); }
  });
  if (toggles.denoised) {  // the other image under the same window, zoom and overlays
    toggles.denoised.addEventListener("change", function () { loadFrame(index()); });
  }
  if (opacity) {
    opacity.addEventListener("input", function () {
      var value = String(parseInt(opacity.value, 10) / 100);
      if (mask) { mask.style.opacity = value; }
      if (heat) { heat.style.opacity = value; }
      if (explanation) { explanation.style.opacity = value; }
      if (anomaly) { anomaly.style.opacity = value; }
      opacityValue.textContent = opacity.value;
    });
  }
  image.addEventListener("load", function () {
    if (!layer) { return; }
    var w = image.naturalWidth, h = image.naturalHeight;
    layer.setAttribute("viewBox", "0 0 " + w + " " + h);
    var size = Math.max(6, Math.round(w / 28));
    var texts = layer.querySelectorAll("text.on-image-label");
    for (var t = 0; t < texts.length; t++) {
      texts[t].setAttribute("font-size", String(size));
      texts[t].setAttribute("dy", String(-Math.round(size / 4)));
    }
  });

  /* -- findings table: click -> key slice, outline highlighted ---------------------------- */
  function selectFinding(row) {
    var rows = document.querySelectorAll("tr.finding-row");
    for (var r = 0; r < rows.length; r++) { rows[r].classList.toggle("selected", rows[r] === row); }
    selected = row.getAttribute("data-finding");
    var key = parseInt(row.getAttribute("data-key-frame"), 10);
    if (key >= 0) { show(key); } else { showLayers(index()); }
  }
  var findingRows = document.querySelectorAll("tr.finding-row");
  for (var f = 0; f < findingRows.length; f++) {
    findingRows[f].addEventListener("click", function (event) {
      event.preventDefault();
      selectFinding(this);
    });
    findingRows[f].addEventListener("keydown", function (event) {
      if (event.key === "Enter") { event.preventDefault(); selectFinding(this); }
    });
  }

  /* -- slices and keyboard ---------------------------------------------------------------- */
  slider.addEventListener("input", function () { show(index()); });
  var jumps = document.querySelectorAll("a.jump");
  for (var j = 0; j < jumps.length; j++) {
    jumps[j].addEventListener("click", function (event) {
      event.preventDefault();
      show(parseInt(this.getAttribute("data-frame"), 10));
    });
  }

  function follow(id) {
    var link = document.getElementById(id);
    if (link) { window.location.href = link.href; }
  }

  function flip(name) {
    if (toggles[name]) { toggles[name].checked = !toggles[name].checked; applyToggles(); }
  }

  document.addEventListener("keydown", function (event) {
    var target = event.target;
    if (target && /TEXTAREA|SELECT/.test(target.tagName)) { return; }
    if (target && target.tagName === "INPUT" && target.type !== "checkbox") { return; }  // typing, or a slider's own arrows
    if (event.ctrlKey || event.metaKey || event.altKey) { return; }
    var key = event.key;
    if (key === "ArrowUp" || key === "ArrowRight") { show(index() + 1); }
    else if (key === "ArrowDown" || key === "ArrowLeft") { show(index() - 1); }
    else if (key === "n") { follow("next-study"); }
    else if (key === "p") { follow("previous-study"); }
    else if (key === "a") {
      var approve = document.getElementById("approve-form");
      if (approve) { approve.requestSubmit ? approve.requestSubmit() : approve.submit(); }
    } else if (key === "r") {
      var reason = document.getElementById("reject-reason");
      if (reason) { reason.focus(); }
    } else if (key === "+" || key === "=") { zoomAt(1.25); }
    else if (key === "-") { zoomAt(1 / 1.25); }
    else if (key === "0") { reset(); }
    else if (key === "h") { flip("heatmap"); }
    else if (key === "e") { flip("explanation"); }
    else if (key === "y") { flip("anomaly"); }
    else if (key === "d") { flip("denoised"); if (toggles.denoised) { loadFrame(index()); } }
    else if (key === "m") { flip("mask"); }
    else if (key === "b") { flip("boxes"); }
    else { return; }
    event.preventDefault();
  });

  applyView();
  applyToggles();
  loadFrame(index());
})();
