// Section 2's result: runs the pipeline (count and the first rows), shows it, and lets the person
// pick the columns to keep (a `select` step at the end). The steps it ran are "the current
// result" that statistics, charts and exports work on.

import { ApiError, graphql, unwrap } from "./api.js";
import {
  $,
  busy,
  checkedIn,
  chips,
  clearErrors,
  formatNumber,
  newestOnly,
  recordsTable,
  showError,
  showQuery,
} from "./dom.js";
import { RESULT } from "./queries.js";

const ROWS_SHOWN = 100;

/** A short sentence naming the current result: "titanic, joined with tips, filtered, grouped by class". */
export function scopeOf(state) {
  if (!state.current) return "";
  const parts = [`“${state.current.name}”`];
  for (const step of state.applied) {
    if (step.join) parts.push(`joined with “${step.join.right}” on ${step.join.on.join(", ")}`);
    if (step.filter) parts.push(`filtered (${step.filter.length} condition${step.filter.length === 1 ? "" : "s"})`);
    if (step.window) parts.push(`with ${step.window.map((w) => w.alias ?? `${w.column}_${w.fn.toLowerCase()}`).join(", ")}`);
    if (step.joinAsof) parts.push(`joined as of “${step.joinAsof.on}” with “${step.joinAsof.right}”`);
    if (step.resample) parts.push(`resampled every ${step.resample.every} on “${step.resample.on}”`);
    if (step.groupBy) parts.push(`grouped by ${step.groupBy.by.join(", ") || "nothing"}`);
    if (step.pivot) parts.push(`pivoted by ${step.pivot.columns}`);
    if (step.unpivot) parts.push("unpivoted");
    if (step.sort) parts.push(`sorted by ${step.sort.map((k) => k.column + (k.descending ? " (descending)" : "")).join(", ")}`);
    if (step.select) parts.push(`${step.select.length} column${step.select.length === 1 ? "" : "s"} kept`);
  }
  return `Works on ${parts.join(", ")}: ${formatNumber(state.count)} rows.`;
}

export function initResult(app, builder) {
  const { state } = app;
  const section = $("#shape");
  const applyButton = $("#apply");
  const picker = $("#result-columns");
  const asked = newestOnly();

  /** Run `base` (plus a select of `picked` columns, when given) and show it. `from` says which
   * control asked, for where an error goes; `live` marks a rerun after the data changed. */
  async function run(base, { picked = null, from = "apply", live = false } = {}) {
    if (!state.current) return false;
    const steps = picked ? [...base, { select: picked }] : base;
    const variables = { id: state.current.id, steps, limit: ROWS_SHOWN };
    showQuery($("#shape-query"), RESULT, variables);
    const newest = asked();
    let count;
    let rows;
    try {
      const data = await graphql(RESULT, variables);
      if (!newest()) return false;
      if (!data.dataset) throw new ApiError(`There is no dataset "${state.current.id}" (any more).`, "NOT_FOUND");
      count = unwrap(data.dataset.pipeline.count).count;
      rows = data.dataset.pipeline.rows;
      unwrap(rows);
    } catch (error) {
      if (!newest()) return false;
      if (from === "columns") showError($("#columns-error"), error.message, picker.querySelector("input"));
      else if (!builder.placeError(error)) showError($("#apply-error"), error.message, applyButton);
      return false;
    }
    clearErrors(section);
    Object.assign(state, { base, picked, applied: steps, count, columns: rows.meta.columns });
    if (!picked) state.allColumns = rows.meta.columns;
    render(count, rows);
    app.emit("result", { live });
    return true;
  }

  function render(count, rows) {
    $("#result").hidden = false;
    $("#result-count").textContent = `${formatNumber(count)} row${count === 1 ? "" : "s"}`;
    $("#result-note").textContent =
      rows.meta.truncated ? `(showing the first ${formatNumber(rows.data.length)})` : "";
    const shown = new Set(state.columns.map((c) => c.name));
    chips(picker, state.allColumns.map((c) => c.name), shown, "keep");
    $("#result-table").replaceChildren(recordsTable(rows.meta.columns, rows.data));
  }

  applyButton.addEventListener("click", () => {
    clearErrors(section);
    busy(applyButton, () => run(builder.steps()));
  });
  $("#reset").addEventListener("click", () => {
    builder.reset();
    busy(applyButton, () => run([]));
  });
  picker.addEventListener("change", () => {
    const checked = checkedIn(picker);
    const picked = checked.length === state.allColumns.length ? null : checked;
    run(state.base, { picked, from: "columns" });
  });

  app.on("dataset", ({ changed }) => {
    for (const id of ["#shape", "#describe", "#chart", "#export"]) $(id).hidden = !state.current;
    if (!state.current) return;
    if (changed) {
      builder.reset();
      run([]);
    } else {
      // The data changed under the same dataset: the menus may offer new columns, the result is rerun.
      builder.refreshColumns();
      run(state.base, { picked: state.picked, live: true });
    }
  });

  return { run };
}
