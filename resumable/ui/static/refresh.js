// Refresh the live part of the page (the element with data-live) every few seconds, from
// the same URL with the X-Live header, unless the reader is typing in a form or the tab
// is hidden. The server escapes every value; nothing here builds HTML from data.
(function () {
  "use strict";
  var seconds = parseFloat(document.body.getAttribute("data-refresh") || "0");
  var live = document.querySelector("[data-live]");
  if (!live || !(seconds > 0)) { return; }
  var busy = false;
  function editing() {
    var active = document.activeElement;
    return active && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName);
  }
  function openDetails() {
    var open = [];
    live.querySelectorAll("details").forEach(function (d, i) { if (d.open) { open.push(i); } });
    return open;
  }
  function tick() {
    if (busy || document.hidden || editing()) { return; }
    busy = true;
    fetch(window.location.href, { headers: { "X-Live": "1" }, credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        var open = openDetails();
        live.innerHTML = html;
        var all = live.querySelectorAll("details");
        open.forEach(function (i) { if (all[i]) { all[i].open = true; } });
        live.setAttribute("data-refreshed", new Date().toISOString());
      })
      .catch(function () {})
      .then(function () { busy = false; });
  }
  window.setInterval(tick, seconds * 1000);
})();
