// Client API dashboard: progressive enhancement only. Every page works without this script;
// with it, live regions follow the account's event stream, copy buttons copy, times show in
// the viewer's zone, and a new key asks to be confirmed stored before the page is left.
"use strict";

(function () {
  // Times: UTC in the markup, the viewer's zone on screen, UTC kept on hover.
  function localTimes(root) {
    var format = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var at = new Date(el.getAttribute("datetime"));
      if (!isNaN(at)) { el.textContent = format.format(at); }
    });
  }

  // Copy buttons copy the value of the field they name.
  function copyButtons(root) {
    root.querySelectorAll("button[data-copy-from]").forEach(function (button) {
      button.addEventListener("click", function () {
        var field = document.getElementById(button.getAttribute("data-copy-from"));
        if (!field) { return; }
        var label = button.textContent;
        navigator.clipboard.writeText(field.value).then(function () {
          button.textContent = "Copied";
          setTimeout(function () { button.textContent = label; }, 2000);
        }, function () {
          field.select();
          button.textContent = "Press Ctrl+C";
        });
      });
    });
  }

  // The key page: Done stays disabled until "I have stored it" is ticked, and leaving early asks.
  function storedStep() {
    var stored = document.getElementById("stored");
    var done = document.getElementById("done");
    if (!stored || !done) { return; }
    done.disabled = true;
    stored.addEventListener("change", function () { done.disabled = !stored.checked; });
    window.addEventListener("beforeunload", function (event) {
      if (!stored.checked) { event.preventDefault(); event.returnValue = ""; }
    });
  }

  // Live regions: on an event, the page is read again and each [data-live] region with an id
  // is replaced by its fresh copy. The server renders everything; forms are never touched.
  var refreshing = false, again = false;
  function refresh() {
    if (refreshing) { again = true; return; }
    refreshing = true;
    fetch(window.location.href, { headers: { "Accept": "text/html" }, credentials: "same-origin" })
      .then(function (response) {
        if (response.redirected && /\/login/.test(response.url)) { window.location.reload(); return null; }
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (!html) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live][id]").forEach(function (region) {
          var next = fresh.getElementById(region.id);
          if (next) {
            region.replaceWith(next);
            localTimes(next);
          }
        });
      })
      .catch(function () {})
      .then(function () {
        refreshing = false;
        if (again) { again = false; setTimeout(refresh, 250); }
      });
  }

  // Events come in bursts (a sync commits a page every few hundred milliseconds, a busy
  // endpoint logs many requests a second): refresh at most once a second.
  var pending = null, last = 0;
  function soon() {
    if (pending) { return; }
    var wait = Math.max(300, 1000 - (Date.now() - last));
    pending = setTimeout(function () { pending = null; last = Date.now(); refresh(); }, wait);
  }

  function follow(url) {
    var status = document.getElementById("live-status");
    var source = new EventSource(url);
    source.addEventListener("ready", function () { if (status) { status.textContent = "Live"; } });
    ["sync_run", "connection", "endpoint", "request", "reload"].forEach(function (type) {
      source.addEventListener(type, soon);
    });
    source.onerror = function () { if (status) { status.textContent = "Reconnecting…"; } };
  }

  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    copyButtons(document);
    storedStep();
    var events = document.body.getAttribute("data-events");
    if (events && window.EventSource) { follow(events); }
  });
})();
