"use strict";
// The playground: plain browser JavaScript against the gateway that served the page (same origin), no build step.

const $ = (id) => document.getElementById(id);
const KEY_STORE = "titok.apiKey";
const HINTS = {
  0: "Is the gateway still running?",
  401: "Enter a valid API key in the field at the top (it is kept in this browser only).",
  413: "The file or the request is over the gateway's limits.",
  415: "Use a PNG, JPEG or WebP image.",
  429: "The gateway is busy: try again in a moment.",
  503: "The model backend is down: try again later.",
  504: "The request took too long: try fewer images or steps.",
};

let models = []; // the cards of GET /v1/models
let model = null; // the selected card
let source = null; // ImageData of the input as the model sees it (null: unknown, no PSNR)

class ApiError extends Error {
  constructor(status, type, message, param) {
    super(message);
    Object.assign(this, { status, type, param });
  }
}

/** One API call; resolves to JSON (or a Blob when `accept` is an image type), rejects with an ApiError. */
async function api(path, { json, form, accept } = {}) {
  const headers = {};
  const key = $("api-key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (accept) headers.Accept = accept;
  let body = form;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(path, { method: body === undefined ? "GET" : "POST", headers, body });
  } catch (e) {
    throw new ApiError(0, "connection_error", `cannot reach the gateway (${e.message})`);
  }
  if (response.ok) return accept ? response.blob() : response.json();
  let error = { type: `http_${response.status}`, message: response.statusText || "request failed" };
  try {
    error = (await response.json()).error || error;
  } catch {
    // not the gateway's JSON error (a proxy's page, say): keep the status line
  }
  throw new ApiError(response.status, error.type, error.message, error.param);
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(e) {
  const box = $("error");
  if (e instanceof ApiError) {
    const param = e.param ? ` [${e.param}]` : "";
    const hint = HINTS[e.status] ? ` \u2014 ${HINTS[e.status]}` : "";
    box.textContent = `${e.status || "network"} ${e.type}: ${e.message}${param}${hint}`;
  } else {
    box.textContent = e.message;
  }
  box.hidden = false;
  setStatus("");
  const token = /^tokens\[0\]\[(\d+)\]$/.exec(e.param || "");
  if (token) focusToken(Number(token[1]));
}

function focusToken(i) {
  const input = $("tokens").querySelectorAll("input")[i];
  if (input) {
    input.focus();
    input.select();
  }
}

/** Run one user action: clear the last error, show progress, show any failure. */
async function run(label, work) {
  $("error").hidden = true;
  setStatus(`${label}\u2026`);
  const start = performance.now();
  try {
    const done = await work();
    setStatus(`${done || label}: ${((performance.now() - start) / 1000).toFixed(2)} s`);
  } catch (e) {
    showError(e);
  }
}

// -- models ----------------------------------------------------------------------------------------

async function loadModels() {
  models = (await api("/v1/models")).data;
  $("model").replaceChildren(...models.map((m) => new Option(`${m.id} (v${m.version})`, m.id)));
  selectModel(models.length ? models[0].id : null);
  return `${models.length} model(s) loaded`;
}

function selectModel(id) {
  model = models.find((m) => m.id === id) || null;
  if (!model) return;
  $("class").replaceChildren(...model.classes.map((c) => new Option(`${c.id} ${c.name}`, c.id)));
  $("codebook-max").textContent = model.codebook_size - 1;
  $("guidance").value = model.sampling.guidance_scale;
  $("temperature").value = model.sampling.temperature;
  $("steps").value = model.sampling.num_steps;
}

async function requireModel() {
  if (!model) await loadModels();
  if (!model) throw new Error("The gateway serves no model.");
  return model;
}

// -- tokens ----------------------------------------------------------------------------------------

/** A fixed colour per token id: golden-angle hues, three lightness levels. */
function tokenColour(id) {
  if (!Number.isInteger(id) || id < 0) return "#ccc";
  return `hsl(${((id * 137.508) % 360).toFixed(1)} 70% ${38 + (id % 3) * 12}%)`;
}

function showTokens(ids) {
  const items = ids.map((id, i) => {
    const chip = document.createElement("span");
    chip.className = "chip";
    const input = document.createElement("input");
    Object.assign(input, { type: "text", inputMode: "numeric", pattern: "[0-9]+", required: true, value: id });
    input.setAttribute("aria-label", `token ${i}`);
    const paint = () => {
      const text = input.value.trim();
      chip.style.background = tokenColour(/^\d+$/.test(text) ? Number(text) : NaN);
      chip.title = `id ${text}`;
    };
    input.addEventListener("input", paint);
    input.addEventListener("keydown", (e) => e.key === "Enter" && run("Decoding", decode));
    paint();
    const li = document.createElement("li");
    li.append(chip, input);
    return li;
  });
  $("tokens").replaceChildren(...items);
  $("decode").disabled = false;
}

function readTokens() {
  return [...$("tokens").querySelectorAll("input")].map((input, i) => {
    const text = input.value.trim();
    if (!/^\d+$/.test(text)) {
      focusToken(i);
      throw new Error(`Token ${i} must be a whole number, not "${text}".`);
    }
    return Number(text);
  });
}

// -- images ----------------------------------------------------------------------------------------

const roundHalfEven = (x) => (Math.abs(x % 1) === 0.5 && Math.round(x) % 2 ? Math.round(x) - 1 : Math.round(x));

/**
 * Draw `bitmap` as the gateway preprocesses it: on black, shorter side resized to the model's size, centre
 * square. Exact when the shorter side already has that size; otherwise the browser's resampling stands in for
 * PIL's bicubic filter, so the PSNR against it is approximate.
 */
function drawInput(bitmap) {
  const size = model.image_size;
  const canvas = $("input");
  canvas.width = canvas.height = size;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, size, size);
  const { width: w, height: h } = bitmap;
  const exact = Math.min(w, h) === size;
  const [nw, nh] = w <= h ? [size, Math.max(size, Math.floor((size * h) / w))] : [Math.max(size, Math.floor((size * w) / h)), size];
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(bitmap, -roundHalfEven((nw - size) / 2), -roundHalfEven((nh - size) / 2), nw, nh);
  source = ctx.getImageData(0, 0, size, size);
  $("psnr-note").textContent = exact
    ? `Exact: the input is already ${size} px on its shorter side.`
    : `Approximate: the browser resized the ${w}\u00d7${h} input; the gateway uses PIL's bicubic filter.`;
}

function pixels(img) {
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = model.image_size;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  return ctx.getImageData(0, 0, canvas.width, canvas.height);
}

/** PSNR over the RGB channels of two same-size ImageData, peak 255. */
function psnr(a, b) {
  let sum = 0;
  for (let i = 0; i < a.data.length; i += 4) {
    for (let c = 0; c < 3; c++) sum += (a.data[i + c] - b.data[i + c]) ** 2;
  }
  const mse = sum / ((a.data.length / 4) * 3);
  return mse === 0 ? "\u221e dB" : `${(10 * Math.log10((255 * 255) / mse)).toFixed(2)} dB`;
}

function loadImage(img, src) {
  return new Promise((resolve, reject) => {
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("The browser could not show the returned image."));
    img.src = src;
  });
}

// -- actions ---------------------------------------------------------------------------------------

async function tokenizeFile(file) {
  await requireModel();
  const form = new FormData();
  form.append("files", file, file.name);
  form.append("model", model.id);
  const answer = await api("/v1/tokenize", { form });
  source = null;
  $("psnr-note").textContent = "";
  try {
    drawInput(await createImageBitmap(file, { colorSpaceConversion: "none" }));
  } catch {
    $("psnr-note").textContent = "This browser cannot decode the file, so there is no PSNR.";
  }
  showTokens(answer.tokens[0]);
  await decode();
  return `Tokenized ${file.name}`;
}

async function decode() {
  const tokens = readTokens();
  const blob = await api("/v1/detokenize", { json: { model: model.id, tokens: [tokens] }, accept: "image/png" });
  const img = $("reconstruction");
  URL.revokeObjectURL(img.src);
  await loadImage(img, URL.createObjectURL(blob));
  $("psnr").value = source ? psnr(source, pixels(img)) : "\u2013";
  return "Decoded";
}

async function generate() {
  await requireModel();
  const body = { model: model.id, class_labels: Number($("class").value), return_tokens: true };
  const fields = { n: "n", guidance_scale: "guidance", temperature: "temperature", num_steps: "steps", seed: "seed" };
  for (const [name, id] of Object.entries(fields)) {
    if ($(id).value !== "") body[name] = Number($(id).value);
  }
  $("generate-button").disabled = true;
  try {
    const answer = await api("/v1/generate", { json: body });
    $("grid").replaceChildren(...answer.images.map(figureOf));
    return `Generated ${answer.images.length} image(s)`;
  } finally {
    $("generate-button").disabled = false;
  }
}

function figureOf(image) {
  const figure = document.createElement("figure");
  const img = new Image();
  img.src = `data:image/png;base64,${image.b64_json}`;
  img.alt = `${image.class_name}, seed ${image.seed}`;
  const caption = document.createElement("figcaption");
  caption.textContent = `${image.class_name} \u00b7 seed ${image.seed}`;
  figure.append(img, caption);
  figure.title = "Edit this image's tokens";
  figure.addEventListener("click", () =>
    run("Decoding", async () => {
      const canvas = $("input");
      canvas.width = canvas.height = model.image_size;
      const ctx = canvas.getContext("2d", { willReadFrequently: true });
      ctx.drawImage(img, 0, 0);
      source = ctx.getImageData(0, 0, canvas.width, canvas.height);
      $("psnr-note").textContent = `PSNR against the generated image (seed ${image.seed}).`;
      showTokens(image.tokens);
      return decode();
    }),
  );
  return figure;
}

// -- wiring ----------------------------------------------------------------------------------------

function wire() {
  const key = $("api-key");
  key.value = localStorage.getItem(KEY_STORE) || "";
  key.addEventListener("change", () => {
    localStorage.setItem(KEY_STORE, key.value.trim());
    run("Loading models", loadModels);
  });
  $("settings").addEventListener("submit", (e) => e.preventDefault());
  $("model").addEventListener("change", (e) => selectModel(e.target.value));

  const drop = $("drop");
  const take = (file) => file && run(`Tokenizing ${file.name}`, () => tokenizeFile(file));
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    take(e.dataTransfer.files[0]);
  });
  $("file").addEventListener("change", (e) => {
    take(e.target.files[0]);
    e.target.value = ""; // the same file again is a new change
  });
  $("decode").addEventListener("click", () => run("Decoding", decode));
  $("generate-form").addEventListener("submit", (e) => {
    e.preventDefault();
    run("Generating", generate);
  });
  run("Loading models", loadModels);
}

wire();
