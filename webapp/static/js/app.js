// pdfqueue pages: CSRF on htmx requests, the upload drop zone, and the live queue (SSE, else polling).
(function () {
  "use strict";
  document.documentElement.classList.add("js"); // the drop zone replaces the plain form

  var csrfToken = function () {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  };

  // The page's sentences in its reader's language: the server's catalogue, handed over as a JSON block
  // (<script type="application/json" id="messages">, webapp/i18n.py js_messages). t("key", {name: value}) fills its
  // %(name)s (and %(name)d) places; an entry with one/other forms takes the form for values.num.
  var messages = null;
  function t(key, values) {
    if (messages === null) {
      var block = document.getElementById("messages");
      try { messages = block ? JSON.parse(block.textContent) : {}; } catch (e) { messages = {}; }
    }
    var text = messages[key];
    if (text === undefined) return key;
    if (typeof text === "object") text = values && values.num === 1 ? text.one : text.other;
    return text.replace(/%\(([a-z_]+)\)[sd]|%%/g, function (all, name) {
      return name === undefined ? "%" : String(values && name in values ? values[name] : all);
    });
  }
  window.pdfqueueText = t;

  function statusWord(status) { t("locale"); return (messages.statuses || {})[status] || status; }

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

  // An answer's error as the reader reads it: the API says English, the page's catalogue has each code's sentence
  // for readers of another language (empty for English, where the API's own sentence says more).
  function errorText(error) {
    t("locale");
    return (messages.errors || {})[error.code] || error.message;
  }

  function errorMessage(xhr) {
    try { return errorText(JSON.parse(xhr.responseText).error); } catch (e) { return t("server_answered", { status: xhr.status }); }
  }

  document.addEventListener("htmx:configRequest", function (evt) {
    evt.detail.headers["X-CSRF-Token"] = csrfToken();
  });

  // ---------------------------------------------------------------------------------------------
  // Upload page
  // ---------------------------------------------------------------------------------------------

  // Any number of files, dropped or picked (a folder too), all become jobs: they go a few at a time, and when the
  // server says the per-user limit is reached (429), the rest wait in the page, counting down its Retry-After,
  // then go by themselves. Leaving the page while files wait asks first.
  var PARALLEL = 2; // uploads in flight at once

  function initUpload(form) {
    var zone = document.getElementById("dropzone");
    var input = document.getElementById("file-input");
    var folderInput = document.getElementById("folder-input");
    var folderButton = document.getElementById("folder-button");
    var list = document.getElementById("upload-list");
    var section = document.getElementById("uploads");
    var summary = document.getElementById("upload-summary");
    var maxBytes = Number(form.dataset.maxMb) * 1024 * 1024;
    var waiting = [], inFlight = 0, resumeAt = 0, countdown = null, dropped = 0;
    var batch = newBatch();

    function newBatch() { return { accepted: 0, duplicates: 0, rejected: [] }; }

    input.tabIndex = -1; // the drop zone is the keyboard's way in
    zone.addEventListener("click", function () { input.click(); });
    zone.addEventListener("keydown", function (evt) {
      if (evt.key === "Enter" || evt.key === " ") { evt.preventDefault(); input.click(); }
    });
    input.addEventListener("change", function () { addFiles(input.files); input.value = ""; });
    if (folderInput && folderButton) {
      folderButton.hidden = false;
      folderButton.addEventListener("click", function () { folderInput.click(); });
      folderInput.addEventListener("change", function () { addFiles(folderInput.files); folderInput.value = ""; });
    }
    ["dragenter", "dragover"].forEach(function (name) {
      zone.addEventListener(name, function (evt) { evt.preventDefault(); zone.classList.add("is-over"); });
    });
    ["dragleave", "dragend"].forEach(function (name) {
      zone.addEventListener(name, function () { zone.classList.remove("is-over"); });
    });
    zone.addEventListener("drop", function (evt) {
      evt.preventDefault();
      zone.classList.remove("is-over");
      if (evt.dataTransfer) filesOfDrop(evt.dataTransfer).then(addFiles);
    });
    // Dropping a file elsewhere on the page must not navigate away to it.
    window.addEventListener("dragover", function (evt) { evt.preventDefault(); });
    window.addEventListener("drop", function (evt) { evt.preventDefault(); });
    window.addEventListener("beforeunload", function (evt) {
      if (!waiting.length && !inFlight) return;
      evt.preventDefault();
      evt.returnValue = ""; // older browsers show their own "leave the page?" text only when this is set
    });

    function problemWith(file) {
      var looksPdf = /\.pdf$/i.test(file.name) || file.type === "application/pdf";
      if (!looksPdf) return t("not_pdf");
      if (file.size === 0) return t("empty");
      if (file.size > maxBytes) return t("too_large", { mb: form.dataset.maxMb });
      return null;
    }

    function addFiles(files) {
      if (!files.length) return;
      if (!waiting.length && !inFlight) batch = newBatch(); // a new drop after the last one ended
      section.hidden = false;
      summary.replaceChildren();
      Array.prototype.forEach.call(files, function (file) {
        var row = uploadRow(file);
        list.appendChild(row.el);
        var problem = problemWith(file);
        if (problem) {
          row.finish("rejected", t("not_sent", { problem: problem }));
          batch.rejected.push({ name: file.name, reason: problem });
          return;
        }
        waiting.push({ file: file, row: row, order: dropped++ });
      });
      pump();
    }

    // Send the next files while fewer than PARALLEL are in flight and the server's limit allows.
    function pump() {
      if (Date.now() < resumeAt) return tick();
      while (inFlight < PARALLEL && waiting.length) {
        var item = waiting.shift();
        inFlight += 1;
        send(item);
      }
      maybeDone();
    }

    // The countdown on the files that wait for the limit's window; at zero they go.
    function tick() {
      var left = Math.max(0, Math.ceil((resumeAt - Date.now()) / 1000));
      waiting.forEach(function (item) {
        item.row.wait(t("over_limit", { seconds: left }));
      });
      if (left === 0) {
        window.clearInterval(countdown);
        countdown = null;
        pump();
      } else if (!countdown) {
        countdown = window.setInterval(tick, 1000);
      }
    }

    function uploadRow(file) {
      var el = document.createElement("li");
      el.className = "upload";
      el.dataset.state = "waiting";
      var name = document.createElement("span");
      name.className = "upload-name";
      name.textContent = file.webkitRelativePath || file.name;
      var size = document.createElement("span");
      size.className = "upload-size";
      size.textContent = file.size < 1024 ? file.size + " B" : (file.size / 1024).toFixed(1) + " KB";
      var bar = document.createElement("progress");
      bar.max = 100; bar.value = 0;
      bar.setAttribute("aria-label", t("upload_of", { name: file.name }));
      var message = document.createElement("span");
      message.className = "upload-message";
      message.textContent = t("waiting");
      el.append(name, size, bar, message);
      return {
        el: el, bar: bar,
        wait: function (text) {
          el.dataset.state = "waiting";
          bar.value = 0;
          message.textContent = text;
        },
        progress: function (fraction) {
          el.dataset.state = "sending";
          bar.value = Math.round(fraction * 100);
          message.textContent = t("sending", { percent: bar.value });
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

    function send(item) {
      var file = item.file, row = item.row;
      var data = new FormData();
      data.append("file", file, file.name);
      data.append("mapping", document.getElementById("mapping").value);
      var xhr = new XMLHttpRequest();
      xhr.open("POST", "/api/upload");
      xhr.setRequestHeader("X-CSRF-Token", csrfToken());
      xhr.setRequestHeader("Accept", "application/json");
      row.progress(0);
      xhr.upload.addEventListener("progress", function (evt) {
        if (evt.lengthComputable) row.progress(evt.loaded / evt.total);
      });
      xhr.addEventListener("load", function () {
        inFlight -= 1;
        if (xhr.status === 202) {
          var job = JSON.parse(xhr.responseText).jobs[0];
          if (job.duplicate) {
            batch.duplicates += 1;
            row.finish("duplicate", t("duplicate"));
          } else {
            batch.accepted += 1;
            row.finish("accepted", t("accepted"));
          }
        } else if (xhr.status === 429) {
          // Over the per-user limit: this file waits (first in line) until the window lets one more in.
          var header = xhr.getResponseHeader("Retry-After"), after = header === null ? NaN : Number(header);
          after = isFinite(after) ? Math.max(after, 1) : 5; // "0": a slot frees within the second
          resumeAt = Math.max(resumeAt, Date.now() + after * 1000);
          waiting.unshift(item);
          waiting.sort(function (a, b) { return a.order - b.order; }); // two refused at once keep their order
        } else {
          var text = errorMessage(xhr);
          row.finish("rejected", text);
          batch.rejected.push({ name: file.name, reason: text });
        }
        pump();
      });
      xhr.addEventListener("error", function () {
        inFlight -= 1;
        var text = t("unreachable");
        row.finish("rejected", text);
        batch.rejected.push({ name: file.name, reason: text });
        pump();
      });
      xhr.send(data);
    }

    function maybeDone() {
      if (waiting.length || inFlight) return;
      var sent = batch.accepted + batch.duplicates;
      if (!sent && !batch.rejected.length) return;
      var line = document.createElement("p");
      line.className = "summary-line";
      line.textContent = t("summary_accepted", { num: batch.accepted }) + ", " +
        t("summary_duplicates", { num: batch.duplicates }) + ", " +
        t("summary_rejected", { num: batch.rejected.length }) + (batch.rejected.length ? ":" : ".");
      summary.replaceChildren(line);
      if (batch.rejected.length) {
        var reasons = document.createElement("ul");
        batch.rejected.forEach(function (item) {
          var li = document.createElement("li");
          li.textContent = item.name + ": " + item.reason;
          reasons.appendChild(li);
        });
        summary.appendChild(reasons);
      }
      var link = document.createElement("a");
      link.href = form.dataset.queueUrl;
      link.textContent = t("go_to_queue");
      summary.appendChild(link);
      if (sent && !batch.rejected.length) {
        line.textContent = t("all_uploaded", { summary: line.textContent });
        window.setTimeout(function () { window.location.assign(form.dataset.queueUrl); }, 1200);
      }
    }
  }

  // The files of a drop, a dropped folder's included (read through the entries API, which must be asked during
  // the drop event itself).
  function filesOfDrop(transfer) {
    var entries = Array.prototype.map.call(transfer.items || [], function (item) {
      return item.webkitGetAsEntry ? item.webkitGetAsEntry() : null;
    }).filter(Boolean);
    var files = Array.prototype.slice.call(transfer.files);
    if (!entries.some(function (entry) { return entry.isDirectory; })) return Promise.resolve(files);
    return Promise.all(entries.map(filesOfEntry)).then(flatten);
  }

  function filesOfEntry(entry) {
    if (entry.isFile) {
      return new Promise(function (resolve) { entry.file(function (file) { resolve([file]); }, function () { resolve([]); }); });
    }
    var reader = entry.createReader(), children = [];
    return new Promise(function (resolve) {
      (function more() { // readEntries answers a hundred or so at a time, then an empty batch
        reader.readEntries(function (batch) {
          if (!batch.length) return resolve(Promise.all(children.map(filesOfEntry)).then(flatten));
          children = children.concat(Array.prototype.slice.call(batch));
          more();
        }, function () { resolve([]); });
      })();
    });
  }

  function flatten(lists) { return [].concat.apply([], lists); }

  // ---------------------------------------------------------------------------------------------
  // Queue page. htmx does the work: rows, deletions and totals come out of band over SSE, or, when the stream
  // cannot be had, in the answers to the live-state line's polling (which the server stops with 286). Left for
  // here: falling back to polling, the stream's resume id, rows htmx cannot place alone, announcements, and
  // what follows a row action (the API answers JSON).
  // ---------------------------------------------------------------------------------------------

  function initQueue(live) {
    var opened = false, errors = 0; // errors since the stream last opened
    var deleted = new Set(); // rows deleted from this page: a poll answered before the delete must not bring one back

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
      setState("live", t("live"));
    });
    live.addEventListener("htmx:sseError", function () {
      errors += 1;
      if (fellBack()) return;
      if (opened && errors < 2) setState("connecting", t("reconnecting"));
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
      if (deleted.has(row.id)) { detail.shouldSwap = false; return; }
      var shown = document.getElementById(row.id);
      if (shown && shown.dataset.updated > row.dataset.updated) { detail.shouldSwap = false; return; }
      if (detail.target.id === "job-rows" && (shown || !detail.target.hasAttribute("data-first-page"))) {
        detail.shouldSwap = false;
        if (!shown) return;
        htmx.swap(shown, row.outerHTML, { swapStyle: "outerHTML" });
      }
      if (!shown || shown.dataset.status !== row.dataset.status) announceRow(row);
    });

    // What each row that came live was last announced as. The empty view's table fetches itself when its first row
    // lands, and a fast job can finish while that fetch is out: the fetched table shows it done, the stream's
    // "processing" (sent earlier, read later) was announced, and its "complete" then finds nothing to change.
    var announced = new Map();
    function announceRow(row) {
      announced.set(row.id, row.dataset.status);
      announce(row.dataset.filename + ": " + statusWord(row.dataset.status));
    }
    document.body.addEventListener("htmx:afterSwap", function (evt) {
      if (evt.detail.target.id !== "jobs") return;
      evt.detail.target.querySelectorAll("tr.job-row").forEach(function (row) {
        if (announced.has(row.id) && announced.get(row.id) !== row.dataset.status) announceRow(row);
      });
    });

    // A row sent in place of one this page does not show: a job that comes (back) into the view's filters, say
    // failed again after a retry under "Failed". It goes where its creation time puts it, if that is on this page.
    document.body.addEventListener("htmx:oobErrorNoTarget", function (evt) {
      var row = evt.detail.content, rows = document.getElementById("job-rows");
      if (!rows || !row || !row.classList || !row.classList.contains("job-row") || document.getElementById(row.id)) return;
      if (deleted.has(row.id)) return;
      var shown = Array.prototype.slice.call(rows.querySelectorAll("tr.job-row"));
      var created = row.dataset.created;
      if (!shown.length) return; // the empty view's table brings itself when a row lands on top
      if (rows.hasAttribute("data-more") && created < shown[shown.length - 1].dataset.created) return; // older pages
      if (!rows.hasAttribute("data-first-page") && created > shown[0].dataset.created) return; // newer than it
      var next = shown.find(function (each) { return each.dataset.created < created; });
      row.removeAttribute("hx-swap-oob");
      rows.insertBefore(row, next || null);
      htmx.process(row);
      announceRow(row);
    });

    document.addEventListener("htmx:afterRequest", function (evt) {
      var button = evt.detail.requestConfig.elt, action = button.dataset && button.dataset.action;
      if (!action) return;
      var xhr = evt.detail.xhr, name = button.closest("tr").dataset.filename;
      if (!evt.detail.successful) {
        toast(errorMessage(xhr), "error");
      } else if (action === "delete") {
        // htmx took away the row the click was on; a poll answered meanwhile may have put a fresh copy in its place,
        // and one answered before the delete but arriving after it must not put it back.
        var id = button.closest("tr").id, copy = document.getElementById(id);
        deleted.add(id);
        if (copy) copy.remove();
        announce(t("deleted", { name: name }));
      } else if (action === "retry") {
        toast(t("queued_again", { name: name })); // the answer's HX-Trigger (queue:active) wakes a stopped poller
      } else if (action === "share") {
        shareNotice(JSON.parse(xhr.responseText));
      }
    });
  }

  // ---------------------------------------------------------------------------------------------
  // Queue page: ticked rows (or every job the filters match) downloaded as one ZIP, retried or deleted; slow jobs;
  // a notification when a batch ends while the tab is hidden. Rows come and go by htmx: the selection is kept
  // here by job id and put back on each row that swaps in.
  // ---------------------------------------------------------------------------------------------

  var SKIPPED = { NOT_RETRYABLE: "skipped_not_retryable", NOT_FOUND: "skipped_not_found" };

  function initBulk(bar) {
    var selected = new Set(), matching = false;
    var filter = JSON.parse(bar.dataset.filter);
    // The statuses each filter keeps, by name (none: every one), as the server defines them (core/jobs/states.py).
    var filters = JSON.parse(bar.dataset.filters);
    var count = bar.querySelector("#bulk-count");
    var buttons = {};
    bar.querySelectorAll("[data-bulk]").forEach(function (button) { buttons[button.dataset.bulk] = button; });
    bar.hidden = false;

    function boxes() { return Array.prototype.slice.call(document.querySelectorAll("input.select-job")); }
    function keeps(name, status) { return !filters[name].length || filters[name].indexOf(status) >= 0; }
    function filterOf(status) { // the filter that keeps this status alone
      return Object.keys(filters).filter(function (name) {
        return filters[name].length === 1 && filters[name][0] === status;
      })[0];
    }
    function matchingCount() {
      var shown = document.getElementById(bar.dataset.countId);
      return shown ? Number(shown.textContent) : 0;
    }

    // The page as the selection says: boxes ticked, the count, what each button may do.
    function render() {
      var present = new Set(boxes().map(function (box) { return box.value; }));
      selected.forEach(function (id) { if (!present.has(id)) selected.delete(id); }); // deleted or out of the view
      boxes().forEach(function (box) { box.checked = matching || selected.has(box.value); });
      var all = document.getElementById("select-page");
      if (all) all.checked = present.size > 0 && (matching || selected.size === present.size);
      var total = matchingCount(), chosen = matching ? total : selected.size;
      count.textContent = matching ? t("all_matching_selected", { num: total })
        : chosen ? t("selected", { num: chosen }) : t("none_selected");
      buttons.matching.hidden = matching || total === 0;
      buttons.matching.textContent = t("select_all_matching", { num: total });
      ["archive", "retry", "delete", "clear"].forEach(function (name) { buttons[name].disabled = chosen === 0; });
    }

    document.addEventListener("change", function (evt) {
      var box = evt.target;
      if (box.id === "select-page") {
        matching = false;
        boxes().forEach(function (each) { if (box.checked) selected.add(each.value); else selected.delete(each.value); });
      } else if (box.classList && box.classList.contains("select-job")) {
        if (matching) { matching = false; boxes().forEach(function (each) { selected.add(each.value); }); }
        if (box.checked) selected.add(box.value); else selected.delete(box.value);
      } else {
        return;
      }
      render();
    });
    document.body.addEventListener("htmx:afterSettle", render); // rows swapped in, out or in place; new counts
    document.body.addEventListener("htmx:oobAfterSwap", render);

    function params(extra) {
      var query = new URLSearchParams();
      if (matching) {
        Object.keys(filter).forEach(function (key) { if (filter[key]) query.set(key, filter[key]); });
      } else {
        query.set("ids", Array.from(selected).join(","));
      }
      Object.keys(extra || {}).forEach(function (key) { query.set(key, extra[key]); });
      return query.toString();
    }

    buttons.matching.addEventListener("click", function () { matching = true; render(); });
    buttons.clear.addEventListener("click", function () { matching = false; selected.clear(); render(); });

    buttons.archive.addEventListener("click", function () {
      var ready = matching ? (keeps(filter.status, "complete") ? Number((document.getElementById("count-" + filterOf("complete")) || {}).textContent || 0) : 0)
        : boxes().filter(function (box) { return selected.has(box.value) && box.closest("tr").dataset.status === "complete"; }).length;
      if (!ready) { toast(t("nothing_to_download"), "error"); return; }
      var link = document.createElement("a");
      link.href = bar.dataset.archiveUrl + "?" + params();
      link.download = "";
      document.body.appendChild(link);
      link.click();
      link.remove();
      announce(t("preparing_zip", { num: ready }));
    });

    function act(action) {
      var body = { action: action };
      if (matching) {
        // Only failed jobs can be retried: under a filter that keeps others too ("All"), retry the failed ones alone.
        var failed = filterOf("failed");
        var status = action === "retry" && filter.status !== failed && keeps(filter.status, "failed") ? failed : filter.status;
        body.filter = { status: status, q: filter.q || null, owner: filter.owner };
      } else {
        body.ids = Array.from(selected);
      }
      return fetch(bar.dataset.bulkUrl, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "Accept": "application/json", "X-CSRF-Token": csrfToken() },
        body: JSON.stringify(body),
      }).then(function (response) {
        return response.json().then(function (answer) {
          if (!response.ok) throw new Error(answer.error ? errorText(answer.error) : t("server_answered", { status: response.status }));
          return answer;
        });
      });
    }

    function skippedText(skipped) {
      if (!skipped.length) return "";
      var why = {};
      skipped.forEach(function (item) { why[item.code] = (why[item.code] || 0) + 1; });
      return "; " + t("skipped", { count: skipped.length, why: Object.keys(why).map(function (code) {
        return why[code] + " " + (SKIPPED[code] ? t(SKIPPED[code]) : code);
      }).join(", ") });
    }

    buttons.retry.addEventListener("click", function () {
      act("retry").then(function (answer) {
        toast(t("requeued", { num: answer.done.length }) + skippedText(answer.skipped) + ".");
        if (answer.done.length) htmx.trigger(document.body, "queue:active"); // a stopped poller looks again
        matching = false; selected.clear(); render();
      }).catch(function (error) { toast(error.message, "error"); });
    });

    buttons.delete.addEventListener("click", function () {
      var chosen = matching ? matchingCount() : selected.size;
      if (!window.confirm(t("confirm_delete", { num: chosen }))) return;
      act("delete").then(function (answer) {
        answer.done.forEach(function (id) { var row = document.getElementById("job-" + id); if (row) row.remove(); });
        toast(t("deleted_many", { num: answer.done.length }) + skippedText(answer.skipped) + ".");
        matching = false; selected.clear(); render();
      }).catch(function (error) { toast(error.message, "error"); });
    });

    render();
  }

  // An active job past the threshold says so, also when it passes it while the page is open.
  function watchSlowJobs() {
    function mark() {
      var table = document.querySelector("[data-slow-after]");
      if (!table) return;
      var limit = Number(table.dataset.slowAfter) * 1000, now = Date.now();
      document.querySelectorAll("tr.job-row[data-active-since]").forEach(function (row) {
        var status = row.querySelector(".status");
        if (!status || status.querySelector(".status-slow")) return;
        if (now - Date.parse(row.dataset.activeSince) <= limit) return;
        var note = document.createElement("span");
        note.className = "status-note status-slow";
        note.textContent = t("slow");
        status.appendChild(note);
      });
    }
    mark();
    window.setInterval(mark, 15000);
    document.body.addEventListener("htmx:afterSettle", mark);
  }

  // Asked for only when the person clicks the button; then, when the last active job finishes while the tab is
  // hidden, one notification says so.
  function initNotify(button) {
    if (!("Notification" in window) || Notification.permission === "denied") return;
    var KEY = "pdfqueue.notify";
    function on() { return Notification.permission === "granted" && window.localStorage.getItem(KEY) === "1"; }
    function show() {
      button.setAttribute("aria-pressed", on() ? "true" : "false");
      button.textContent = on() ? t("notifications_on") : t("notify_me");
    }
    button.hidden = false;
    show();
    button.addEventListener("click", function () {
      if (on()) { window.localStorage.removeItem(KEY); show(); return; }
      Notification.requestPermission().then(function (permission) {
        if (permission === "granted") window.localStorage.setItem(KEY, "1");
        show();
        if (permission === "denied") button.hidden = true;
      });
    });
    function totals() {
      var read = function (name) { var dd = document.querySelector("#totals .total-" + name + " dd"); return dd ? Number(dd.textContent) : 0; };
      return { active: read("active"), complete: read("complete"), failed: read("failed") };
    }
    var before = totals(), start = before; // start: the totals when the batch began
    document.body.addEventListener("htmx:oobAfterSwap", function (evt) {
      if (evt.detail.target.id !== "totals-box") return;
      var now = totals();
      if (before.active === 0 && now.active > 0) start = before;
      if (before.active > 0 && now.active === 0 && document.hidden && on()) {
        var done = now.complete - start.complete, failed = now.failed - start.failed;
        new Notification(t("batch_finished"), {
          body: t("batch_counts", { complete: done, failed: failed }), tag: "pdfqueue-batch",
        });
      }
      before = now;
    });
  }

  function shareNotice(answer) {
    var url = new URL(answer.url, window.location.href).href;
    var until = new Date(answer.expires_at), minutes = Math.round((until - Date.now()) / 60000);
    var time = until.toLocaleTimeString(t("locale"), { hour: "2-digit", minute: "2-digit" });
    var validity = minutes >= 1 ? t("share_for", { num: minutes, time: time }) : t("share_until", { time: time });
    var label = document.createElement("label");
    label.textContent = t("share_link", { validity: validity });
    var field = document.createElement("input");
    field.readOnly = true; field.value = url; field.className = "share-url";
    label.appendChild(field);
    toast(label);
    field.select();
    if (navigator.clipboard) navigator.clipboard.writeText(url).catch(function () {});
  }

  // The header's menu button, which app.css shows on narrow screens only: it opens and closes the links; Escape
  // closes them and leaves the focus on the button.
  function initMenu(button) {
    function open() { return button.getAttribute("aria-expanded") === "true"; }
    function set(value) { button.setAttribute("aria-expanded", value ? "true" : "false"); }
    button.addEventListener("click", function () { set(!open()); });
    document.addEventListener("keydown", function (evt) {
      if (evt.key === "Escape" && open()) { set(false); button.focus(); }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var menu = document.getElementById("menu-button");
    if (menu) initMenu(menu);
    var form = document.getElementById("upload-form");
    if (form) initUpload(form);
    var live = document.getElementById("live");
    if (live) initQueue(live);
    var bar = document.getElementById("bulk");
    if (bar) initBulk(bar);
    if (live) watchSlowJobs();
    var notify = document.getElementById("notify");
    if (notify) initNotify(notify);
  });
})();
