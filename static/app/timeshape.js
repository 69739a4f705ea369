// Section 2's "Time series" and "Reshape" menus: window columns (rolling, running, lag, rank...),
// an as-of join, a resample, a pivot and an unpivot. They become `window`, `joinAsof`, `resample`,
// `pivot` and `unpivot` steps (contract: docs/queries.md "Time series" and "Reshaping"); the builder
// puts them in its pipeline and hands back the errors they cause, shown next to their controls.

import { $, checkedIn, chips, clearErrors, fillSelect, h, showError } from "./dom.js";

const WINDOW_FNS = {
  ROLLING_MEAN: "rolling mean of",
  ROLLING_SUM: "rolling sum of",
  ROLLING_MIN: "rolling minimum of",
  ROLLING_MAX: "rolling maximum of",
  ROLLING_STD: "rolling standard deviation of",
  CUM_SUM: "running total of",
  CUM_MIN: "running minimum of",
  CUM_MAX: "running maximum of",
  CUM_COUNT: "running count of",
  LAG: "previous value of",
  LEAD: "next value of",
  DIFF: "change in",
  PCT_CHANGE: "relative change in",
  RANK: "rank of",
  ROW_NUMBER: "row number by",
};
const RESAMPLE_FNS = {
  MEAN: "mean of",
  SUM: "sum of",
  COUNT: "count of",
  MEDIAN: "median of",
  MIN: "minimum of",
  MAX: "maximum of",
  STD: "standard deviation of",
  FIRST: "first value of",
  LAST: "last value of",
};

/** Text typed in a box, trimmed; null when empty (the API's default then applies). */
const typed = (input) => input.value.trim() || null;

/** A tolerance as JSON: a number for numeric keys, else the text ("5m", "2d") for time keys. */
const tolerance = (text) => (text === null ? null : Number.isFinite(Number(text)) ? Number(text) : text);

/**
 * `columns()` gives what the menus offer ([{name, dtype}]); `rightDatasets()` the datasets an as-of
 * join may name ([{id, name, columns}]); `removeButton(label, next)` a row's remove button.
 */
export function initTimeShape({ columns, rightDatasets, removeButton }) {
  const windowList = $("#window-rows");
  const asofRight = $("#asof-right");
  const asofOn = $("#asof-on");
  const asofRightOn = $("#asof-right-on");
  const asofBy = $("#asof-by");
  const resampleOn = $("#resample-on");
  const resampleBy = $("#resample-by");
  const resampleAggs = $("#resample-aggs");
  const pivotColumns = $("#pivot-columns");
  const pivotValues = $("#pivot-values");
  const pivotIndex = $("#pivot-index");
  const unpivotIndex = $("#unpivot-index");
  const unpivotOn = $("#unpivot-on");
  const refreshers = new WeakMap(); // a window or resample row -> refill its menus
  let rowIds = 0; // the chips of each window row get ids of their own

  const names = () => columns().map((c) => c.name);
  const columnItems = () => columns().map((c) => ({ value: c.name, label: `${c.name} (${c.dtype})` }));
  const noneThen = (label, items) => [{ value: "", label }, ...items];
  const errorSlot = () => h("p", { class: "error", role: "alert", hidden: true });

  // Window columns --------------------------------------------------------------------------------
  function addWindow() {
    const n = rowIds++;
    const fn = h("select", { class: "w-fn", "aria-label": "Window function" });
    const column = h("select", { class: "w-column", "aria-label": "Window column" });
    const size = h("input", {
      class: "w-size", type: "number", min: "1", step: "1", inputmode: "numeric",
      "aria-label": "Rows in the window", placeholder: "rows, e.g. 7",
    });
    const period = h("input", {
      class: "w-period", type: "text", autocomplete: "off", spellcheck: "false",
      "aria-label": "Or a period of time", placeholder: "or a period, e.g. 7d",
    });
    const orderBy = h("select", { class: "w-order", "aria-label": "Ordered by" });
    const alias = h("input", { class: "w-alias", type: "text", autocomplete: "off", "aria-label": "Name of the new column" });
    const by = h("div", { class: "chips w-by", role: "group", "aria-label": "Separately for each value of" });
    const li = h(
      "li",
      { class: "window-row" },
      h("div", { class: "row" }, fn, column, size, period, removeButton("Remove this window column", $("#add-window"))),
      h("div", { class: "row" }, h("span", { class: "hint" }, "ordered by"), orderBy, h("span", { class: "hint" }, "named"), alias),
      h("p", { class: "hint" }, "Separately for each value of (none ticked: over all rows):"),
      by,
      errorSlot(),
    );
    fillSelect(fn, Object.entries(WINDOW_FNS).map(([value, label]) => ({ value, label })));
    const refreshFn = () => {
      const rolling = fn.value.startsWith("ROLLING_");
      size.hidden = period.hidden = !rolling;
      alias.placeholder = `${column.value}_${fn.value.toLowerCase()}`;
    };
    fn.addEventListener("change", refreshFn);
    column.addEventListener("change", refreshFn);
    const refresh = () => {
      fillSelect(column, columnItems());
      fillSelect(orderBy, noneThen("the rows' own order", columnItems()));
      chips(by, names(), new Set(checkedIn(by)), `window-${n}-by`);
      refreshFn();
    };
    refreshers.set(li, refresh);
    refresh();
    windowList.append(li);
    fn.focus();
  }

  function readWindow(li) {
    const spec = { column: $(".w-column", li).value, fn: $(".w-fn", li).value };
    if (spec.fn.startsWith("ROLLING_")) {
      const size = typed($(".w-size", li));
      const period = typed($(".w-period", li));
      if (size !== null) spec.size = Number(size);
      if (period !== null) spec.period = period;
    }
    const orderBy = $(".w-order", li).value;
    if (orderBy) spec.orderBy = orderBy;
    const by = checkedIn($(".w-by", li));
    if (by.length) spec.by = by;
    const alias = typed($(".w-alias", li));
    if (alias) spec.alias = alias;
    return spec;
  }

  // As-of join -----------------------------------------------------------------------------------
  const asofChosen = () => rightDatasets().find((d) => d.id === asofRight.value);

  function renderAsof() {
    fillSelect(asofRight, noneThen("No as-of join", rightDatasets().map((d) => ({ value: d.id, label: `${d.name} (${d.id})` }))));
    renderAsofColumns();
  }

  function renderAsofColumns() {
    const right = asofChosen();
    fillSelect(asofOn, columnItems());
    const theirs = right?.columns ?? [];
    fillSelect(asofRightOn, noneThen("the same name", theirs.map((c) => ({ value: c.name, label: `${c.name} (${c.dtype})` }))));
    const shared = new Set(theirs.map((c) => c.name));
    chips(asofBy, right ? names().filter((n) => shared.has(n)) : [], new Set(checkedIn(asofBy)), "asof-by");
  }

  function asofStep() {
    if (!asofRight.value) return null;
    const step = { right: asofRight.value, on: asofOn.value, strategy: $("#asof-strategy").value };
    if (asofRightOn.value) step.rightOn = asofRightOn.value;
    const by = checkedIn(asofBy);
    if (by.length) step.by = by;
    const within = typed($("#asof-tolerance"));
    if (within !== null) step.tolerance = tolerance(within);
    return { joinAsof: step };
  }

  // Resample -------------------------------------------------------------------------------------
  function addResampleAgg() {
    const fn = h("select", { class: "r-fn", "aria-label": "Resample summary" });
    const column = h("select", { class: "r-column", "aria-label": "Column to resample" });
    const output = h("span", { class: "a-output hint" });
    const li = h(
      "li",
      { class: "agg-row" },
      h("div", { class: "row" }, fn, column, output, removeButton("Remove this resample summary", $("#add-resample-agg"))),
      errorSlot(),
    );
    fillSelect(fn, Object.entries(RESAMPLE_FNS).map(([value, label]) => ({ value, label })));
    const named = () => {
      output.textContent = `→ ${column.value}_${fn.value.toLowerCase()}`;
    };
    fn.addEventListener("change", named);
    column.addEventListener("change", named);
    const refresh = () => {
      fillSelect(column, columnItems());
      named();
    };
    refreshers.set(li, refresh);
    refresh();
    resampleAggs.append(li);
    fn.focus();
  }

  function resampleStep() {
    if (!resampleOn.value) return null;
    const aggregations = [...resampleAggs.children].map((li) => ({ column: $(".r-column", li).value, fn: $(".r-fn", li).value }));
    const step = { on: resampleOn.value, every: $("#resample-every").value.trim(), aggregations };
    const by = checkedIn(resampleBy);
    if (by.length) step.by = by;
    return { resample: step };
  }

  // Pivot and unpivot ----------------------------------------------------------------------------
  function pivotStep() {
    if (!pivotColumns.value) return null;
    return {
      pivot: { index: checkedIn(pivotIndex), columns: pivotColumns.value, values: pivotValues.value, fn: $("#pivot-fn").value },
    };
  }

  function unpivotStep() {
    const index = checkedIn(unpivotIndex);
    const on = checkedIn(unpivotOn);
    if (!index.length && !on.length) return null;
    const step = { index };
    if (on.length) step.on = on;
    const variable = typed($("#unpivot-variable"));
    const value = typed($("#unpivot-value"));
    if (variable) step.variableName = variable;
    if (value) step.valueName = value;
    return { unpivot: step };
  }

  // Together -------------------------------------------------------------------------------------
  /** Refill every menu from `columns()`, keeping what is chosen where it still exists. */
  function refresh() {
    for (const li of [...windowList.children, ...resampleAggs.children]) refreshers.get(li)();
    renderAsofColumns();
    fillSelect(resampleOn, noneThen("No resample", columnItems()));
    chips(resampleBy, names(), new Set(checkedIn(resampleBy)), "resample-by");
    fillSelect(pivotColumns, noneThen("No pivot", columnItems()));
    fillSelect(pivotValues, columnItems());
    chips(pivotIndex, names(), new Set(checkedIn(pivotIndex)), "pivot-index");
    chips(unpivotIndex, names(), new Set(checkedIn(unpivotIndex)), "unpivot-index");
    chips(unpivotOn, names(), new Set(checkedIn(unpivotOn)), "unpivot-on");
  }

  /** The time steps (after the filters, before a group-by): window, as-of join, resample. */
  function timeSteps(out, made) {
    const rows = [...windowList.children];
    if (rows.length) {
      out.push({ window: rows.map(readWindow) });
      made.push({ kind: "window", rows });
    }
    for (const [kind, step] of [["joinAsof", asofStep()], ["resample", resampleStep()]]) {
      if (!step) continue;
      out.push(step);
      made.push({ kind, rows: kind === "resample" ? [...resampleAggs.children] : [] });
    }
  }

  /** The reshaping steps (after a group-by, before the sort): pivot, unpivot. */
  function reshapeSteps(out, made) {
    for (const [kind, step] of [["pivot", pivotStep()], ["unpivot", unpivotStep()]]) {
      if (!step) continue;
      out.push(step);
      made.push({ kind, rows: [] });
    }
  }

  /** Show `message` next to the control of the step `source` made; false when it is not ours. */
  function placeError(source, message, at, naming) {
    const mentions = (word) => message.includes(word);
    if (source.kind === "window") {
      const row = source.rows[at(/\.window\[(\d+)\]/)] ?? source.rows.find(naming(".w-column")) ?? source.rows[0];
      const control = mentions("period") ? ".w-period" : mentions("size") ? ".w-size" : mentions("orderBy") ? ".w-order" : ".w-column";
      showError($(".error", row), message, $(control, row));
      return true;
    }
    if (source.kind === "joinAsof") {
      const control = mentions("tolerance") ? $("#asof-tolerance") : mentions("rightOn") ? asofRightOn : asofRight;
      showError($("#asof-error"), message, control);
      return true;
    }
    if (source.kind === "resample") {
      const row = source.rows[at(/\.aggregations\[(\d+)\]/)];
      if (row) showError($(".error", row), message, $(".r-column", row));
      else showError($("#resample-error"), message, mentions("every") ? $("#resample-every") : resampleOn);
      return true;
    }
    if (source.kind === "pivot") {
      const control = mentions("values") && !mentions("columns") ? pivotValues : pivotColumns;
      showError($("#pivot-error"), message, control);
      return true;
    }
    if (source.kind === "unpivot") {
      showError($("#unpivot-error"), message, $("#unpivot-variable"));
      return true;
    }
    return false;
  }

  function reset() {
    windowList.replaceChildren();
    resampleAggs.replaceChildren();
    for (const group of [asofBy, resampleBy, pivotIndex, unpivotIndex, unpivotOn]) group.replaceChildren();
    for (const select of [asofRight, resampleOn, pivotColumns]) select.value = "";
    for (const id of ["#asof-tolerance", "#resample-every", "#unpivot-variable", "#unpivot-value"]) $(id).value = "";
    $("#asof-strategy").value = "BACKWARD";
    $("#pivot-fn").value = "FIRST";
    clearErrors($("#time"));
    clearErrors($("#reshape"));
    refresh();
  }

  $("#add-window").addEventListener("click", addWindow);
  $("#add-resample-agg").addEventListener("click", addResampleAgg);
  asofRight.addEventListener("change", () => {
    clearErrors($("#asof"));
    renderAsofColumns();
  });

  return { timeSteps, reshapeSteps, placeError, refresh, reset, renderAsof };
}
