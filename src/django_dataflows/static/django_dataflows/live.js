/* django-dataflows: live status in the admin, through the Server-Sent Events streams.
   The run page follows one run (#dataflows-live-run); "Live runs" follows every active
   run (#dataflows-live-runs). No dependencies; works offline. */
(function () {
  "use strict";

  var LABELS = {
    pending: "Pending", in_progress: "In progress", paused: "Paused", success: "Success",
    failed: "Failed", cancelled: "Cancelled", timed_out: "Timed out", skipped: "Skipped"
  };
  var ACTIVE = ["pending", "in_progress", "paused"];

  function badge(node, status) {
    node.className = "dataflows-badge dataflows-badge--" + status;
    node.textContent = LABELS[status] || status;
  }

  function progressText(progress) {
    if (!progress || progress.done === undefined) { return ""; }
    var text = String(progress.done) + (progress.total ? " / " + progress.total : "");
    return progress.message ? text + " " + progress.message : text;
  }

  function connection(state) {
    document.querySelectorAll("[data-role=connection]").forEach(function (node) {
      node.textContent = state;
      node.dataset.state = state;
    });
  }

  /* Streams end on purpose (a WSGI server's lifetime, a short stream): EventSource
     reconnects by itself, with Last-Event-ID. A busy server answers 503, after which
     EventSource gives up: while there is still something to follow (wanted()), open a
     new one a few seconds later (it starts with a fresh snapshot). */
  var RETRY_MS = 5000;

  function open(url, handlers, wanted) {
    var source = new EventSource(url, { withCredentials: true });
    source.onopen = function () { connection("live"); };
    source.onerror = function () {
      if (source.readyState !== EventSource.CLOSED) { connection("reconnecting…"); return; }
      if (wanted && wanted()) {
        connection("reconnecting…");
        setTimeout(function () { open(url, handlers, wanted); }, RETRY_MS);
      } else {
        connection("ended");
      }
    };
    Object.keys(handlers).forEach(function (name) {
      source.addEventListener(name, function (event) { handlers[name](JSON.parse(event.data)); });
    });
    return source;
  }

  function followRun(panel) {
    var status = panel.querySelector("[data-role=status]");
    var bar = panel.querySelector("[data-role=progress-bar]");
    var text = panel.querySelector("[data-role=progress-text]");
    var body = panel.querySelector("[data-role=steps] tbody");
    var staticStatus = document.querySelector(".field-status_display .readonly");

    function renderStep(step) {
      var row = body.querySelector("tr[data-position='" + step.position + "']");
      if (!row) {
        row = document.createElement("tr");
        row.dataset.position = step.position;
        row.innerHTML = "<td></td><td></td><td><span></span></td><td></td>";
        body.appendChild(row);
      }
      row.cells[0].textContent = step.position;
      row.cells[1].textContent = step.name;
      badge(row.cells[2].firstChild, step.status);
      row.cells[3].textContent = step.duration_ms === null ? "" : step.duration_ms + " ms";
    }

    function render(run) {
      badge(status, run.status);
      if (staticStatus) { badge(staticStatus.querySelector(".dataflows-badge") || staticStatus, run.status); }
      var progress = run.progress || {};
      if (progress.total) { bar.max = progress.total; bar.value = progress.done || 0; }
      else if (ACTIVE.indexOf(run.status) < 0) { bar.max = 1; bar.value = 1; }
      else { bar.removeAttribute("value"); }
      text.textContent = progressText(progress);
      (run.steps || []).forEach(renderStep);
      panel.dataset.status = run.status;
    }

    function ended(run) {
      if (ACTIVE.indexOf(run.status) < 0) { connection("ended"); }
    }
    // The stream ends after the run's last event; the reconnect answers 204 and stops.
    open(
      panel.dataset.streamUrl,
      { snapshot: render, run: function (run) { render(run); ended(run); }, step: renderStep },
      function () { return !panel.dataset.status || ACTIVE.indexOf(panel.dataset.status) >= 0; }
    );
  }

  function followRuns(module) {
    var body = module.querySelector("tbody");
    var empty = module.querySelector("[data-role=empty]");
    var changeUrl = module.dataset.changeUrl;

    function row(run) {
      var tr = body.querySelector("tr[data-run='" + run.id + "']");
      if (!tr) {
        tr = document.createElement("tr");
        tr.dataset.run = run.id;
        tr.innerHTML = "<td><a></a></td><td></td><td><span></span></td><td></td><td></td><td></td>";
        body.appendChild(tr);
      }
      return tr;
    }

    function render(run) {
      var known = body.querySelector("tr[data-run='" + run.id + "']") !== null;
      if (!known && ACTIVE.indexOf(run.status) < 0) { return; }  // only active runs join
      var tr = row(run);
      var link = tr.cells[0].querySelector("a");
      link.href = changeUrl.replace("/0/", "/" + run.id + "/");
      link.textContent = run.id;
      tr.cells[1].textContent = run.flow_name;
      badge(tr.cells[2].querySelector("span"), run.status);
      tr.cells[3].textContent = progressText(run.progress);
      var current = (run.steps || []).filter(function (s) { return s.status === "in_progress"; })[0];
      tr.cells[4].textContent = current ? current.name : "";
      tr.cells[5].textContent = new Date(run.updated_at).toLocaleTimeString();
      tr.dataset.status = run.status;
      if (ACTIVE.indexOf(run.status) < 0) {
        // Finished runs stay a moment, so the change can be seen, then leave the list.
        setTimeout(function () { tr.remove(); refresh(); }, 10000);
      }
      refresh();
    }

    function refresh() { empty.hidden = body.querySelector("tr") !== null; }

    open(module.dataset.streamUrl, {
      snapshot: function (runs) { runs.forEach(render); },
      run: render,
      step: function () {}
    }, function () { return true; });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var panel = document.getElementById("dataflows-live-run");
    if (panel && panel.dataset.streamUrl) { followRun(panel); }
    var runs = document.getElementById("dataflows-live-runs");
    if (runs && runs.dataset.streamUrl) { followRuns(runs); }
  });
})();
