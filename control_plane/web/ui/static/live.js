// Live pages without reloads. The page's [data-live-src] names an HTML fragment of its changing
// regions; while something runs ([data-live-running], then the fragment's X-Pixelfleet-Running
// header) it is fetched every second, else every idle period (the page's
// pixelfleet-idle-poll-ms: a job started elsewhere shows up), and each [data-part] (by id)
// replaced where it differs.
// Focus, scroll and typed input outside the replaced parts are untouched; a focused control
// inside one is focused again in its replacement. Polling pauses while the tab is hidden.
// A "live-refresh" event (an action just changed what the page shows: actions.js) fetches
// the fragment at once and follows it again while it runs. After each patch a "live-patched"
// event says when the request it answered was sent (its detail.asked, performance.now()).

const POLL_MS = 1000;
const IDLE_MS =
  Number(document.querySelector('meta[name="pixelfleet-idle-poll-ms"]')?.content) || 10000;
const RETRY_MS = 5000; // after a request that did not arrive
const ANNOUNCE_GAP_MS = 8000; // the live region speaks at most this often, except at the end
const RUNNING = "X-Pixelfleet-Running";
const VERSION = "X-Pixelfleet-Version";
const FOCUSABLE = "a[href], button, input, select, textarea, [tabindex]";

const source = document.querySelector("[data-live-src]");
if (source) follow(source, source.hasAttribute("data-live-running"));

// A fragment with a version (the job page's) is asked for what changed since the one before.
function follow(source, startRunning) {
  const url = source.dataset.liveSrc;
  let version = source.dataset.liveVersion;
  const address = () => {
    if (!version) return url;
    return `${url}${url.includes("?") ? "&" : "?"}since=${encodeURIComponent(version)}`;
  };
  let running = startRunning;
  let gone = false; // the fragment answered with an error: the next reload says why
  let timer = null;
  let busy = false;
  let again = false; // a refresh asked for while a request was on its way: one more after it
  const announcer = announcerOf(document);

  const schedule = (delay) => {
    clearTimeout(timer);
    const wait = running ? delay : Math.max(delay, IDLE_MS);
    timer = gone || document.hidden ? null : setTimeout(poll, wait);
  };

  async function poll() {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    again = false;
    let delay = POLL_MS;
    try {
      const asked = performance.now();
      const answer = await fetch(address(), { headers: { Accept: "text/html" }, cache: "no-store" });
      if (!answer.ok || !answer.headers.has(RUNNING)) {
        gone = true; // deleted, or signed out
        return;
      }
      const fragment = new DOMParser().parseFromString(await answer.text(), "text/html");
      patch(fragment, announcer);
      document.dispatchEvent(new CustomEvent("live-patched", { detail: { asked } }));
      running = answer.headers.get(RUNNING) === "1";
      version = answer.headers.get(VERSION) || version;
    } catch {
      delay = RETRY_MS; // offline or restarting: try again later
    } finally {
      busy = false;
      if (again) refresh();
      else schedule(delay);
    }
  }

  function refresh() {
    running = true; // until the answer says otherwise
    clearTimeout(timer);
    poll();
  }

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) schedule(0); // nothing while hidden: clears the timer
    else poll(); // once on return: what changed meanwhile, and whether anything runs
  });
  document.addEventListener("live-refresh", refresh);
  schedule(POLL_MS);
}

function patch(fragment, announcer) {
  const fresh = [...fragment.querySelectorAll("[data-part]")];
  const wanted = new Set(fresh.map((part) => part.id));
  for (const list of fragment.querySelectorAll("[data-parts]")) {
    const current = document.getElementById(list.id);
    for (const part of current ? current.querySelectorAll(":scope > [data-part]") : []) {
      if (!wanted.has(part.id)) part.remove();
    }
  }
  for (const part of fresh) {
    const current = document.getElementById(part.id);
    if (!current) insert(part);
    else if (differs(current, part)) replace(current, part, announcer);
  }
}

// Parts whose HTML holds signed (ever-changing) URLs carry data-v: the state they show.
function differs(current, part) {
  if ("v" in current.dataset || "v" in part.dataset) return current.dataset.v !== part.dataset.v;
  return current.outerHTML !== part.outerHTML;
}

function insert(part) {
  const list = part.parentElement && document.getElementById(part.parentElement.id);
  if (!list) return;
  const before = part.previousElementSibling;
  const anchor = before && before.id ? document.getElementById(before.id) : null;
  const node = document.importNode(part, true);
  if (anchor && anchor.parentElement === list) anchor.after(node);
  else list.prepend(node);
}

function replace(current, part, announcer) {
  const node = document.importNode(part, true);
  const focused = document.activeElement;
  const keep = focused && focused !== document.body && current.contains(focused);
  const key = keep ? focusKey(current, focused) : null;
  current.replaceWith(node);
  if (keep) refocus(node, key);
  announcer.hear(node);
}

function focusKey(root, element) {
  const focusable = [...root.querySelectorAll(FOCUSABLE)];
  return { id: element.id, text: element.textContent.trim(), index: focusable.indexOf(element) };
}

function refocus(root, key) {
  const focusable = [...root.querySelectorAll(FOCUSABLE)];
  let target = key.id ? root.querySelector(`#${CSS.escape(key.id)}`) : null;
  target = target || focusable.find((element) => element.textContent.trim() === key.text);
  target = target || focusable[Math.min(key.index, focusable.length - 1)];
  if (!target) {
    root.tabIndex = -1; // what had focus is gone: keep it in the same place of the page
    target = root;
  }
  target.focus({ preventScroll: true });
}

// The polite live region: says a part's data-announce when its data-announce-key changes
// (e.g. each quarter of a job's progress), not on every tick.
function announcerOf(doc) {
  const region = doc.querySelector("[data-announcer]");
  const said = { key: null, at: 0 };
  const first = doc.querySelector("[data-announce-key]");
  if (first) said.key = first.dataset.announceKey;
  return {
    hear(node) {
      if (!region || !node.dataset.announce || node.dataset.announceKey === said.key) return;
      const final = "announceFinal" in node.dataset;
      if (!final && Date.now() - said.at < ANNOUNCE_GAP_MS) return;
      said.key = node.dataset.announceKey;
      said.at = Date.now();
      region.textContent = node.dataset.announce;
    },
  };
}
