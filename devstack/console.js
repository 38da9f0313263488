"use strict";
// The local console's only script (devstack/console.py serves it). It asks /live for every
// element marked data-live again and again; what comes back is HTML the server escaped.
(function () {
  const every = Number(document.body.dataset.refreshMs || "2000");
  const shown = new Map();

  async function refresh() {
    try {
      const response = await fetch("/live", { cache: "no-store" });
      if (response.ok) {
        const parts = await response.json();
        for (const node of document.querySelectorAll("[data-live]")) {
          const html = parts[node.id];
          // Compared with what was last set, not with innerHTML (which the browser re-serializes):
          // an unchanged section keeps its selection.
          if (typeof html === "string" && shown.get(node.id) !== html) {
            node.innerHTML = html;
            shown.set(node.id, html);
          }
        }
        document.body.dataset.refreshed = String(Date.now());
      }
    } catch (error) {
      // the stack is stopping or restarting: the next round tries again
    }
    window.setTimeout(refresh, every);
  }
  window.setTimeout(refresh, every);

  // A link into the viewer fetches the viewer alone: the order's answer and the action's
  // outcome stay on the page.
  document.addEventListener("click", async function (event) {
    const link = event.target.closest("a[data-viewer]");
    if (!link || event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) {
      return;
    }
    event.preventDefault();
    const viewer = document.getElementById("viewer-body");
    try {
      const response = await fetch(link.dataset.viewer, { cache: "no-store" });
      const type = response.headers.get("Content-Type") || "";
      if (!response.ok || !type.startsWith("text/html")) {
        throw new Error(String(response.status));
      }
      viewer.innerHTML = await response.text();
    } catch (error) {
      window.location.assign(link.href);  // the whole page, which says what went wrong
      return;
    }
    document.getElementById("viewer").scrollIntoView();
  });

  // One submission per form: a second press while the first is on its way does nothing.
  document.addEventListener("submit", function (event) {
    const form = event.target;
    if (form.dataset.sent) {
      event.preventDefault();
      return;
    }
    form.dataset.sent = "1";
  });
})();
