// pdfqueue pages: CSRF on htmx requests, the upload drop zone, and the live queue (SSE, else polling).
(function () {
  "use strict";
  document.documentElement.classList.add("js"); // the drop zone replaces the plain form

  var POLL_MS = 3000;
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
  // Queue page: rows arrive over SSE (event: row / removed / metrics); if the stream cannot be
  // opened or keeps dropping, poll the rows partial every 3 s until no job is active.
  // ---------------------------------------------------------------------------------------------

  function initQueue(live) {
    var state = document.getElementById("live-state");
    var since = live.dataset.since;
    var pollTimer = null, everOpened = false, errorsSinceOpen = 0;

    function setState(name, text) {
      state.dataset.state = name;
      state.querySelector(".live-text").textContent = text;
    }

    function rowsBody() { return document.getElementById("job-rows"); }

    function activeCount() {
      var metrics = document.getElementById("metrics");
      return metrics ? Number(metrics.dataset.active) : 0;
    }

    // Insert or replace each <tr> of html; a change older than what the page shows is ignored.
    function applyRows(html) {
      var body = rowsBody();
      if (!body) return;
      var template = document.createElement("template");
      template.innerHTML = html;
      var rows = Array.prototype.slice.call(template.content.querySelectorAll("tr.job-row")).reverse();
      rows.forEach(function (row) {
        var current = document.getElementById(row.id);
        if (current) {
          if (current.dataset.updated > row.dataset.updated) return;
          if (current.dataset.status !== row.dataset.status) announce(row.dataset.filename + ": " + row.dataset.status);
          current.replaceWith(row);
        } else if (body.hasAttribute("data-first-page")) {
          if (body.closest("table").hidden) { reloadTable(); return; }
          body.prepend(row);
          announce(row.dataset.filename + ": " + row.dataset.status);
        } else {
          return;
        }
        htmx.process(row);
      });
    }

    function removeRow(jobId) {
      var row = document.getElementById("job-" + jobId);
      if (row) row.remove();
    }

    function reloadTable() {
      htmx.ajax("GET", window.location.pathname + window.location.search, { target: "#jobs", swap: "innerHTML" });
    }

    function remember(id) {
      if (!id) return;
      since = id;
      // The extension reconnects without Last-Event-ID, so the id travels in the URL.
      live.setAttribute("sse-connect", live.getAttribute("sse-connect").replace(/([?&]last_id=)[^&]*/, "$1" + encodeURIComponent(id)));
    }

    live.addEventListener("htmx:sseBeforeMessage", function (evt) {
      var message = evt.detail;
      remember(message.lastEventId);
      if (message.type === "row") { evt.preventDefault(); applyRows(message.data); }
      else if (message.type === "removed") { evt.preventDefault(); removeRow(message.data); }
    });
    live.addEventListener("htmx:sseOpen", function () {
      everOpened = true;
      errorsSinceOpen = 0;
      stopPolling();
      setState("live", "Live: updates appear as they happen.");
    });
    live.addEventListener("htmx:sseError", function (evt) {
      errorsSinceOpen += 1;
      if (!everOpened || errorsSinceOpen >= 2) {
        startPolling();
      } else {
        setState("connecting", "Reconnecting…");
      }
    });

    function startPolling() {
      if (pollTimer !== null) return;
      if (!activeCount()) { setState("idle", "Live updates unavailable; no job is running. Reload to refresh."); return; }
      setState("polling", "Live updates unavailable; checking every 3 seconds.");
      pollTimer = window.setTimeout(poll, POLL_MS);
    }

    function stopPolling() {
      if (pollTimer !== null) window.clearTimeout(pollTimer);
      pollTimer = null;
    }

    function poll() {
      fetch(live.dataset.rowsUrl + "?since=" + encodeURIComponent(since), { headers: { "HX-Request": "true" }, credentials: "same-origin" })
        .then(function (response) {
          if (!response.ok) throw new Error("poll answered " + response.status);
          var info = JSON.parse(response.headers.get("HX-Trigger") || "{}")["queue:polled"] || {};
          return response.text().then(function (html) { return { html: html, info: info }; });
        })
        .then(function (result) {
          if (pollTimer === null) return; // the stream came back meanwhile
          if (result.info.since) since = result.info.since;
          if (result.info.changed) { applyRows(result.html); refreshMetrics(); }
          if (result.info.active) { pollTimer = window.setTimeout(poll, POLL_MS); }
          else { pollTimer = null; setState("idle", "All jobs are finished."); }
        })
        .catch(function () {
          if (pollTimer !== null) pollTimer = window.setTimeout(poll, POLL_MS);
        });
    }

    function refreshMetrics() {
      htmx.ajax("GET", live.dataset.metricsUrl, { target: "#metrics-box", swap: "innerHTML" });
    }

    // After a retry, polling must look again even if it had stopped (the job is active once more).
    function pokePolling() {
      if (state.dataset.state === "polling" || state.dataset.state === "idle") {
        stopPolling();
        setState("polling", "Live updates unavailable; checking every 3 seconds.");
        pollTimer = window.setTimeout(poll, 0);
      }
    }

    document.addEventListener("htmx:afterRequest", function (evt) {
      var elt = evt.detail.elt;
      var action = elt && elt.dataset ? elt.dataset.action : null;
      if (!action) return;
      var xhr = evt.detail.xhr;
      if (!evt.detail.successful) { toast(errorMessage(xhr), "error"); return; }
      var row = elt.closest("tr");
      if (action === "delete") {
        announce(row.dataset.filename + " deleted");
        row.remove();
      } else if (action === "retry") {
        toast(row.dataset.filename + " is queued again.");
        pokePolling();
      } else if (action === "share") {
        var url = new URL(JSON.parse(xhr.responseText).url, window.location.href).href;
        var box = document.createElement("span");
        var label = document.createElement("label");
        label.textContent = "Share link (valid for 15 minutes): ";
        var field = document.createElement("input");
        field.readOnly = true; field.value = url; field.className = "share-url";
        label.appendChild(field);
        box.appendChild(label);
        toast(box);
        field.select();
        if (navigator.clipboard) navigator.clipboard.writeText(url).catch(function () {});
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("upload-form");
    if (form) initUpload(form);
    var live = document.getElementById("live");
    if (live) initQueue(live);
  });
})();
