// Action buttons without a reload: a form[data-action] (Cancel, Retry failed, Rerun, V1–V4)
// is posted with fetch instead of navigating, and the page's live regions are asked to
// refresh ("live-refresh", live.js). When the server's answer is the page already shown
// (cancel, retry), that is all; when it is another page (a rerun or a variation set is a new
// job), a notice links to it.
// Either way the result is said in the notice region nearest the form (a set's, the job's);
// after a cancel or a retry, whose button goes away, the notice has the focus. A form with
// data-done-until (a selector) says data-done-after instead once the page, refreshed after
// the action, matches it: a retry's notice says when the retried images have ended.
// Without this script, or if the request cannot be made, the form posts as it always did.

const NOTICE = "[data-action-notice]";

document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!(form instanceof HTMLFormElement) || !form.matches("form[data-action]")) return;
  event.preventDefault();
  if (form.dataset.busy) return; // a second press while the first is on its way
  form.dataset.busy = "1";
  act(form).finally(() => delete form.dataset.busy);
});

async function act(form) {
  // found now: a live patch may replace the form's part (its state changed) before the answer
  const region = nearestRegion(form);
  let answer;
  try {
    answer = await fetch(form.action, {
      method: "POST",
      body: new URLSearchParams(new FormData(form)),
      headers: { Accept: "text/html" },
      credentials: "same-origin",
    });
  } catch {
    say(region, "error", "The server could not be reached: nothing was changed. Try again in a moment.");
    return;
  }
  if (!answer.ok) {
    say(region, "error", await refusal(answer));
    return;
  }
  const landed = new URL(answer.url);
  const answered = performance.now(); // refreshes asked from now on show what the action did
  document.dispatchEvent(new CustomEvent("live-refresh")); // e.g. a new rerun or variations link
  if (landed.pathname === location.pathname) {
    const said = say(region, "notice", form.dataset.done || "Done.");
    said?.focus(); // the button pressed goes away with the state it acted on: not focus
    if (said && form.dataset.doneUntil) {
      settle(said, form.dataset.doneUntil, form.dataset.doneAfter || "Done.", answered);
    }
    return;
  }
  const link = { href: landed.pathname, text: form.dataset.open || "Open it" };
  say(region, "notice", form.dataset.done || "Started.", link);
}

// `line` says `after` at the first live refresh asked for after `since` in which the page
// matches `until` (one asked before may still show the state the action left behind).
function settle(line, until, after, since) {
  const check = (event) => {
    if (!line.isConnected) document.removeEventListener("live-patched", check);
    else if (event.detail.asked >= since && document.querySelector(until)) {
      line.textContent = after;
      document.removeEventListener("live-patched", check);
    }
  };
  document.addEventListener("live-patched", check);
}

// The reason an error page gives (its .error paragraph), or the status in words.
async function refusal(answer) {
  const page = new DOMParser().parseFromString(await answer.text(), "text/html");
  const reason = page.querySelector("main .error");
  return reason ? reason.textContent.trim() : `The server refused (${answer.status} ${answer.statusText}).`;
}

function say(region, kind, text, link = null) {
  if (!region) return null;
  const line = document.createElement("p");
  line.className = kind;
  line.tabIndex = -1;
  line.append(text);
  if (link) {
    const anchor = document.createElement("a");
    anchor.href = link.href;
    anchor.textContent = link.text;
    line.append(" ", anchor);
  }
  region.replaceChildren(line);
  return line;
}

function nearestRegion(form) {
  for (let around = form.parentElement; around; around = around.parentElement) {
    const region = around.querySelector(NOTICE);
    if (region) return region;
  }
  return null;
}
