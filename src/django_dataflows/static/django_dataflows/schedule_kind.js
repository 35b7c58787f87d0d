// The data flow form's schedule-kind switch: show the fields of the chosen kind only.
// Without JavaScript every field shows, and the server applies the switch on save.
"use strict";
(function () {
    function apply(form) {
        const checked = form.querySelector("input[name=schedule_kind]:checked");
        if (!checked) {
            return;
        }
        const cron = checked.value === "cron";
        for (const name of ["cron", "timezone"]) {
            const row = form.querySelector(".field-" + name);
            if (row) { row.hidden = !cron; }
        }
        const interval = form.querySelector(".field-run_interval");
        if (interval) { interval.hidden = cron; }
    }
    document.addEventListener("DOMContentLoaded", function () {
        const form = document.querySelector("#dataflow_form");
        if (!form) {
            return;
        }
        form.addEventListener("change", function (event) {
            if (event.target.name === "schedule_kind") { apply(form); }
        });
        apply(form);
    });
})();
