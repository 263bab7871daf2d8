// The lightbox: a link with data-lightbox="<viewer page>" opens that page's viewer (its
// .viewer element) in a modal dialog instead of leaving the page. ←/→ move between the page's
// lightbox links (loading the gallery's next page at the end), Escape closes and puts focus
// back on the thumbnail of the image shown. Without this script the links still work.
// A link with data-gallery-more appends the next page of the gallery in place.

const LINKS = "a[data-lightbox]";
const MORE = "a[data-gallery-more]";

let dialog = null;
let current = null; // the link of the image shown
let loading = 0; // the number of the latest load: an older one that ends late is dropped

function buildDialog() {
  const box = document.createElement("dialog");
  box.className = "lightbox";
  box.setAttribute("aria-modal", "true");
  box.setAttribute("aria-labelledby", "viewer-title");
  box.innerHTML = `
    <div class="lightbox-bar">
      <span class="lightbox-count" aria-live="polite"></span>
      <button type="button" class="secondary" data-move="-1" aria-label="Previous image">←</button>
      <button type="button" class="secondary" data-move="1" aria-label="Next image">→</button>
      <button type="button" class="secondary" data-close>Close</button>
    </div>
    <div class="lightbox-body"><h1 id="viewer-title" class="muted">Loading…</h1></div>`;
  box.addEventListener("click", (event) => {
    if (event.target === box) box.close(); // a click on the backdrop
    const move = event.target.closest("[data-move]");
    if (move) step(Number(move.dataset.move));
    if (event.target.closest("[data-close]")) box.close();
  });
  // on the document: a click on the image (not focusable) must not leave the keys dead
  document.addEventListener("keydown", (event) => {
    if (!box.open || event.altKey || event.ctrlKey || event.metaKey) return;
    if (event.key === "ArrowLeft") step(-1);
    else if (event.key === "ArrowRight") step(1);
    else if (event.key !== "Tab" || !wrapFocus(box, event.shiftKey)) return;
    event.preventDefault();
  });
  box.addEventListener("close", () => {
    if (current && current.isConnected) {
      current.scrollIntoView({ block: "nearest" });
      current.focus();
    }
  });
  document.body.append(box);
  return box;
}

const FOCUSABLE = "a[href], button:not([disabled]), input, select, textarea, [tabindex]";

// Tab from the dialog's last control goes to its first, Shift+Tab from the first to the
// last: the keyboard never leaves the open dialog. True when it moved the focus.
function wrapFocus(box, backwards) {
  const inside = Array.from(box.querySelectorAll(FOCUSABLE));
  const edge = backwards ? inside[0] : inside[inside.length - 1];
  if (!inside.length || document.activeElement !== edge) return false;
  (backwards ? inside[inside.length - 1] : inside[0]).focus();
  return true;
}

function links() {
  return Array.from(document.querySelectorAll(LINKS));
}

async function show(link) {
  dialog ??= buildDialog();
  current = link;
  const mine = ++loading;
  const all = links();
  dialog.querySelector(".lightbox-count").textContent =
    `${all.indexOf(link) + 1} of ${all.length}${document.querySelector(MORE) ? "+" : ""}`;
  if (!dialog.open) dialog.showModal();
  const body = dialog.querySelector(".lightbox-body");
  let viewer;
  try {
    viewer = await fetchViewer(link.dataset.lightbox);
  } catch (error) {
    viewer = message(`This image could not be loaded (${error.message}).`);
  }
  if (mine !== loading) return;
  body.replaceChildren(viewer);
}

async function fetchViewer(address) {
  const page = await fetchPage(address);
  const viewer = page.querySelector("[data-viewer]");
  if (!viewer) throw new Error("no viewer on the page");
  return document.importNode(viewer, true);
}

async function fetchPage(address) {
  const answer = await fetch(address, { headers: { Accept: "text/html" } });
  if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
  return new DOMParser().parseFromString(await answer.text(), "text/html");
}

function message(text) {
  const article = document.createElement("article");
  article.className = "viewer";
  article.innerHTML = '<h1 id="viewer-title">Image</h1><p class="error"></p>';
  article.querySelector(".error").textContent = text;
  return article;
}

async function step(by) {
  if (!current) return;
  let all = links();
  let index = all.indexOf(current) + by;
  const more = document.querySelector(MORE);
  if (index >= all.length && more) {
    await loadMore(more);
    all = links();
  }
  if (index < 0 || index >= all.length) return;
  const link = all[index];
  link.scrollIntoView({ block: "nearest" });
  await show(link);
}

async function loadMore(moreLink) {
  if (moreLink.dataset.loading) return [];
  moreLink.dataset.loading = "1";
  try {
    const page = await fetchPage(moreLink.href);
    const grid = document.querySelector("[data-gallery]");
    const added = Array.from(page.querySelectorAll("[data-gallery] > *"), (item) =>
      document.importNode(item, true),
    );
    grid.append(...added);
    const next = page.querySelector(MORE);
    if (next) {
      moreLink.href = next.getAttribute("href");
      delete moreLink.dataset.loading;
    } else {
      (moreLink.closest("p") ?? moreLink).remove();
    }
    return added;
  } catch (error) {
    delete moreLink.dataset.loading;
    moreLink.textContent = `More images (the last try failed: ${error.message}; try again)`;
    return [];
  }
}

document.addEventListener("click", async (event) => {
  if (event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const link = event.target.closest(`${LINKS}, ${MORE}`);
  if (!link) return;
  event.preventDefault();
  if (link.matches(MORE)) {
    const added = await loadMore(link);
    added[0]?.querySelector(LINKS)?.focus();
  } else {
    await show(link);
  }
});
