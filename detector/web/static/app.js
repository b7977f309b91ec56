// The demo page: sends images (uploads, samples, camera frames) to /api/detect and draws the
// answer. The API returns every detection down to the model's own low threshold; the slider
// filters them here, without asking the model again.
"use strict";

const CAMERA_MIN_INTERVAL_MS = 200;  // at most 5 camera frames a second go to the model
const CAMERA_MAX_SIDE = 640;         // camera frames are sent at most this large
const FPS_WINDOW_MS = 3000;

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d");
const video = $("video");

const state = {
  model: null,
  colors: {},          // label -> "#rrggbb"
  source: null,        // the <img> or <video> being shown
  result: null,        // the last /api/detect answer for it
  threshold: 0.5,
  camera: null,        // {stream, frames, times, grab} while the camera runs
  token: 0,            // which image the page waits for (a newer one makes older answers stale)
};

// --- talking to the API -----------------------------------------------------------------------

async function detect(blob) {
  const form = new FormData();
  form.append("image", blob, "image");
  const response = await fetch("/api/detect", { method: "POST", body: form });
  let body;
  try {
    body = await response.json();
  } catch (err) {
    throw new Error(`the server answered ${response.status} without JSON`);
  }
  if (!response.ok) throw new Error(body.error || `error ${response.status}`);
  return body;
}

function showMessage(text, isError = false) {
  const message = $("message");
  message.textContent = text;
  message.classList.toggle("error", isError);
}

// --- drawing ----------------------------------------------------------------------------------

function visibleDetections() {
  if (!state.result) return [];
  return state.result.detections.filter((d) => d.score >= state.threshold);
}

function sourceSize(source) {
  return source instanceof HTMLVideoElement
    ? [source.videoWidth, source.videoHeight]
    : [source.naturalWidth, source.naturalHeight];
}

// Size the canvas to the stage (CSS pixels) times the device pixel ratio, keeping the aspect.
function fitCanvas(width, height) {
  const stage = $("stage");
  const maxWidth = stage.clientWidth || width;
  const maxHeight = Math.max(240, window.innerHeight * 0.7);
  const scale = Math.min(maxWidth / width, maxHeight / height, 4);
  const cssWidth = Math.max(1, Math.round(width * scale));
  const cssHeight = Math.max(1, Math.round(height * scale));
  const dpr = window.devicePixelRatio || 1;
  const [pixelWidth, pixelHeight] = [Math.round(cssWidth * dpr), Math.round(cssHeight * dpr)];
  if (canvas.width !== pixelWidth || canvas.height !== pixelHeight) {
    canvas.width = pixelWidth;  // (resizing clears the canvas: only when the size changes)
    canvas.height = pixelHeight;
  }
  canvas.style.width = `${cssWidth}px`;
  canvas.style.height = `${cssHeight}px`;
  return dpr;
}

function drawBoxes(detections, scale, dpr) {
  const lineWidth = 2 * Math.round(dpr);
  const fontSize = Math.round(13 * dpr);
  ctx.font = `600 ${fontSize}px system-ui, sans-serif`;
  ctx.textBaseline = "top";
  ctx.lineWidth = lineWidth;
  // lowest score first, so the most confident boxes end up on top
  for (const det of [...detections].sort((a, b) => a.score - b.score)) {
    const color = state.colors[det.label] || "#ffffff";
    const [x1, y1, x2, y2] = det.box_xyxy.map((v) => Math.round(v * scale));
    ctx.strokeStyle = color;
    ctx.strokeRect(x1 + lineWidth / 2, y1 + lineWidth / 2,
                   Math.max(1, x2 - x1 - lineWidth), Math.max(1, y2 - y1 - lineWidth));
    const text = `${det.category} ${det.score.toFixed(2)}`;
    const textWidth = Math.ceil(ctx.measureText(text).width) + 6 * dpr;
    const textHeight = fontSize + 4 * dpr;
    const top = y1 >= textHeight ? y1 - textHeight : y1;  // above the box when there is room
    const left = Math.max(0, Math.min(x1, canvas.width - textWidth));  // inside the canvas
    ctx.fillStyle = color;
    ctx.fillRect(left, top, textWidth, textHeight);
    ctx.fillStyle = "#111111";
    ctx.fillText(text, left + 3 * dpr, top + 2 * dpr);
  }
}

function render() {
  const source = state.source;
  if (!source) return;
  const [width, height] = sourceSize(source);
  if (!width || !height) return;
  const dpr = fitCanvas(width, height);
  ctx.drawImage(source, 0, 0, canvas.width, canvas.height);
  const shown = visibleDetections();
  if (state.result) drawBoxes(shown, canvas.width / state.result.image.width, dpr);
  canvas.dataset.boxes = String(shown.length);
}

function fillTable() {
  const body = document.querySelector("#detections tbody");
  const shown = visibleDetections();
  body.replaceChildren(...shown.map((det) => {
    const row = document.createElement("tr");
    const name = document.createElement("td");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = state.colors[det.label] || "#fff";
    name.append(swatch, det.category);
    const score = document.createElement("td");
    score.textContent = det.score.toFixed(3);
    const box = document.createElement("td");
    box.textContent = det.box_xyxy.map((v) => Math.round(v)).join(" ");
    row.append(name, score, box);
    return row;
  }));
  const total = state.result ? state.result.detections.length : 0;
  $("det-count").textContent = state.result
    ? `${shown.length} of ${total} ≥ ${state.threshold.toFixed(2)}` : "";
}

// --- images: uploads and samples --------------------------------------------------------------

async function showImage(blob, name) {
  stopCamera();
  const token = ++state.token;
  const url = URL.createObjectURL(blob);
  const img = new Image();
  img.src = url;
  try {
    await img.decode();
  } catch (err) {
    img.removeAttribute("src");  // not an image the browser can show: let the server say why
  }
  state.source = img.naturalWidth ? img : null;
  state.result = null;
  $("placeholder").hidden = Boolean(state.source);
  render();
  fillTable();
  showMessage(`detecting in ${name}…`);
  try {
    const result = await detect(blob);
    if (token !== state.token) return;  // another image came meanwhile
    state.result = result;
    render();
    fillTable();
    const { width, height } = result.image;
    showMessage(`${name}: ${width} × ${height} px, ${result.inference_ms.toFixed(0)} ms`);
  } catch (err) {
    if (token === state.token) showMessage(`${name}: ${err.message}`, true);
  }
}

async function showSample(sample) {
  try {
    const response = await fetch(sample.url);
    if (!response.ok) throw new Error(`error ${response.status}`);
    await showImage(await response.blob(), sample.name);
  } catch (err) {
    showMessage(`sample ${sample.name}: ${err.message}`, true);
  }
}

// --- camera -----------------------------------------------------------------------------------

async function startCamera() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    showMessage("no camera here: browsers allow it on https:// or http://localhost only", true);
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false });
  } catch (err) {
    showMessage(`camera: ${err.message || err.name}`, true);
    return;
  }
  video.srcObject = stream;
  await video.play();
  state.camera = { stream, frames: 0, times: [], grab: document.createElement("canvas") };
  state.token += 1;
  state.source = video;
  state.result = null;
  $("placeholder").hidden = true;
  $("camera-button").textContent = "Stop camera";
  document.body.classList.add("camera-on");
  showMessage("camera on");
  requestAnimationFrame(cameraFrame);
  sendCameraFrame();
}

function stopCamera() {
  if (!state.camera) return;
  state.token += 1;
  state.camera.stream.getTracks().forEach((track) => track.stop());
  state.camera = null;
  video.srcObject = null;
  state.source = null;
  state.result = null;
  $("camera-button").textContent = "Camera";
  $("fps").textContent = "";
  document.body.classList.remove("camera-on");
  $("placeholder").hidden = false;
  fillTable();
}

function cameraFrame() {
  if (!state.camera) return;
  render();
  requestAnimationFrame(cameraFrame);
}

// One request in flight at a time: the next frame goes when the answer to this one is back.
async function sendCameraFrame() {
  const camera = state.camera;
  if (!camera || !video.videoWidth) {
    if (camera) setTimeout(sendCameraFrame, 50);
    return;
  }
  const started = performance.now();
  const scale = Math.min(1, CAMERA_MAX_SIDE / Math.max(video.videoWidth, video.videoHeight));
  camera.grab.width = Math.round(video.videoWidth * scale);
  camera.grab.height = Math.round(video.videoHeight * scale);
  camera.grab.getContext("2d").drawImage(video, 0, 0, camera.grab.width, camera.grab.height);
  const blob = await new Promise((resolve) => camera.grab.toBlob(resolve, "image/jpeg", 0.8));
  let delay = CAMERA_MIN_INTERVAL_MS;
  try {
    const result = await detect(blob);
    if (state.camera !== camera) return;
    state.result = result;
    camera.frames += 1;
    canvas.dataset.frames = String(camera.frames);
    const now = performance.now();
    camera.times = camera.times.filter((t) => now - t < FPS_WINDOW_MS).concat([now]);
    const span = (now - camera.times[0]) / 1000;
    const fps = camera.times.length > 1 ? (camera.times.length - 1) / span : 1000 / (now - started);
    $("fps").textContent = `${fps.toFixed(1)} fps`;
    showMessage(`camera: ${result.inference_ms.toFixed(0)} ms per frame in the model`);
    fillTable();
  } catch (err) {
    if (state.camera !== camera) return;
    showMessage(`camera: ${err.message}`, true);
    delay = 1000;
  }
  setTimeout(sendCameraFrame, Math.max(0, delay - (performance.now() - started)));
}

// --- model panel ------------------------------------------------------------------------------

function describeModel(model) {
  const metric = (key) => {
    const value = model.metrics ? model.metrics[key] : null;
    return typeof value === "number" ? value.toFixed(3) : "–";
  };
  const checkpoint = model.checkpoint ? model.checkpoint.split(/[\\/]/).slice(-3).join("/") : "–";
  const rows = [
    ["checkpoint", checkpoint],
    ["iteration", model.iteration ?? "–"],
    ["dataset", model.dataset ?? "–"],
    ["AP", metric("AP")],
    ["AP50", metric("AP50")],
    ["AP75", metric("AP75")],
    ["device", `${model.device} (${model.precision})`],
  ];
  $("model-info").replaceChildren(...rows.flatMap(([key, value]) => {
    const dt = document.createElement("dt");
    dt.textContent = key;
    const dd = document.createElement("dd");
    dd.textContent = String(value);
    if (key === "checkpoint") dd.title = model.checkpoint || "";
    return [dt, dd];
  }));
  $("classes").replaceChildren(...model.classes.map((cls) => {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = cls.color;
    item.append(swatch, cls.name);
    return item;
  }));
  const ap = metric("AP");
  $("model-summary").textContent =
    `Faster R-CNN, ${model.classes.length} classes${ap !== "–" ? `, AP ${ap}` : ""}` +
    (model.dataset ? ` on ${model.dataset}` : "");
}

function showSamples(samples) {
  $("samples").replaceChildren(...samples.map((sample) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "sample";
    button.title = sample.name;
    const img = document.createElement("img");
    img.src = sample.url;
    img.alt = sample.name;
    button.append(img);
    button.addEventListener("click", () => showSample(sample));
    return button;
  }));
}

function setThreshold(value) {
  state.threshold = value;
  $("threshold").value = String(value);
  $("threshold-value").textContent = value.toFixed(2);
  render();
  fillTable();
}

async function init() {
  $("file-input").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) showImage(file, file.name);
    event.target.value = "";  // choosing the same file again still fires "change"
  });
  $("threshold").addEventListener("input", (event) => setThreshold(Number(event.target.value)));
  $("camera-button").addEventListener("click", () => (state.camera ? stopCamera() : startCamera()));
  window.addEventListener("resize", () => render());
  try {
    const response = await fetch("/api/model");
    const model = await response.json();
    state.model = model;
    for (const cls of model.classes) state.colors[cls.label] = cls.color;
    describeModel(model);
    showSamples(model.samples);
    setThreshold(model.display_min_score);
    document.body.dataset.ready = "true";
  } catch (err) {
    showMessage(`could not load the model description: ${err.message}`, true);
  }
}

init();
