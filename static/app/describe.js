// Section 3: describe, one row of statistics per column of the current result (the same numbers
// pandas' describe(include="all") gives).

import { graphql, unwrap } from "./api.js";
import { $, busy, clearErrors, h, newestOnly, recordsTable, showError, showQuery } from "./dom.js";
import { DESCRIBE } from "./queries.js";
import { scopeOf } from "./result.js";

const STATS = [
  { name: "column", label: "Column" },
  { name: "dtype", label: "Type" },
  { name: "count", label: "Values" },
  { name: "nullCount", label: "Missing" },
  { name: "mean", label: "Mean" },
  { name: "std", label: "Std. dev." },
  { name: "min", label: "Min" },
  { name: "p25", label: "25%" },
  { name: "p50", label: "Median" },
  { name: "p75", label: "75%" },
  { name: "max", label: "Max" },
  { name: "unique", label: "Distinct" },
  { name: "top", label: "Most common" },
  { name: "freq", label: "Its count" },
];

export function initDescribe(app) {
  const { state } = app;
  const section = $("#describe");
  const button = $("#describe-run");
  const out = $("#describe-table");
  let shown = false;
  const asked = newestOnly();

  async function run() {
    clearErrors(section);
    const variables = { id: state.current.id, steps: state.applied };
    showQuery($("#describe-query"), DESCRIBE, variables);
    const newest = asked();
    try {
      const data = await graphql(DESCRIBE, variables);
      if (!newest()) return;
      const rows = unwrap(data.dataset.pipeline.describe);
      const columns = STATS.filter((s) => rows.some((r) => r[s.name] !== undefined));
      const table = recordsTable(columns, rows, { caption: `Statistics of ${rows.length} columns` });
      table.classList.add("stats"); // compact, and long values wrap: the whole table fits the card
      out.replaceChildren(table);
      shown = true;
    } catch (error) {
      if (!newest()) return;
      showError($("#describe-error"), error.message, button);
    }
  }

  button.addEventListener("click", () => busy(button, run));
  app.on("result", ({ live }) => {
    $(".scope", section).textContent = scopeOf(state);
    if (live && shown) run();
    else if (!live && shown) {
      shown = false;
      out.replaceChildren(h("p", { class: "hint" }, "The result changed: describe it again."));
    }
  });
}
