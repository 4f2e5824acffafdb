// pdfqueue pages: CSRF on htmx requests, the upload drop zone, and the live queue (SSE, else polling).
(function () {
  "use strict";
  document.documentElement.classList.add("js"); // the drop zone replaces the plain form

  var csrfToken = function () {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  };

  function announce(text) {
    var region = document.getElementById("announcer");
    if (!region) return;
    region.textContent = "";
    window.setTimeout(function () { region.textContent = text; }, 50);
  }

  function toast(text, kind) {
    var box = document.getElementById("toast");
    if (!box) return;
    box.className = "toast" + (kind ? " toast-" + kind : "");
    box.replaceChildren();
    if (text instanceof Node) box.appendChild(text); else box.textContent = text;
    box.hidden = false;
    window.clearTimeout(toast.timer);
    toast.timer = window.setTimeout(function () { box.hidden = true; }, 12000);
  }

  function errorMessage(xhr) {
    try { return JSON.parse(xhr.responseText).error.message; } catch (e) { return "The server answered " + xhr.status + "."; }
  }

  document.addEventListener("htmx:configRequest", function (evt) {
    evt.detail.headers["X-CSRF-Token"] = csrfToken();
  });

  // ---------------------------------------------------------------------------------------------
  // Upload page
  // ---------------------------------------------------------------------------------------------

  function initUpload(form) {
    var zone = document.getElementById("dropzone");
    var input = document.getElementById("file-input");
    var list = document.getElementById("upload-list");
    var section = document.getElementById("uploads");
    var summary = document.getElementById("upload-summary");
    var maxBytes = Number(form.dataset.maxMb) * 1024 * 1024;
    var pending = 0, accepted = 0, problems = 0;

    input.tabIndex = -1; // the drop zone is the keyboard's way in
    zone.addEventListener("click", function () { input.click(); });
    zone.addEventListener("keydown", function (evt) {
      if (evt.key === "Enter" || evt.key === " ") { evt.preventDefault(); input.click(); }
    });
    input.addEventListener("change", function () { addFiles(input.files); input.value = ""; });
    ["dragenter", "dragover"].forEach(function (name) {
      zone.addEventListener(name, function (evt) { evt.preventDefault(); zone.classList.add("is-over"); });
    });
    ["dragleave", "dragend"].forEach(function (name) {
      zone.addEventListener(name, function () { zone.classList.remove("is-over"); });
    });
    zone.addEventListener("drop", function (evt) {
      evt.preventDefault();
      zone.classList.remove("is-over");
      if (evt.dataTransfer && evt.dataTransfer.files.length) addFiles(evt.dataTransfer.files);
    });
    // Dropping a file elsewhere on the page must not navigate away to it.
    window.addEventListener("dragover", function (evt) { evt.preventDefault(); });
    window.addEventListener("drop", function (evt) { evt.preventDefault(); });

    function problemWith(file) {
      var looksPdf = /\.pdf$/i.test(file.name) || file.type === "application/pdf";
      if (!looksPdf) return "Not a PDF: only .pdf files are accepted.";
      if (file.size === 0) return "The file is empty.";
      if (file.size > maxBytes) return "Too large: the limit is " + form.dataset.maxMb + " MB.";
      return null;
    }

    function addFiles(files) {
      section.hidden = false;
      summary.textContent = "";
      Array.prototype.forEach.call(files, function (file) {
        var row = uploadRow(file);
        list.appendChild(row.el);
        var problem = problemWith(file);
        if (problem) {
          row.finish("rejected", problem + " Not sent.");
          problems += 1;
          return;
        }
        pending += 1;
        send(file, row);
      });
      maybeDone();
    }

    function uploadRow(file) {
      var el = document.createElement("li");
      el.className = "upload";
      el.dataset.state = "sending";
      var name = document.createElement("span");
      name.className = "upload-name";
      name.textContent = file.name;
      var size = document.createElement("span");
      size.className = "upload-size";
      size.textContent = file.size < 1024 ? file.size + " B" : (file.size / 1024).toFixed(1) + " KB";
      var bar = document.createElement("progress");
      bar.max = 100; bar.value = 0;
      bar.setAttribute("aria-label", "Upload of " + file.name);
      var message = document.createElement("span");
      message.className = "upload-message";
      message.textContent = "Waiting…";
      el.append(name, size, bar, message);
      return {
        el: el, bar: bar,
        progress: function (fraction) {
          bar.value = Math.round(fraction * 100);
          message.textContent = "Sending… " + bar.value + "%";
        },
        finish: function (state, text) {
          el.dataset.state = state;
          if (state !== "rejected") bar.value = 100;
          else bar.remove();
          message.textContent = text;
          announce(file.name + ": " + text);
        },
      };
    }

    function send(file, row) {
      var data = new FormData();
      data.append("file", file, file.name);
      data.append("mapping", document.getElementById("mapping").value);
      var xhr = new XMLHttpRequest();
      xhr.open("POST", "/api/upload");
      xhr.setRequestHeader("X-CSRF-Token", csrfToken());
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.addEventListener("progress", function (evt) {
        if (evt.lengthComputable) row.progress(evt.loaded / evt.total);
      });
      xhr.addEventListener("load", function () {
        if (xhr.status === 202) {
          var job = JSON.parse(xhr.responseText).jobs[0];
          row.finish(job.duplicate ? "duplicate" : "accepted",
                     job.duplicate ? "Already uploaded: this is the same file as an existing job." : "Accepted, queued.");
          accepted += 1;
        } else {
          var text = errorMessage(xhr);
          if (xhr.status === 429 && xhr.getResponseHeader("Retry-After")) {
            text += " (try again in " + xhr.getResponseHeader("Retry-After") + " s)";
          }
          row.finish("error", text);
          problems += 1;
        }
        pending -= 1;
        maybeDone();
      });
      xhr.addEventListener("error", function () {
        row.finish("error", "The upload did not reach the server; check the connection and try again.");
        problems += 1; pending -= 1; maybeDone();
      });
      xhr.send(data);
    }

    function maybeDone() {
      if (pending > 0) return;
      var link = '<a href="' + form.dataset.queueUrl + '">Go to the queue</a>';
      if (accepted && !problems) {
        summary.innerHTML = "All uploaded. Opening the queue… " + link;
        window.setTimeout(function () { window.location.assign(form.dataset.queueUrl); }, 1200);
      } else if (accepted) {
        summary.innerHTML = accepted + " accepted, " + problems + " not. " + link;
      } else if (problems) {
        summary.textContent = "Nothing was uploaded.";
      }
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Queue page. htmx does the work: rows, deletions and totals come out of band over SSE, or, when the stream
  // cannot be had, in the answers to the live-state line's polling (which the server stops with 286). Left for
  // here: falling back to polling, the stream's resume id, rows htmx cannot place alone, announcements, and
  // what follows a row action (the API answers JSON).
  // ---------------------------------------------------------------------------------------------

  function initQueue(live) {
    var opened = false, errors = 0; // errors since the stream last opened

    function liveState() { return document.getElementById("live-state"); }

    function fellBack() { return ["polling", "idle"].indexOf(liveState().dataset.state) !== -1; }

    // The stream's states; the polling ones come with the answers to the polls.
    function setState(name, text) {
      var line = liveState();
      htmx.trigger(line, "htmx:abort"); // a poll under way must not swap a polling line back in
      line.dataset.state = name;
      line.querySelector(".live-text").textContent = text;
      line.setAttribute("hx-trigger", "queue:poll"); // no polling while the stream is live
      htmx.process(line);
    }

    live.addEventListener("htmx:sseOpen", function () {
      opened = true;
      errors = 0;
      setState("live", "Live: updates appear as they happen.");
    });
    live.addEventListener("htmx:sseError", function () {
      errors += 1;
      if (fellBack()) return;
      if (opened && errors < 2) setState("connecting", "Reconnecting…");
      else htmx.trigger(liveState(), "queue:poll");
    });
    live.addEventListener("htmx:sseBeforeMessage", function (evt) {
      var id = evt.detail.lastEventId;
      // The extension reconnects without Last-Event-ID, so the id travels in the URL.
      if (id) live.setAttribute("sse-connect", live.getAttribute("sse-connect").replace(/([?&]last_id=)[^&]*/, "$1" + encodeURIComponent(id)));
      // A row this page does not show (deleted here already, or on another page) has nothing to delete.
      var removed = evt.detail.type === "removed" && /id="([^"]+)"/.exec(evt.detail.data);
      if (removed && !document.getElementById(removed[1])) evt.preventDefault();
    });

    // Before a row swaps in. One older than the row shown stays out (a poll answered after the stream came back).
    // One sent for the top of the table (its job is newer than the sender's cursor) stays off older pages, and
    // replaces its row in place if the page shows it already: the cursors overlap by a few seconds.
    document.body.addEventListener("htmx:oobBeforeSwap", function (evt) {
      var detail = evt.detail, row = detail.fragment.querySelector("tr.job-row");
      if (!row) return; // totals, the live-state line, a deletion
      var shown = document.getElementById(row.id);
      if (shown && shown.dataset.updated > row.dataset.updated) { detail.shouldSwap = false; return; }
      if (detail.target.id === "job-rows" && (shown || !detail.target.hasAttribute("data-first-page"))) {
        detail.shouldSwap = false;
        if (!shown) return;
        htmx.swap(shown, row.outerHTML, { swapStyle: "outerHTML" });
      }
      if (!shown || shown.dataset.status !== row.dataset.status) announce(row.dataset.filename + ": " + row.dataset.status);
    });

    document.addEventListener("htmx:afterRequest", function (evt) {
      var button = evt.detail.requestConfig.elt, action = button.dataset && button.dataset.action;
      if (!action) return;
      var xhr = evt.detail.xhr, name = button.closest("tr").dataset.filename;
      if (!evt.detail.successful) {
        toast(errorMessage(xhr), "error");
      } else if (action === "delete") {
        announce(name + " deleted"); // htmx took the row away
      } else if (action === "retry") {
        toast(name + " is queued again."); // the answer's HX-Trigger (queue:active) wakes a stopped poller
      } else if (action === "share") {
        shareNotice(JSON.parse(xhr.responseText));
      }
    });
  }

  function shareNotice(answer) {
    var url = new URL(answer.url, window.location.href).href;
    var until = new Date(answer.expires_at), minutes = Math.round((until - Date.now()) / 60000);
    var time = until.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    var validity = minutes >= 1 ? "for " + minutes + (minutes === 1 ? " minute" : " minutes") + ", until " + time : "until " + time;
    var label = document.createElement("label");
    label.textContent = "Share link (valid " + validity + "): ";
    var field = document.createElement("input");
    field.readOnly = true; field.value = url; field.className = "share-url";
    label.appendChild(field);
    toast(label);
    field.select();
    if (navigator.clipboard) navigator.clipboard.writeText(url).catch(function () {});
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("upload-form");
    if (form) initUpload(form);
    var live = document.getElementById("live");
    if (live) initQueue(live);
  });
})();
