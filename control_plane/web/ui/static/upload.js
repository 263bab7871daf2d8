// The group page's uploads for thousands of images: files and folders dropped or picked,
// sent to the JSON API (POST /api/uploads) a batch at a time, several batches at once, as
// the CLI does; an overall progress bar, each refused file with its reason, and a retry of
// the files a network error or a server error kept out; once done, the page's counts and
// uploads grid are shown again in place (ticks and prompts kept). Without this script the
// form posts.

const BATCH_FILES = 32;
const BATCH_BYTES = 16 * 1024 * 1024;
const PARALLEL = 4;
const SHOWN_PROBLEMS = 500;
const IMAGE_TYPES = ["image/png", "image/jpeg", "image/webp"];
const IMAGE_NAME = /\.(png|jpe?g|webp)$/i;
const STATUS_EVERY_MS = 1000; // the live region speaks at most this often while uploading
const REFRESHED = ["group-counts", "uploads-total", "group-uploads"]; // ids shown again when done

const form = document.getElementById("upload-form");
if (form) enhance(form);

function enhance(form) {
  const panel = document.querySelector("[data-upload-progress]");
  const ui = {
    panel,
    meter: panel.querySelector("[role=progressbar]"),
    status: panel.querySelector("[data-upload-status]"),
    problems: panel.querySelector("[data-upload-problems]"),
    retry: panel.querySelector("[data-upload-retry]"),
    show: panel.querySelector("[data-upload-show]"),
    attributes: form.querySelector("[name=attributes]"),
  };
  const state = newState(form.dataset);
  form.querySelector("[data-plain-upload]").hidden = true;
  form.addEventListener("submit", (event) => event.preventDefault());
  for (const input of form.querySelectorAll("[data-files]")) {
    input.addEventListener("change", () => {
      const picked = [...input.files].map((file) => ({ file, path: file.webkitRelativePath || file.name }));
      input.value = "";
      start(state, ui, picked);
    });
  }
  for (const kind of ["dragover", "drop"]) {
    // a file dropped beside the drop zone is ignored, rather than opened in place of the page
    document.addEventListener(kind, (event) => event.preventDefault());
  }
  const zone = form.querySelector("[data-dropzone]");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", async (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    start(state, ui, await droppedFiles(event.dataTransfer));
  });
  ui.retry.addEventListener("click", () => {
    const again = state.failed.splice(0);
    state.total -= again.length;
    state.done -= again.length;
    start(state, ui, again);
  });
}

function newState(dataset) {
  return {
    group: dataset.group,
    uploadsBefore: Number(dataset.uploads),
    perPage: Number(dataset.perPage),
    queue: [],
    workers: 0,
    total: 0,
    done: 0,
    uploaded: 0,
    duplicates: 0,
    rejected: [], // {path, reason}: refused by the server, or skipped here
    failed: [], // {file, path, reason}: may be sent again
    attributes: null,
    spokenAt: 0,
  };
}

// Everything dropped, folders walked: {file, path} each. The items are read before the
// first await (the browser empties the DataTransfer once the event is over).
async function droppedFiles(transfer) {
  const items = [...transfer.items].filter((item) => item.kind === "file");
  const entries = items.map((item) => (item.webkitGetAsEntry ? item.webkitGetAsEntry() : null));
  const loose = items.map((item) => item.getAsFile());
  const found = [];
  for (const [index, entry] of entries.entries()) {
    if (entry) await walk(entry, found);
    else if (loose[index]) found.push({ file: loose[index], path: loose[index].name });
  }
  return found;
}

async function walk(entry, found) {
  if (entry.isFile) {
    const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
    found.push({ file, path: entry.fullPath.replace(/^\//, "") });
    return;
  }
  const reader = entry.createReader();
  for (;;) {
    const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
    if (batch.length === 0) return;
    for (const child of batch) await walk(child, found);
  }
}

function start(state, ui, picked) {
  if (picked.length === 0) return;
  if (state.workers === 0) {
    const attributes = typedAttributes(ui.attributes.value);
    if (attributes.error) {
      showProblem(ui, attributes.error);
      ui.attributes.focus();
      return;
    }
    state.attributes = attributes.json;
  }
  ui.panel.hidden = false;
  state.total += picked.length;
  for (const item of picked) {
    const skip = skipReason(item);
    if (skip) {
      state.rejected.push({ path: item.path, reason: skip });
      state.done += 1;
    } else {
      state.queue.push(item);
    }
  }
  while (state.workers < PARALLEL && state.queue.length > 0) {
    state.workers += 1;
    work(state, ui).finally(() => {
      state.workers -= 1;
      if (state.workers > 0) return;
      render(state, ui, true);
      showUploads(state, ui).finally(() => {
        document.dispatchEvent(new CustomEvent("uploads-changed")); // the estimate counts them
      });
    });
  }
  render(state, ui, true);
}

// The page's counts and its page of uploads as they are now, in place of the old ones, the
// ticks and prompts typed meanwhile kept; "Show the uploads" then goes to the grid if the new
// uploads are on this page, to the last page if not.
async function showUploads(state, ui) {
  if (state.uploaded === 0) return;
  let fresh;
  try {
    const answer = await fetch(`/live/groups/${state.group}/uploads?page=${shownPage()}`, { cache: "no-store" });
    if (!answer.ok) return; // the link still leads there
    fresh = new DOMParser().parseFromString(await answer.text(), "text/html");
  } catch {
    return;
  }
  for (const id of REFRESHED) {
    const current = document.getElementById(id);
    const replacement = fresh.getElementById(id);
    if (!current || !replacement) continue;
    const typed = typedIn(current);
    const node = document.importNode(replacement, true);
    current.replaceWith(node);
    restoreTyped(node, typed);
  }
  if (ui.show.href.endsWith(`page=${shownPage()}`)) ui.show.setAttribute("href", "#uploads");
}

function shownPage() {
  const page = new URL(location.href).searchParams.get("page") || "1";
  return /^\d+$/.test(page) ? page : "1";
}

function typedIn(root) {
  const typed = new Map();
  for (const input of root.querySelectorAll("input")) {
    if (input.type === "checkbox") typed.set(`${input.name}=${input.value}`, input.checked);
    else if (input.id) typed.set(input.id, input.value);
  }
  return typed;
}

function restoreTyped(root, typed) {
  for (const input of root.querySelectorAll("input")) {
    const key = input.type === "checkbox" ? `${input.name}=${input.value}` : input.id;
    if (!typed.has(key)) continue;
    if (input.type === "checkbox") input.checked = typed.get(key);
    else input.value = typed.get(key);
  }
}

function skipReason(item) {
  const name = item.path.split("/").pop();
  if (name.startsWith(".")) return "hidden file: skipped";
  if (!IMAGE_TYPES.includes(item.file.type) && !IMAGE_NAME.test(name)) {
    return "not a PNG, JPEG or WebP image: skipped";
  }
  return null;
}

async function work(state, ui) {
  while (state.queue.length > 0) {
    await send(state, ui, nextBatch(state.queue));
  }
}

function nextBatch(queue) {
  const batch = [];
  let bytes = 0;
  while (queue.length > 0 && batch.length < BATCH_FILES) {
    if (batch.length > 0 && bytes + queue[0].file.size > BATCH_BYTES) break;
    const item = queue.shift();
    bytes += item.file.size;
    batch.push(item);
  }
  return batch;
}

// One request of `batch`; a batch refused as a whole (too large, or nothing in it accepted)
// is sent again in halves, down to the file, which then carries the server's reason.
async function send(state, ui, batch) {
  const body = new FormData();
  body.append("group_id", state.group);
  if (state.attributes) body.append("attributes", state.attributes);
  for (const item of batch) body.append("files", item.file, item.path.split("/").pop());
  let response;
  try {
    response = await fetch("/api/uploads", { method: "POST", body, credentials: "same-origin" });
  } catch {
    return settle(state, ui, batch, "failed", "the connection failed");
  }
  if (response.status === 201) {
    const answer = await response.json();
    state.uploaded += answer.images.filter((image) => !image.duplicate).length;
    state.duplicates += answer.images.filter((image) => image.duplicate).length;
    const byName = new Map(batch.map((item) => [item.path.split("/").pop(), item.path]));
    for (const refused of answer.rejected) {
      state.rejected.push({ path: byName.get(refused.filename) || refused.filename, reason: refused.reason });
    }
    state.done += batch.length;
    return render(state, ui);
  }
  const detail = await responseDetail(response);
  if ((response.status === 413 || response.status === 422) && !detail.startsWith("form field")) {
    if (batch.length > 1) {
      const half = Math.ceil(batch.length / 2);
      await send(state, ui, batch.slice(0, half));
      return send(state, ui, batch.slice(half));
    }
    const name = batch[0].path.split("/").pop();
    return settle(state, ui, batch, "rejected", detail.replace(`no image was accepted: ${name}: `, ""));
  }
  return settle(state, ui, batch, "failed", `the server answered ${response.status}: ${detail}`);
}

async function responseDetail(response) {
  try {
    const answer = await response.json();
    return String(answer.detail || response.statusText);
  } catch {
    return response.statusText || "no answer";
  }
}

function settle(state, ui, batch, outcome, reason) {
  for (const item of batch) {
    if (outcome === "failed") state.failed.push({ ...item, reason });
    else state.rejected.push({ path: item.path, reason });
  }
  state.done += batch.length;
  render(state, ui);
}

function render(state, ui, final = false) {
  const percent = state.total ? Math.round((100 * state.done) / state.total) : 0;
  ui.meter.setAttribute("aria-valuenow", String(percent));
  ui.meter.setAttribute("aria-valuetext", `${state.done} of ${state.total} files`);
  ui.meter.firstElementChild.style.width = `${percent}%`;
  const busy = state.workers > 0 || state.queue.length > 0;
  const now = Date.now();
  if (busy && !final && now - state.spokenAt < STATUS_EVERY_MS) return;
  state.spokenAt = now;
  ui.status.textContent = busy ? `Uploading: ${state.done.toLocaleString()} of ${state.total.toLocaleString()} files…` : summary(state);
  ui.retry.hidden = busy || state.failed.length === 0;
  ui.retry.textContent = `Retry ${state.failed.length} failed file${state.failed.length === 1 ? "" : "s"}`;
  const pages = Math.max(1, Math.ceil((state.uploadsBefore + state.uploaded) / state.perPage));
  ui.show.href = `/groups/${state.group}?page=${pages}`;
  ui.show.hidden = busy || state.uploaded + state.duplicates === 0;
  listProblems(state, ui);
}

function summary(state) {
  const parts = [`${state.uploaded.toLocaleString()} uploaded`];
  if (state.duplicates) parts.push(`${state.duplicates.toLocaleString()} already in the group`);
  if (state.rejected.length) parts.push(`${state.rejected.length.toLocaleString()} not accepted`);
  if (state.failed.length) parts.push(`${state.failed.length.toLocaleString()} failed (retry them)`);
  return `Done: ${parts.join(", ")}.`;
}

function listProblems(state, ui) {
  const problems = [
    ...state.failed.map((item) => [item.path, `not uploaded: ${item.reason}`]),
    ...state.rejected.map((item) => [item.path, item.reason]),
  ];
  const rows = problems.slice(0, SHOWN_PROBLEMS).map(([path, reason]) => {
    const row = document.createElement("li");
    const name = document.createElement("strong");
    name.textContent = path;
    row.append(name, `: ${reason}`);
    return row;
  });
  if (problems.length > SHOWN_PROBLEMS) {
    const more = document.createElement("li");
    more.textContent = `and ${(problems.length - SHOWN_PROBLEMS).toLocaleString()} more`;
    rows.push(more);
  }
  ui.problems.replaceChildren(...rows);
  ui.problems.hidden = rows.length === 0;
}

function showProblem(ui, message) {
  ui.panel.hidden = false;
  ui.status.textContent = message;
}

// The attributes field, as the server reads it: key=value pairs (numbers and true/false
// typed as such) separated by commas or lines, or a JSON object.
function typedAttributes(text) {
  if (!text.trim() || text.trim().startsWith("{")) return { json: text.trim() || null };
  const pairs = {};
  for (const part of text.split(/[,\n]/).filter((piece) => piece.trim())) {
    const found = part.match(/^\s*([^=:]+?)\s*[=:]\s*(.*?)\s*$/);
    if (!found) return { error: `Attributes: "${part.trim()}" is not a key=value pair; write them as gender=female, age=30` };
    pairs[found[1]] = typedValue(found[2]);
  }
  return { json: JSON.stringify(pairs) };
}

function typedValue(text) {
  if (/^(true|false)$/i.test(text)) return text.toLowerCase() === "true";
  if (/^-?\d+(\.\d+)?$/.test(text)) return Number(text);
  return text;
}
