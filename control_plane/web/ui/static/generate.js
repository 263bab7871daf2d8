// The group page's generate form: the fields of the chosen mode only, "all N uploads"
// ticking every page's, the number of images and their estimated cost as the form changes
// (the server's estimate of the form as it stands), and a confirmation above the server's
// thresholds saying what will be spent; a refused form's first field at fault (a prompt the
// server found missing) has the focus. Without this script the server asks once more.

const WAIT_MS = 300; // after the last keystroke, before asking for an estimate

const form = document.getElementById("generate-form");
if (form) enhance(form);

function enhance(form) {
  form.querySelector("input[name=confirmed]")?.remove(); // this script confirms for itself
  const ui = {
    mode: form.querySelector("[data-mode]"),
    estimate: form.querySelector("[data-estimate-text]"),
    generate: form.querySelector("[data-generate]"),
    dialog: form.querySelector("[data-confirm]"),
    dialogText: form.querySelector("[data-confirm-text]"),
    yes: form.querySelector("[data-confirm-yes]"),
    no: form.querySelector("[data-confirm-no]"),
  };
  const estimates = latestEstimates(form, ui);
  let timer = 0;
  const changed = () => {
    clearTimeout(timer);
    timer = setTimeout(estimates.refresh, WAIT_MS);
  };
  form.addEventListener("input", changed);
  form.addEventListener("change", changed);
  const countTicks = wireTicks(form);
  document.addEventListener("uploads-changed", () => {
    showMode(form, ui.mode.value); // the uploads grid was shown again (upload.js)
    countTicks();
    changed();
  });
  ui.mode.addEventListener("change", () => showMode(form, ui.mode.value));
  showMode(form, ui.mode.value);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    generate(form, ui, estimates);
  });
  ui.no.addEventListener("click", () => ui.dialog.close());
  ui.yes.addEventListener("click", () => {
    ui.dialog.close();
    submitConfirmed(form, ui);
  });
  estimates.refresh();
  form.querySelector("[aria-invalid=true]")?.focus(); // refused: the first field at fault
}

function showMode(form, mode) {
  for (const element of form.querySelectorAll("[data-for-mode]")) {
    element.hidden = element.dataset.forMode !== mode;
  }
}

// "Select all" and the ticks, looked up as they are (upload.js shows the grid again).
function wireTicks(form) {
  const all = () => form.querySelector("[data-all-uploads]");
  const ticks = () => [...form.querySelectorAll("[data-tick]")];
  const count = () => {
    const shown = form.querySelector("[data-ticked-count]");
    if (!shown) return;
    const ticked = ticks().filter((box) => box.checked).length;
    shown.textContent = all().checked ? "every upload selected" : ticked ? `${ticked} ticked on this page` : "";
  };
  form.addEventListener("change", (event) => {
    const box = event.target;
    if (box.matches("[data-all-uploads]")) {
      for (const tick of ticks()) tick.checked = box.checked;
    } else if (box.matches("[data-tick]") && !box.checked && all()) {
      all().checked = false;
    } else return;
    count();
  });
  count();
  return count;
}

// Estimates of the form as it stands, one request at a time (each plans the submission on
// the server): a question that a later one overtook while it waited is not asked, and
// answers null.
function latestEstimates(form, ui) {
  let asked = 0;
  let queue = Promise.resolve(null);
  const refresh = () => {
    const mine = ++asked;
    queue = queue.then(async () => {
      if (mine !== asked) return null;
      const answer = await estimateOf(form);
      if (mine === asked) {
        ui.estimate.classList.toggle("estimate-problem", !answer.ok);
        ui.estimate.textContent = answer.ok ? said(answer) : answer.problem;
      }
      return answer;
    });
    return queue;
  };
  return { refresh };
}

function said(estimate) {
  const cost = `${estimate.summary} at the listed prices`;
  return estimate.note ? `${cost}; ${estimate.note}` : cost;
}

async function estimateOf(form) {
  try {
    const response = await fetch(form.dataset.estimate, {
      method: "POST",
      body: new URLSearchParams(new FormData(form)),
      credentials: "same-origin",
    });
    const answer = await response.json();
    if (!response.ok) return { ok: false, problem: answer.detail || response.statusText };
    return { ok: !answer.problem, ...answer };
  } catch {
    return { ok: false, problem: "The estimate could not be fetched (is the server up?)" };
  }
}

async function generate(form, ui, estimates) {
  ui.generate.disabled = true;
  let answer = null;
  while (answer === null) answer = await estimates.refresh();
  ui.generate.disabled = false;
  if (!answer.ok) {
    form.submit(); // the server says what is wrong, keeping what was typed
    return;
  }
  if (!answer.confirm) {
    submitConfirmed(form, ui);
    return;
  }
  ui.dialogText.textContent = `This will generate ${answer.summary}.`;
  ui.yes.textContent = `Generate ${answer.images.toLocaleString()} images`;
  ui.dialog.showModal();
  ui.no.focus();
}

function submitConfirmed(form, ui) {
  const confirmed = document.createElement("input");
  confirmed.type = "hidden";
  confirmed.name = "confirmed";
  confirmed.value = "1";
  form.append(confirmed);
  ui.generate.disabled = true;
  form.submit();
}
