// The Oneiro page: submit a dream, watch it render, fetch the result. Plain JavaScript.
// Every /v1 call carries the API key, so images are fetched as blobs and shown via object URLs,
// and the event stream is read with fetch() (EventSource cannot send an Authorization header).
"use strict";

const KEY_STORE = "oneiro.apiKey";
const TERMINAL = new Set(["succeeded", "failed", "canceled", "expired"]);
// Presets come from GET /v1/presets (their one copy); the parameters panel shows and overrides
// the chosen one's values.
let presets = new Map();
const DEFAULT_PRESET = "classic";
// Result formats a browser can show; a TIFF is downloaded, and its preview shown.
const SHOWN_FORMATS = new Set(["png", "png16", "jpeg", "webp", "gif"]);
const EXTENSIONS = {
  png: "png", png16: "png", tiff16: "tif", jpeg: "jpg", webp: "webp", gif: "gif",
};
const PREVIEW_EVERY_MS = 1000;
// A queued job's standing changes with no event of its own: read it again this often.
const STANDING_EVERY_MS = 5000;
const STREAM_RETRIES = 3;
const JOBS_PAGE = 12;

const $ = (id) => document.getElementById(id);
let apiKey = localStorage.getItem(KEY_STORE);
let following = null; // {id, controller} of the job shown in #current
const objectUrls = new Map(); // slot -> object URL, revoked when the slot gets a new one
const thumbs = new Map(); // job id -> {status, url}

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

// -- calls -------------------------------------------------------------------------------------

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  headers.set("Authorization", `Bearer ${apiKey}`);
  const response = await fetch(path, { ...options, headers, cache: "no-store" });
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try {
      const problem = await response.json();
      message = problem.detail ? `${problem.title}: ${problem.detail}` : problem.title || message;
    } catch (_) { /* not problem+json */ }
    throw new ApiError(message, response.status);
  }
  return response;
}

const apiJson = async (path, options) => (await api(path, options)).json();

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(timer); reject(signal.reason); });
  });
}

// The job's Server-Sent Events, parsed by the event-stream rules, until the server ends them.
async function* events(jobId, lastId, signal) {
  const headers = { Accept: "text/event-stream" };
  if (lastId !== null) headers["Last-Event-ID"] = lastId;
  const response = await api(`/v1/jobs/${jobId}/events`, { headers, signal });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "", data = [], type = "", id = lastId;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = /\r\n|\r|\n/.exec(buffer)) !== null) {
      // A CR at the end may be the first half of a CRLF: wait for the next chunk.
      if (end[0] === "\r" && end.index === buffer.length - 1) break;
      const line = buffer.slice(0, end.index);
      buffer = buffer.slice(end.index + end[0].length);
      if (line === "") {
        if (data.length) yield { id, type: type || "message", data: data.join("\n") };
        data = [];
        type = "";
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let text = colon < 0 ? "" : line.slice(colon + 1);
      if (text.startsWith(" ")) text = text.slice(1);
      if (field === "data") data.push(text);
      else if (field === "event") type = text;
      else if (field === "id" && !text.includes("\0")) id = text;
    }
  }
}

// Calls onJob with each new state until the job ends: the event stream, resumed with
// Last-Event-ID when it breaks, and plain polling once it failed STREAM_RETRIES times in a row.
async function follow(jobId, signal, onJob) {
  let lastId = null;
  for (let failures = 0; failures < STREAM_RETRIES; failures++) {
    try {
      for await (const event of events(jobId, lastId, signal)) {
        failures = 0;
        lastId = event.id;
        const job = JSON.parse(event.data);
        onJob(job);
        if (TERMINAL.has(job.status)) return job;
      }
    } catch (error) {
      if (signal.aborted || (error instanceof ApiError && error.status < 500)) throw error;
    }
    await sleep(1000, signal);
  }
  for (;;) {
    const job = await apiJson(`/v1/jobs/${jobId}`, { signal });
    onJob(job);
    if (TERMINAL.has(job.status)) return job;
    await sleep(1000, signal);
  }
}

async function fetchBlob(path, signal) {
  return (await api(path, { signal })).blob();
}

async function imageUrl(path, signal) {
  return URL.createObjectURL(await fetchBlob(path, signal));
}

function show(img, slot, url) {
  const old = objectUrls.get(slot);
  if (old) URL.revokeObjectURL(old);
  objectUrls.set(slot, url);
  img.src = url;
}

// -- the key -------------------------------------------------------------------------------------

function showKeyPanel(message) {
  $("key-panel").hidden = false;
  $("app").hidden = true;
  $("forget-key").hidden = true;
  $("key-error").hidden = !message;
  $("key-error").textContent = message || "";
}

function showApp() {
  $("key-panel").hidden = true;
  $("app").hidden = false;
  $("forget-key").hidden = false;
  loadPresets();
  refreshJobs();
}

$("key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  apiKey = $("key-input").value.trim();
  try {
    await api("/v1/jobs?limit=1"); // a wrong key is refused here, before it is kept
  } catch (error) {
    showKeyPanel(error.message);
    return;
  }
  localStorage.setItem(KEY_STORE, apiKey);
  $("key-input").value = "";
  showApp();
});

$("forget-key").addEventListener("click", () => {
  localStorage.removeItem(KEY_STORE);
  apiKey = null;
  following?.controller.abort();
  showKeyPanel();
});

// A key revoked since it was saved: ask for another.
function refused(error) {
  if (error instanceof ApiError && error.status === 401) {
    localStorage.removeItem(KEY_STORE);
    showKeyPanel(error.message);
    return true;
  }
  return false;
}

// -- the form ------------------------------------------------------------------------------------

const form = $("job-form");

function applyPreset(name) {
  for (const [field, value] of Object.entries(presets.get(name).params)) {
    const input = form.elements[field];
    if (input && input.type !== "checkbox") {
      input.value = Array.isArray(value) ? value.join(", ") : value;
    }
  }
}

function chosenPreset() {
  return form.querySelector("input[name=preset]:checked")?.value || null;
}

async function loadPresets() {
  let listed;
  try {
    listed = (await apiJson("/v1/presets")).presets;
  } catch (error) {
    if (!refused(error)) $("presets").append(error.message);
    return;
  }
  presets = new Map(listed.map((preset) => [preset.name, preset]));
  const chosen = chosenPreset() || DEFAULT_PRESET;
  const labels = await Promise.all(listed.map(async (preset) => {
    const label = document.createElement("label");
    label.title = preset.description;
    const radio = document.createElement("input");
    radio.type = "radio";
    radio.name = "preset";
    radio.value = preset.name;
    radio.checked = preset.name === chosen;
    radio.addEventListener("change", () => applyPreset(preset.name));
    const thumb = document.createElement("img");
    thumb.className = "preset-thumb";
    thumb.alt = "";
    thumb.src = preset.thumbnail_url; // a static file: no key needed
    label.append(radio, thumb, ` ${preset.title}`);
    return label;
  }));
  const legend = $("presets").querySelector("legend");
  $("presets").replaceChildren(legend, ...labels);
  if (presets.has(chosen)) applyPreset(chosen);
}

function chooseFile(file) {
  if (!file) return;
  const thumb = $("input-thumb");
  show(thumb, "input", URL.createObjectURL(file));
  thumb.hidden = isVideo(file); // an <img> shows no video

  $("drop-text").textContent = file.name;
}

$("image-input").addEventListener("change", () => chooseFile($("image-input").files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files.length) {
    $("image-input").files = event.dataTransfer.files;
    chooseFile(event.dataTransfer.files[0]);
  }
});

// An error about the form goes once the form is changed: it was about what was there before.
form.addEventListener("input", () => { $("form-error").hidden = true; });
form.addEventListener("change", () => { $("form-error").hidden = true; });

function isVideo(file) {
  return Boolean(file && file.type.startsWith("video/"));
}

// The zoom preset: frame n is the dream of frame n-1 zoomed in 3% (few steps a frame).
const ZOOM = { frames: 48, fps: 24, zoom: 1.03 };

function params() {
  const chosen = {};
  const numbers = ["steps", "octaves", "max_dim", "seed", "step_size", "octave_scale", "guide_weight"];
  for (const field of numbers) {
    const text = form.elements[field].value.trim();
    if (text !== "") chosen[field] = Number(text);
  }
  const layers = form.elements.layers.value.split(",").map((s) => s.trim()).filter(Boolean);
  if (layers.length) chosen.layers = layers;
  const maskLayers = form.elements.mask_layers.value.split(",").map((s) => s.trim()).filter(Boolean);
  if (maskLayers.length) chosen.mask_layers = maskLayers;
  // The preset's other values (colours kept, smoothing ...) come with its name; the fields
  // above override what they show.
  const preset = chosenPreset();
  if (preset) chosen.preset = preset;
  chosen.output_format = form.elements.output_format.value;
  if (form.elements.zoom.checked && !isVideo($("image-input").files[0])) {
    chosen.animation = { ...ZOOM };
    // Frames and zoom as typed, else the zoom preset's.
    for (const [field, key] of [["frames", "frames"], ["zoom_factor", "zoom"]]) {
      const text = form.elements[field].value.trim();
      if (text !== "") chosen.animation[key] = Number(text);
    }
    // A frame starts from the previous dream: the API's per-frame defaults, unless typed in.
    const shown = (presets.get(preset) || { params: {} }).params;
    for (const field of ["steps", "octaves"]) {
      if (form.elements[field].value === String(shown[field])) delete chosen[field];
    }
  }
  // An animation or a video is an MP4 whatever the still's format.
  if (chosen.animation || isVideo($("image-input").files[0])) delete chosen.output_format;
  return chosen;
}

// -- large inputs: resumable uploads ---------------------------------------------------------

// Files larger than this go first as a resumable upload (tus, /v1/uploads: tus-js-client,
// vendored in /static/tus.min.js), 8 MiB a request, with a progress bar; the job names it.
const UPLOAD_THRESHOLD = 32 * 1024 * 1024;
const UPLOAD_CHUNK = 8 * 1024 * 1024;

function megabytes(bytes) {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

// The upload's id once all of `file` is stored. A page reloaded or a connection dropped
// midway goes on from where the server got to: tus-js-client remembers the upload's URL for
// this file in localStorage and asks the server its offset.
function uploadFile(file) {
  const bar = $("upload-progress");
  const text = $("upload-text");
  bar.value = 0;
  bar.hidden = text.hidden = false;
  return new Promise((resolve, reject) => {
    const upload = new tus.Upload(file, {
      endpoint: "/v1/uploads",
      chunkSize: UPLOAD_CHUNK,
      retryDelays: [0, 1000, 3000, 5000],
      headers: { Authorization: `Bearer ${apiKey}` },
      metadata: { filename: file.name, filetype: file.type },
      removeFingerprintOnSuccess: true,
      onProgress(sent, total) {
        bar.value = sent / total;
        text.textContent = `Uploading ${file.name}: ${megabytes(sent)} of ${megabytes(total)}`;
      },
      onSuccess() {
        text.textContent = `Uploaded ${file.name} (${megabytes(file.size)})`;
        resolve(upload.url.split("/").pop());
      },
      onError(error) {
        const answer = error.originalResponse;
        let message = error.message;
        try {
          const problem = JSON.parse(answer.getBody());
          message = `${problem.title}: ${problem.detail}`;
        } catch (_) { /* no problem+json: tus-js-client's own message */ }
        reject(new ApiError(message, answer ? answer.getStatus() : undefined));
      },
    });
    upload.findPreviousUploads().then((previous) => {
      if (previous.length) upload.resumeFromPreviousUpload(previous[0]);
      upload.start();
    });
  });
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = new FormData();
  const file = $("image-input").files[0];
  $("submit").disabled = true;
  $("form-error").hidden = true;
  if (file.size > UPLOAD_THRESHOLD) {
    try {
      body.append(isVideo(file) ? "video" : "image", `upload:${await uploadFile(file)}`);
    } catch (error) {
      $("form-error").textContent = error.message;
      $("form-error").hidden = false;
      $("submit").disabled = false;
      return;
    }
  } else {
    $("upload-progress").hidden = $("upload-text").hidden = true;
    body.append(isVideo(file) ? "video" : "image", file);
  }
  body.append("params", JSON.stringify(params()));
  // The guide and the mask go as file parts of their own; the API checks them.
  for (const part of ["guide", "mask"]) {
    const chosen = form.elements[part].files[0];
    if (chosen) body.append(part, chosen);
  }
  try {
    const job = await apiJson("/v1/jobs", { method: "POST", body });
    watch(job.id);
  } catch (error) {
    if (!refused(error)) {
      $("form-error").textContent = error.message;
      $("form-error").hidden = false;
    }
  } finally {
    $("submit").disabled = false;
  }
});

// -- the job being watched -----------------------------------------------------------------------

function formatEta(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.max(0, Math.round(seconds));
  return ` · ETA ${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

// Where a queued job stands, as `oneiro status` says it.
function describeStanding(queue) {
  const seconds = queue.estimated_start_seconds;
  const start = seconds === null || seconds === undefined
    ? "start time not known yet"
    : `starts in about ${Math.floor(Math.round(seconds) / 60)}:${String(Math.round(seconds) % 60).padStart(2, "0")}`;
  return `position ${queue.position} · ${start}`;
}

// While the watched job stays queued, show where it stands (the event stream's job has no
// standing: it costs a look at the whole queue, which GET /v1/jobs/{id} takes).
let standingFor = null;
async function watchStanding(jobId, signal, currentStatus) {
  if (standingFor === jobId) return;
  standingFor = jobId;
  try {
    while (!signal.aborted && currentStatus() === "queued") {
      const job = await apiJson(`/v1/jobs/${jobId}`, { signal });
      if (job.status !== "queued" || currentStatus() !== "queued") break;
      if (job.queue) $("progress-text").textContent = describe(job);
      await sleep(STANDING_EVERY_MS, signal);
    }
  } catch (error) {
    if (!signal.aborted) console.warn("standing", error);
  } finally {
    if (standingFor === jobId) standingFor = null;
  }
}

function describe(job) {
  const p = job.progress;
  const percent = `${Math.round(100 * p.fraction)}%`;
  if (job.status === "queued" && job.queue) return `queued · ${describeStanding(job.queue)}`;
  if (job.status !== "running") return `${job.status} · ${percent}`;
  const frame = p.frames ? `frame ${Math.max(p.frame, 1)}/${p.frames} · ` : "";
  return `${frame}octave ${p.octave}/${p.octaves} · step ${p.step}/${p.steps} · ${percent}${formatEta(p.eta_seconds)}`;
}

// The worker writes a job's first preview once its first step is done; asking before only
// earns a 409.
function previewExists(job) {
  if (job.status === "succeeded") return !job.expired;
  const p = job.progress;
  // A frame job's preview is its latest finished frame.
  if (p.frames) return !job.expired && p.frame > 1;
  return !job.expired && (p.octave > 1 || p.step > 1);
}

async function watch(jobId) {
  following?.controller.abort();
  const controller = new AbortController();
  following = { id: jobId, controller };
  const { signal } = controller;
  $("current").hidden = false;
  $("job-id").textContent = jobId.slice(0, 8);
  $("job-id").title = jobId;
  for (const id of ["preview-figure", "result-figure", "download", "job-error", "retry",
    "recipe-panel"]) {
    $(id).hidden = true;
  }
  $("progress").value = 0;
  $("cancel").hidden = false;
  let status = null;
  let lastPreview = 0;
  let previewing = false;

  const onJob = (job) => {
    $("progress").value = job.progress.fraction;
    $("progress-text").textContent = describe(job);
    $("job-status").textContent = job.status;
    $("job-status").className = `status ${job.status}`;
    if (job.status !== status) {
      status = job.status;
      refreshJobs();
    }
    if (job.status === "queued" && !job.queue) watchStanding(jobId, signal, () => status);
    if (job.status === "running" && previewExists(job) && !previewing &&
        Date.now() - lastPreview > PREVIEW_EVERY_MS) {
      previewing = true;
      lastPreview = Date.now();
      fetchBlob(`/v1/jobs/${jobId}/preview`, signal)
        .then((blob) => {
          show($("preview"), "preview", URL.createObjectURL(blob));
          $("preview-figure").hidden = false;
          setThumb(jobId, job.status, blob);
        })
        .catch(() => { /* none written yet (409): the next event tries again */ })
        .finally(() => { previewing = false; });
    }
  };

  try {
    const job = await follow(jobId, signal, onJob);
    $("cancel").hidden = true;
    if (job.status === "succeeded") {
      // The list's thumbnail becomes the finished dream's, whatever preview it showed before.
      fetchBlob(`/v1/jobs/${jobId}/preview`, signal)
        .then((blob) => setThumb(jobId, "succeeded", blob))
        .catch(() => { /* expired meanwhile: the list shows none */ });
      const format = job.params.output_format || "png";
      const url = await imageUrl(`/v1/jobs/${jobId}/result`, signal);
      // An animation asked for as a GIF or WebP (by the API or the CLI) loops in an <img>;
      // any other animation or video is an MP4, played in the <video>.
      const moving = job.kind && job.kind !== "image" && !(format === "gif" || format === "webp");
      const shown = moving || SHOWN_FORMATS.has(format) ? url : await imageUrl(job.preview_url, signal);
      show(moving ? $("result-video") : $("result"), "result", shown);
      $("result").hidden = moving;
      $("result-video").hidden = !moving;
      $("result-figure").hidden = false;
      $("preview-figure").hidden = true; // the result takes its place
      if (shown !== url) { // kept apart from the shown preview, and freed like it
        const old = objectUrls.get("download");
        if (old) URL.revokeObjectURL(old);
        objectUrls.set("download", url);
      }
      $("download").href = url;
      $("download").download = `${jobId}.${moving ? "mp4" : EXTENSIONS[format] || "png"}`;
      $("download").textContent = `Download ${moving ? "MP4" : format.toUpperCase()}`;
      $("download").hidden = false;
      if (job.recipe) {
        $("recipe").textContent = JSON.stringify(job.recipe, null, 2);
        $("recipe-panel").hidden = false;
      }
    } else if (job.status === "failed") {
      $("job-error").textContent = `This job failed: ${job.error || "no reason was recorded"}`;
      $("job-error").hidden = false;
    }
    if (["failed", "canceled", "expired"].includes(job.status)) $("retry").hidden = job.expired;
  } catch (error) {
    if (signal.aborted || refused(error)) return;
    $("job-error").textContent = error.message;
    $("job-error").hidden = false;
  }
}

// Cancel and Retry: one POST about the watched job, its error shown under the job.
async function act(button, verb, then) {
  if (!following) return;
  const jobId = following.id;
  button.disabled = true;
  try {
    await api(`/v1/jobs/${jobId}/${verb}`, { method: "POST" });
    then?.(jobId);
  } catch (error) {
    if (!refused(error)) {
      $("job-error").textContent = error.message;
      $("job-error").hidden = false;
    }
  } finally {
    button.disabled = false;
  }
}

$("cancel").addEventListener("click", () => act($("cancel"), "cancel"));
$("retry").addEventListener("click", () => act($("retry"), "retry", watch));

// -- recent jobs ---------------------------------------------------------------------------------

// The list's thumbnail of a job, kept as the watched job's preview comes in.
function setThumb(jobId, status, blob) {
  const known = thumbs.get(jobId);
  // A preview fetched while the job ran may arrive after the finished one: keep the latter.
  if (known && TERMINAL.has(known.status) && !TERMINAL.has(status)) return;
  if (known) URL.revokeObjectURL(known.url);
  const url = URL.createObjectURL(blob);
  thumbs.set(jobId, { status, url });
  const placeholder = document.querySelector(`#jobs li[data-job-id="${jobId}"] .thumb`);
  if (placeholder) placeholder.replaceWith(thumbImage(jobId, url));
}

function thumbImage(jobId, url) {
  const img = document.createElement("img");
  img.className = "thumb";
  img.src = url;
  img.alt = `preview of job ${jobId.slice(0, 8)}`;
  return img;
}

async function thumbnail(job) {
  const known = thumbs.get(job.id);
  // A finished job's preview no longer changes; a running one's does.
  if (known && (known.status === job.status || known.status === "succeeded")) return known.url;
  if (!previewExists(job)) return null;
  try {
    const url = await imageUrl(job.preview_url);
    if (known) URL.revokeObjectURL(known.url);
    thumbs.set(job.id, { status: job.status, url });
    return url;
  } catch (_) {
    return null;
  }
}

let refreshing = null;
let refreshAgain = false;
function refreshJobs() {
  // One refresh at a time; asked for meanwhile, it runs once more after the one under way.
  if (refreshing) {
    refreshAgain = true;
    return refreshing;
  }
  refreshing = (async () => {
    do {
      refreshAgain = false;
      await loadJobs();
    } while (refreshAgain);
  })().finally(() => { refreshing = null; });
  return refreshing;
}

// How many pages of recent jobs are shown ("More" adds one), and where the next one starts.
let jobPages = 1;
let nextCursor = null;

async function loadJobs() {
  const jobs = [];
  let cursor = null;
  try {
    for (let page = 0; page < jobPages; page++) {
      const query = new URLSearchParams({ limit: String(JOBS_PAGE) });
      if (cursor) query.set("cursor", cursor);
      const answer = await apiJson(`/v1/jobs?${query}`);
      jobs.push(...answer.jobs);
      cursor = answer.next_cursor;
      if (!cursor) break;
    }
  } catch (error) {
    refused(error);
    return;
  }
  nextCursor = cursor;
  $("more-jobs").hidden = !nextCursor;
  const items = await Promise.all(jobs.map(async (job) => {
    const li = document.createElement("li");
    li.dataset.jobId = job.id;
    li.dataset.status = job.status;
    li.title = `${job.id}: open`;
    const url = await thumbnail(job);
    let thumb = url && thumbImage(job.id, url);
    if (!thumb) {
      thumb = document.createElement("div");
      thumb.className = "thumb";
    }
    const meta = document.createElement("div");
    meta.className = "meta";
    const name = document.createElement("code");
    name.textContent = job.id.slice(0, 8);
    const badge = document.createElement("span");
    badge.className = `status ${job.status}`;
    badge.textContent = job.status;
    meta.append(name, badge);
    li.append(thumb, meta);
    li.addEventListener("click", () => watch(job.id));
    return li;
  }));
  $("jobs").replaceChildren(...items);
  if (!jobs.length) {
    const empty = document.createElement("li");
    empty.className = "hint";
    empty.textContent = "No jobs yet.";
    $("jobs").append(empty);
  }
}

$("refresh").addEventListener("click", () => refreshJobs());
$("more-jobs").addEventListener("click", () => {
  jobPages += 1;
  refreshJobs();
});

// -- start ---------------------------------------------------------------------------------------

if (apiKey) showApp();
else showKeyPanel();
