/* Workbench progressive enhancement: the editor's word-following audio player and keys.
   Without JavaScript the pages still work (plain textarea, native audio controls). */
(function () {
  "use strict";
  document.documentElement.classList.add("js");

  function ready(fn) {
    if (document.readyState !== "loading") fn(); else document.addEventListener("DOMContentLoaded", fn);
  }

  ready(function () {
    Array.prototype.forEach.call(document.querySelectorAll("form.autosubmit"), function (f) {
      f.addEventListener("change", function () { f.submit(); });
    });
  });

  ready(function () {
    var words = document.getElementById("words");
    if (!words) return;
    var audio = document.getElementById("player");
    var form = document.getElementById("editor-form");
    var field = document.getElementById("text-field");
    var rateOut = document.getElementById("rate");
    var dirtyOut = document.getElementById("dirty");
    var dirty = false;
    var current = null;
    var STEP = 3;

    function spans() { return Array.prototype.slice.call(words.querySelectorAll("span.w")); }
    function timeOf(el) { var v = parseFloat(el.getAttribute("data-s")); return isNaN(v) ? null : v; }

    // Sorted (time, element) index for following the audio; rebuilt after edits.
    var index = [];
    function rebuild() {
      index = spans().map(function (el) { return [timeOf(el), el]; })
        .filter(function (p) { return p[0] !== null; })
        .sort(function (a, b) { return a[0] - b[0]; });
    }
    rebuild();

    function highlight(t) {
      var lo = 0, hi = index.length - 1, found = -1;
      while (lo <= hi) {
        var mid = (lo + hi) >> 1;
        if (index[mid][0] <= t + 0.02) { found = mid; lo = mid + 1; } else { hi = mid - 1; }
      }
      var el = found >= 0 ? index[found][1] : null;
      if (el === current) return;
      if (current) current.classList.remove("current");
      current = el;
      if (el) {
        el.classList.add("current");
        var r = el.getBoundingClientRect();
        if (r.top < 80 || r.bottom > window.innerHeight - 40) el.scrollIntoView({block: "center"});
      }
    }

    function playFrom(t) {
      if (!audio) return;
      audio.currentTime = Math.max(0, t);
      var p = audio.play();
      if (p && p.catch) p.catch(function () {});
    }

    if (audio) {
      // Report the first playback of this page to the audit log.
      var reported = false;
      audio.addEventListener("play", function () {
        var url = audio.getAttribute("data-played-url");
        if (reported || !url) return;
        reported = true;
        var meta = document.querySelector('meta[name="csrf-token"]');
        fetch(url, {method: "POST", credentials: "same-origin",
                    headers: {"X-CSRF-Token": meta ? meta.getAttribute("content") : ""}})
          .catch(function () {});
      });
      audio.addEventListener("timeupdate", function () { highlight(audio.currentTime); });
      audio.addEventListener("seeked", function () { highlight(audio.currentTime); });
    }

    words.addEventListener("click", function (ev) {
      var el = ev.target.closest ? ev.target.closest("span.w") : null;
      if (!el || !words.contains(el)) return;
      var t = timeOf(el);
      if (t !== null) playFrom(t);
    });

    function setRate(delta) {
      if (!audio) return;
      var r = Math.round(Math.min(2.0, Math.max(0.5, audio.playbackRate + delta)) * 10) / 10;
      audio.playbackRate = r;
      if (rateOut) rateOut.textContent = r.toFixed(1);
    }

    function caretSpan() {
      var sel = window.getSelection();
      if (!sel || !sel.rangeCount) return current;
      var node = sel.getRangeAt(0).endContainer;
      while (node && node !== words) {
        if (node.nodeType === 1 && node.classList.contains("w")) return node;
        node = node.parentNode;
      }
      return current;
    }

    function nextFlagged() {
      var all = spans();
      var from = caretSpan();
      var start = from ? all.indexOf(from) + 1 : 0;
      for (var k = 0; k < all.length; k++) {
        var el = all[(start + k) % all.length];
        // flags worth looking at: low confidence, reviewed changes, unknown words; spoken
        // commands ("period" -> ".") are not marked and F2 passes them by
        if (el.classList.contains("low") || el.classList.contains("corr") || el.classList.contains("unk")) {
          var range = document.createRange();
          range.selectNodeContents(el);
          var sel = window.getSelection();
          sel.removeAllRanges();
          sel.addRange(range);
          el.scrollIntoView({block: "center"});
          var t = timeOf(el);
          if (audio && t !== null) { audio.currentTime = t; highlight(t); }
          return;
        }
      }
    }

    document.addEventListener("keydown", function (ev) {
      var k = ev.key;
      var handled = true;
      if (k === "F9" || (ev.altKey && (k === "p" || k === "P"))) {
        if (audio) { if (audio.paused) { var p = audio.play(); if (p && p.catch) p.catch(function () {}); } else audio.pause(); }
      } else if (k === "F7" || (ev.altKey && k === "ArrowLeft")) {
        if (audio) audio.currentTime = Math.max(0, audio.currentTime - STEP);
      } else if (k === "F8" || (ev.altKey && k === "ArrowRight")) {
        if (audio) audio.currentTime = Math.min(audio.duration || 1e9, audio.currentTime + STEP);
      } else if (ev.altKey && k === "ArrowDown") {
        setRate(-0.1);
      } else if (ev.altKey && k === "ArrowUp") {
        setRate(0.1);
      } else if (k === "F2" || (ev.altKey && (k === "n" || k === "N"))) {
        nextFlagged();
      } else if ((ev.ctrlKey || ev.metaKey) && (k === "s" || k === "S")) {
        if (form) { if (form.requestSubmit) form.requestSubmit(document.getElementById("save-btn")); else form.submit(); }
      } else {
        handled = false;
      }
      if (handled) ev.preventDefault();
    });

    // Keep the claim while the reviewer is active (typing or listening), not for idle tabs.
    var claimUrl = words.getAttribute("data-claim-url");
    var lastActive = Date.now();
    function active() { lastActive = Date.now(); }
    words.addEventListener("input", active);
    document.addEventListener("keydown", active);
    if (audio) audio.addEventListener("timeupdate", active);
    if (claimUrl) {
      var token = document.querySelector('meta[name="csrf-token"]').getAttribute("content");
      setInterval(function () {
        if (Date.now() - lastActive > 10 * 60 * 1000) return;
        fetch(claimUrl, {method: "POST", headers: {"X-CSRF-Token": token}, credentials: "same-origin"})
          .then(function (r) {
            if (r.status === 409 && dirtyOut) dirtyOut.textContent = "another user has claimed this draft; your changes cannot be saved";
          }).catch(function () {});
      }, 4 * 60 * 1000);
    }

    if (form && field) {
      words.addEventListener("input", function () {
        if (!dirty) { dirty = true; if (dirtyOut) dirtyOut.textContent = "unsaved changes"; }
      });
      words.addEventListener("keyup", function (ev) { if (ev.key === " " || ev.key === "Enter") rebuild(); });
      // Paste plain text only: no markup from other programs enters the document.
      words.addEventListener("paste", function (ev) {
        ev.preventDefault();
        var text = (ev.clipboardData || window.clipboardData).getData("text/plain");
        document.execCommand("insertText", false, text);
      });
      form.addEventListener("submit", function () {
        field.value = words.innerText;
        dirty = false;
      });
      // Signing signs the saved text: unsaved edits must be saved first.
      var signForm = document.getElementById("sign-form");
      if (signForm) {
        signForm.addEventListener("submit", function (ev) {
          if (dirty) {
            ev.preventDefault();
            if (dirtyOut) dirtyOut.textContent = "save your changes before signing";
            alert("Save your changes before signing: the signature covers the saved text.");
          }
        });
      }
      window.addEventListener("beforeunload", function (ev) {
        if (dirty) { ev.preventDefault(); ev.returnValue = ""; }
      });
    }
  });
})();
