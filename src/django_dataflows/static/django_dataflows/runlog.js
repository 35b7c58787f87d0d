// The run page's log tail: while the run is active, fetch the lines after the last one
// shown every two seconds; stop once the run has ended and every line is shown.
(function () {
  "use strict";
  function follow(pre) {
    var after = parseInt(pre.dataset.after || "0", 10);
    var empty = after === 0;
    function poll() {
      fetch(pre.dataset.url + "?after=" + after, { credentials: "same-origin" })
        .then(function (response) { return response.json(); })
        .then(function (page) {
          page.results.forEach(function (line) {
            var step = line.step ? " [" + line.step + "]" : "";
            var time = line.created_at.substring(11, 19);
            var text = time + " " + (line.level + "        ").substring(0, 8) + " " +
              line.logger + step + ": " + line.message;
            if (empty) { pre.textContent = ""; empty = false; }
            pre.appendChild(document.createTextNode((pre.textContent ? "\n" : "") + text));
          });
          after = page.after;
          if (page.results.length) { pre.scrollTop = pre.scrollHeight; }
          if (!page.complete) { setTimeout(poll, page.results.length ? 0 : 2000); }
        })
        .catch(function () { setTimeout(poll, 5000); });
    }
    poll();
  }
  document.addEventListener("DOMContentLoaded", function () {
    var pre = document.getElementById("dataflows-run-log");
    if (pre && pre.dataset.active) { follow(pre); }
  });
})();
