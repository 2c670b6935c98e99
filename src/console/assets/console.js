// cluebridge console: refreshes the live part of a page (an element with
// data-live="URL") every two seconds from the console's own server. The
// pages work without this script; it only saves reloading them.
(function () {
  "use strict";
  var live = document.querySelector("[data-live]");
  if (!live || !window.fetch || !window.DOMParser) {
    return;
  }
  var url = live.getAttribute("data-live");
  var every = 2000;
  var stamp = document.querySelector("[data-live-status]");

  function show(text) {
    if (stamp) {
      stamp.textContent = text;
    }
  }

  function tick() {
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (!r.ok) {
          throw new Error("the console answered " + r.status);
        }
        return r.text();
      })
      .then(function (html) {
        // Parsed as an inert document (no script runs), then moved in.
        var doc = new DOMParser().parseFromString(html, "text/html");
        live.replaceChildren.apply(live, Array.prototype.slice.call(doc.body.childNodes));
        show("live");
      })
      .catch(function (e) {
        show("not updated: " + e.message);
      })
      .then(function () {
        window.setTimeout(tick, every);
      });
  }

  window.setTimeout(tick, every);
})();
