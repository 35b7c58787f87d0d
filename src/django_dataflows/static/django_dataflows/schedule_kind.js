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
        const interval = checked.value === "interval";
        for (const name of ["cron", "timezone"]) {
            const row = form.querySelector(".field-" + name);
            if (row) { row.style.display = cron ? "" : "none"; }
        }
        const intervalRow = form.querySelector(".field-run_interval");
        if (intervalRow) { intervalRow.style.display = interval ? "" : "none"; }
        const catchup = form.querySelector(".field-catchup");
        if (catchup) { catchup.style.display = cron || interval ? "" : "none"; }
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
