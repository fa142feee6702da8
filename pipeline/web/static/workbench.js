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

    // Transcription keys, per user (the settings page; a preset for USB foot pedals).
    function readJson(id, fallback) {
      var el = document.getElementById(id);
      if (!el) return fallback;
      try { return JSON.parse(el.textContent); } catch (e) { return fallback; }
    }
    var keys = readJson("editor-keys", {});
    var STEP = parseInt(keys.rewind_s, 10) || 3;
    function parseKey(spec) {
      if (!spec) return null;
      var parts = String(spec).split("+");
      var key = parts.pop();
      var mods = {ctrl: false, alt: false, shift: false, meta: false};
      parts.forEach(function (m) { mods[m.toLowerCase()] = true; });
      return {key: key.toLowerCase(), mods: mods};
    }
    var bindings = {};
    ["play_pause", "rewind", "forward", "slower", "faster", "next_flag"].forEach(function (a) {
      var b = parseKey(keys[a]);
      if (b) bindings[a] = b;
    });
    var DEFAULTS = {play_pause: "F9", rewind: "F7", forward: "F8", slower: "Alt+ArrowDown",
                    faster: "Alt+ArrowUp", next_flag: "F2"};
    Object.keys(DEFAULTS).forEach(function (a) { if (!bindings[a]) bindings[a] = parseKey(DEFAULTS[a]); });
    function matches(ev, b) {
      return b && ev.key && ev.key.toLowerCase() === b.key && !!ev.ctrlKey === b.mods.ctrl &&
        !!ev.altKey === b.mods.alt && !!ev.metaKey === b.mods.meta &&
        (!b.mods.shift || ev.shiftKey);
    }
    function actionFor(ev) {
      for (var a in bindings) { if (matches(ev, bindings[a])) return a; }
      // always there besides the configured keys
      if (ev.altKey && !ev.ctrlKey) {
        var k = ev.key;
        if (k === "p" || k === "P") return "play_pause";
        if (k === "ArrowLeft") return "rewind";
        if (k === "ArrowRight") return "forward";
        if (k === "n" || k === "N") return "next_flag";
      }
      return null;
    }

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

    function togglePlay() {
      if (!audio) return;
      if (audio.paused) { var p = audio.play(); if (p && p.catch) p.catch(function () {}); } else audio.pause();
    }

    document.addEventListener("keydown", function (ev) {
      var k = ev.key;
      var handled = true;
      var action = actionFor(ev);
      if (action === "play_pause") {
        togglePlay();
      } else if (action === "rewind") {
        if (audio) audio.currentTime = Math.max(0, audio.currentTime - STEP);
      } else if (action === "forward") {
        if (audio) audio.currentTime = Math.min(audio.duration || 1e9, audio.currentTime + STEP);
      } else if (action === "slower") {
        setRate(-0.1);
      } else if (action === "faster") {
        setRate(0.1);
      } else if (action === "next_flag") {
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
        saving = true;
        clearTimeout(autosaveTimer);
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
        if (dirty && !saving) {
          flushBeacon();
          ev.preventDefault(); ev.returnValue = "";
        }
      });

      // --- Autosave: nothing typed is lost (idle log-out, closed tab, log-out link) ----
      var autosaveUrl = words.getAttribute("data-autosave-url");
      var baseVersion = words.getAttribute("data-base-version") || "";
      var stateOut = document.getElementById("autosave-state");
      var csrf = (document.querySelector('meta[name="csrf-token"]') || {getAttribute: function () { return ""; }}).getAttribute("content");
      var autosaveTimer = null;
      var lastSent = null;
      var saving = false;
      var AUTOSAVE_MS = 3000;
      var lastRequest = Date.now();  // requests keep the server session alive
      if (words.getAttribute("data-restored")) {
        dirty = true;
        lastSent = words.innerText;
        if (dirtyOut) dirtyOut.textContent = "restored text not saved yet";
      }
      function autosaveBody() {
        var fd = new FormData();
        fd.append("csrf_token", csrf);
        fd.append("text", words.innerText);
        fd.append("base_version", baseVersion);
        return fd;
      }
      function autosaveNow() {
        clearTimeout(autosaveTimer);
        if (!autosaveUrl || saving) return Promise.resolve();
        var text = words.innerText;
        if (text === lastSent) return Promise.resolve();
        lastRequest = Date.now();
        return fetch(autosaveUrl, {method: "POST", body: autosaveBody(), credentials: "same-origin",
                                   keepalive: true, redirect: "manual"})
          .then(function (r) {
            if (r.status === 204) {
              lastSent = text;
              if (stateOut) stateOut.textContent = "autosaved " + new Date().toLocaleTimeString();
            } else if (stateOut) {
              stateOut.textContent = r.status === 409 ? "not autosaved: the draft is claimed by someone else"
                : "not autosaved (" + (r.status || "logged out") + ")";
            }
          }).catch(function () { if (stateOut) stateOut.textContent = "not autosaved (offline)"; });
      }
      function flushBeacon() {
        if (!autosaveUrl || saving || words.innerText === lastSent) return;
        if (navigator.sendBeacon && navigator.sendBeacon(autosaveUrl, autosaveBody())) lastSent = words.innerText;
      }
      words.addEventListener("input", function () {
        clearTimeout(autosaveTimer);
        autosaveTimer = setTimeout(autosaveNow, AUTOSAVE_MS);
      });
      window.addEventListener("pagehide", flushBeacon);
      document.addEventListener("visibilitychange", function () {
        if (document.visibilityState === "hidden") flushBeacon();
      });
      // The log-out link: keep the text first, then log out.
      Array.prototype.forEach.call(document.querySelectorAll('form[action="/logout"]'), function (f) {
        f.addEventListener("submit", function (ev) {
          if (!dirty || saving || words.innerText === lastSent) { saving = true; return; }
          ev.preventDefault();
          autosaveNow().then(function () { saving = true; f.submit(); });
        });
      });
      // Idle log-out: the server ends the session after data-idle-s without requests. Keep
      // the text and warn a minute before; when the time is up, go to the log-in page (which
      // brings the user back here, with the text).
      var idleS = parseFloat(words.getAttribute("data-idle-s")) || 0;
      if (idleS > 0) {
        var warned = false;
        var warnAt = Math.max(idleS - 60, idleS / 2) * 1000;
        var warnOut = document.createElement("p");
        warnOut.className = "warning";
        warnOut.id = "idle-warning";
        warnOut.setAttribute("role", "alert");
        words.addEventListener("input", function () { warned = false; });
        setInterval(function () {
          var idle = Date.now() - Math.max(lastRequest, lastActive);
          if (idle >= warnAt && !warned) {
            warned = true;
            autosaveNow();
            warnOut.textContent = "You will be logged out soon for inactivity; your text is kept.";
            if (!warnOut.parentNode) words.parentNode.insertBefore(warnOut, words);
          }
          if (idle > idleS * 1000 + 2000) {
            saving = true;  // kept already; leave without the "unsaved changes" prompt
            window.location.reload();
          }
        }, 1000);
      }
    }

    // --- Auto-texts: ";trigger" then Tab, or a click in the list (Ctrl+Space goes there) ---
    var autotexts = readJson("editor-autotexts", {});
    function insertAutoText(body) {
      words.focus();
      document.execCommand("insertText", false, body);
      rebuild();
    }
    function caretPrefix() {
      var sel = window.getSelection();
      if (!sel || !sel.rangeCount || !words.contains(sel.anchorNode)) return null;
      var r = document.createRange();
      r.selectNodeContents(words);
      r.setEnd(sel.getRangeAt(0).endContainer, sel.getRangeAt(0).endOffset);
      return r.toString();
    }
    if (form && Object.keys(autotexts).length) {
      words.addEventListener("keydown", function (ev) {
        if (ev.key === "Tab" && !ev.shiftKey && !ev.ctrlKey && !ev.altKey) {
          var before = caretPrefix();
          var m = before && before.match(/;([a-z0-9' \-]{1,100})$/i);
          if (!m) return;
          var said = m[1].toLowerCase().replace(/-/g, " ").replace(/\s+/g, " ").trim();
          if (!Object.prototype.hasOwnProperty.call(autotexts, said)) return;
          ev.preventDefault();
          var sel = window.getSelection();
          for (var i = 0; i < m[0].length; i++) sel.modify("extend", "backward", "character");
          insertAutoText(autotexts[said]);
        } else if (ev.key === " " && ev.ctrlKey) {
          ev.preventDefault();
          var first = document.querySelector(".autotext-pick");
          if (first) first.focus();
        }
      });
      Array.prototype.forEach.call(document.querySelectorAll(".autotext-pick"), function (b) {
        var saved = null;
        b.addEventListener("mousedown", function (ev) { ev.preventDefault(); });
        b.addEventListener("focus", function () {
          var sel = window.getSelection();
          if (sel && sel.rangeCount && words.contains(sel.anchorNode)) saved = sel.getRangeAt(0).cloneRange();
        });
        b.addEventListener("click", function () {
          var body = autotexts[b.getAttribute("data-trigger")];
          if (!body) return;
          if (saved) { var sel = window.getSelection(); sel.removeAllRanges(); sel.addRange(saved); }
          insertAutoText(body);
        });
      });
    }
  });
})();
