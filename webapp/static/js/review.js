// The review page: draw the source PDF with pdf.js (served from static/vendor/pdfjs, never a CDN), page by page as
// each page scrolls into view. pdf.js 6 has no eval path, and its worker is a module script of our own origin, so
// the page's CSP needs nothing beyond 'self' (worker-src says so explicitly).
const viewer = document.getElementById("pdf-viewer");

// The page's sentences in its reader's language (app.js reads them from the page's JSON block).
const t = (key, values) => (window.pdfqueueText ? window.pdfqueueText(key, values) : key);

function say(text, isError) {
  let status = viewer.querySelector(".pdf-status");
  if (!status) {
    status = document.createElement("p");
    status.className = "pdf-status";
    status.setAttribute("role", "status");
    viewer.prepend(status);
  }
  status.textContent = text;
  status.classList.toggle("error-text", !!isError);
}

async function errorOf(response) {
  try {
    return (await response.json()).error.message;
  } catch (e) {
    return t("server_answered", { status: response.status });
  }
}

// Render one page into its canvas at the viewer's width, sharp on high-density screens.
async function drawPage(pdf, number, canvas) {
  const page = await pdf.getPage(number);
  const natural = page.getViewport({ scale: 1 });
  const ratio = window.devicePixelRatio || 1;
  const scale = Math.max(canvas.clientWidth || viewer.clientWidth - 24, 200) / natural.width;
  const viewport = page.getViewport({ scale: scale * ratio });
  canvas.width = Math.floor(viewport.width);
  canvas.height = Math.floor(viewport.height);
  await page.render({ canvas, canvasContext: canvas.getContext("2d"), viewport }).promise;
  canvas.dataset.drawn = "true";
  page.cleanup();
}

async function show() {
  const vendor = viewer.dataset.vendor;
  let pdfjs;
  try {
    pdfjs = await import(vendor + "pdf.min.mjs");
  } catch (e) {
    say(t("viewer_failed"), true);
    return;
  }
  pdfjs.GlobalWorkerOptions.workerSrc = vendor + "pdf.worker.min.mjs";
  const response = await fetch(viewer.dataset.src, { credentials: "same-origin" });
  if (!response.ok) {
    say(await errorOf(response), true);
    return;
  }
  let pdf;
  try {
    pdf = await pdfjs.getDocument({
      data: new Uint8Array(await response.arrayBuffer()),
      standardFontDataUrl: vendor + "standard_fonts/",
      wasmUrl: vendor + "wasm/",
      enableXfa: false,
    }).promise;
  } catch (e) {
    say(t("cannot_draw", { reason: e.message }), true);
    return;
  }
  const first = await pdf.getPage(1);
  const size = first.getViewport({ scale: 1 });
  const pages = [];
  for (let number = 1; number <= pdf.numPages; number++) {
    const figure = document.createElement("figure");
    figure.className = "pdf-page";
    const canvas = document.createElement("canvas");
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", t("page_of_name", { number: number, pages: pdf.numPages, name: viewer.dataset.name }));
    canvas.dataset.page = String(number);
    // Until drawn, a blank of page one's proportions keeps the scroll position honest.
    canvas.width = Math.round(size.width);
    canvas.height = Math.round(size.height);
    const caption = document.createElement("figcaption");
    caption.textContent = t("page_of", { number: number, pages: pdf.numPages });
    figure.append(canvas, caption);
    pages.push(figure);
  }
  viewer.replaceChildren(...pages);
  viewer.dataset.pages = String(pdf.numPages);

  const drawing = new WeakSet();
  const observer = new IntersectionObserver((entries) => {
    for (const entry of entries) {
      const canvas = entry.target;
      if (!entry.isIntersecting || drawing.has(canvas)) continue;
      drawing.add(canvas);
      observer.unobserve(canvas);
      drawPage(pdf, Number(canvas.dataset.page), canvas).catch((e) => {
        canvas.setAttribute("aria-label", canvas.getAttribute("aria-label") + " (" + t("not_drawn", { reason: e.message }) + ")");
      });
    }
  }, { root: viewer, rootMargin: "400px 0px" });
  viewer.querySelectorAll("canvas").forEach((canvas) => observer.observe(canvas));
}

if (viewer) show();

// Next / previous job in the queue's view: j and k, as the page's links say (aria-keyshortcuts). Single-key
// shortcuts can be turned off (WCAG 2.1.4), and the choice is kept for the next page.
const SHORTCUTS = "pdfqueue.shortcuts";
const toggle = document.getElementById("shortcuts");
if (toggle) {
  toggle.checked = localStorage.getItem(SHORTCUTS) !== "off";
  toggle.addEventListener("change", () => localStorage.setItem(SHORTCUTS, toggle.checked ? "on" : "off"));
}
document.addEventListener("keydown", (evt) => {
  if (evt.defaultPrevented || evt.altKey || evt.ctrlKey || evt.metaKey || evt.shiftKey) return;
  if (toggle && !toggle.checked) return;
  const target = evt.target;
  if (target.closest && target.closest("input, textarea, select, [contenteditable]")) return;
  const link = document.querySelector('a[data-key="' + evt.key + '"]');
  if (link) {
    evt.preventDefault();
    link.click();
  }
});
