/* Review page: slice navigation, mask opacity and detection boxes. Vendored, no dependencies. */
(function () {
  "use strict";
  var viewer = document.getElementById("viewer");
  if (!viewer) { return; }
  var job = viewer.getAttribute("data-job");
  var count = parseInt(viewer.getAttribute("data-frames"), 10);
  var hasMask = viewer.getAttribute("data-has-mask") === "1";
  var image = document.getElementById("frame-image");
  var mask = document.getElementById("mask-image");
  var boxes = document.getElementById("box-layer");
  var slider = document.getElementById("frame-slider");
  var label = document.getElementById("frame-number");
  var opacity = document.getElementById("opacity-slider");
  var opacityValue = document.getElementById("opacity-value");

  function showBoxes(index) {
    if (!boxes) { return; }
    var rects = boxes.querySelectorAll(".det-box");
    for (var i = 0; i < rects.length; i++) {
      rects[i].style.display = parseInt(rects[i].getAttribute("data-frame"), 10) === index ? "" : "none";
    }
  }

  function show(index) {
    index = Math.max(0, Math.min(count - 1, index));
    slider.value = String(index);
    label.textContent = String(index + 1);
    image.src = "/review/" + job + "/frames/" + index + ".png";
    if (hasMask && mask) { mask.src = "/review/" + job + "/masks/" + index + ".png"; }
    showBoxes(index);
  }

  image.addEventListener("load", function () {
    if (boxes) { boxes.setAttribute("viewBox", "0 0 " + image.naturalWidth + " " + image.naturalHeight); }
  });
  slider.addEventListener("input", function () { show(parseInt(slider.value, 10)); });
  document.addEventListener("keydown", function (event) {
    if (event.target && /INPUT|TEXTAREA|SELECT/.test(event.target.tagName)) { return; }
    if (event.key === "ArrowUp" || event.key === "ArrowRight") { show(parseInt(slider.value, 10) + 1); }
    if (event.key === "ArrowDown" || event.key === "ArrowLeft") { show(parseInt(slider.value, 10) - 1); }
  });
  if (opacity && mask) {
    opacity.addEventListener("input", function () {
      mask.style.opacity = String(parseInt(opacity.value, 10) / 100);
      opacityValue.textContent = opacity.value;
    });
  }
  var jumps = document.querySelectorAll("a.jump");
  for (var j = 0; j < jumps.length; j++) {
    jumps[j].addEventListener("click", function (event) {
      event.preventDefault();
      show(parseInt(this.getAttribute("data-frame"), 10));
    });
  }
  showBoxes(parseInt(slider.value, 10));
})();
