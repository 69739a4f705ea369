// Section 2's menus: join another dataset, filter rows (column, operator, value), time series and
// reshaping (timeshape.js), group by columns with summaries, sort the outcome by one column. They become `steps` for the API's pipeline(steps:), and an error the
// API gives for a step is shown next to the menu that made it.

import { graphql, unwrap } from "./api.js";
import { $, checkedIn, chips, clearErrors, fillSelect, h, isNumeric, showError, showQuery } from "./dom.js";
import { COLUMNS, JOINABLE } from "./queries.js";
import { initTimeShape } from "./timeshape.js";

const OPS = {
  EQ: "equals",
  NE: "does not equal",
  GT: "is greater than",
  GE: "is at least",
  LT: "is less than",
  LE: "is at most",
  BETWEEN: "is between",
  IN: "is one of",
  NOT_IN: "is not one of",
  CONTAINS: "contains",
  STARTS_WITH: "starts with",
  ENDS_WITH: "ends with",
  IS_NULL: "is missing",
  NOT_NULL: "is not missing",
};
const OPS_BY_KIND = {
  number: ["EQ", "NE", "GT", "GE", "LT", "LE", "BETWEEN", "IN", "NOT_IN", "IS_NULL", "NOT_NULL"],
  text: ["EQ", "NE", "CONTAINS", "STARTS_WITH", "ENDS_WITH", "IN", "NOT_IN", "GT", "LT", "IS_NULL", "NOT_NULL"],
  boolean: ["EQ", "NE", "IS_NULL", "NOT_NULL"],
  date: ["EQ", "NE", "GT", "GE", "LT", "LE", "BETWEEN", "IS_NULL", "NOT_NULL"],
  other: Object.keys(OPS),
};
const AGGS = {
  COUNT: "count of",
  SUM: "sum of",
  MEAN: "mean of",
  MEDIAN: "median of",
  MIN: "minimum of",
  MAX: "maximum of",
  STD: "standard deviation of",
  VAR: "variance of",
  N_UNIQUE: "distinct values of",
  FIRST: "first value of",
  LAST: "last value of",
};

function kindOf(dtype) {
  if (isNumeric(dtype)) return "number";
  if (dtype === "Boolean") return "boolean";
  if (/^(Date|Datetime)/.test(dtype)) return "date";
  if (/^(String|Categorical|Enum)/.test(dtype)) return "text";
  return "other";
}

/** One value typed by the person, as JSON for the column's type: "30" is the number 30 for a
 * number column, "true" is true for a true/false column; anything else is sent as text (trimmed),
 * so that the API's own message says what it expected. */
function valueFor(text, dtype) {
  const trimmed = text.trim();
  if (trimmed === "") return null;
  const kind = kindOf(dtype);
  if (kind === "number" && Number.isFinite(Number(trimmed))) return Number(trimmed);
  if (kind === "boolean" && /^(true|false)$/i.test(trimmed)) return trimmed.toLowerCase() === "true";
  return trimmed;
}

const quoted = (message) => [...message.matchAll(/"([^"]*)"/g)].map((m) => m[1]);

export function initBuilder(app) {
  const { state } = app;
  const joinRight = $("#join-right");
  const joinHow = $("#join-how");
  const joinKeys = $("#join-keys");
  const filterList = $("#filter-rows");
  const groupKeys = $("#group-keys");
  const aggList = $("#agg-rows");
  const sortColumn = $("#sort-column");
  const sortOrder = $("#sort-order");
  let columns = []; // what the menus offer: the dataset's columns, with the joined ones after a join
  let made = []; // for each step last built, the menu it came from
  const refreshers = new WeakMap(); // filter or summary row -> refill its column menu

  /** A button that removes its row, then puts the focus on `next`. */
  const removeButton = (label, next) =>
    h("button", {
      type: "button",
      class: "icon",
      "aria-label": label,
      onclick: (event) => {
        event.currentTarget.closest("li").remove();
        next.focus();
      },
    }, "×");

  const dtypeOf = (name) => columns.find((c) => c.name === name)?.dtype ?? "";
  const columnItems = () => columns.map((c) => ({ value: c.name, label: `${c.name} (${c.dtype})` }));

  // Join ------------------------------------------------------------------------------------------
  // What a join may name is not only the picker's page: the first 1,000 datasets, plus the page (and
  // so whatever the picker's search found), in the order of the list.
  let joinable = [];
  const joinChoices = () => {
    const all = new Map(joinable.map((d) => [d.id, d]));
    for (const d of state.datasets) all.set(d.id, d);
    return [...all.values()];
  };

  async function loadJoinable() {
    try {
      joinable = (await graphql(JOINABLE, {})).datasets;
    } catch {
      joinable = []; // the picker's page still offers its datasets
    }
  }

  const time = initTimeShape({ columns: () => columns, rightDatasets: joinChoices, removeButton });

  function renderJoinChoices() {
    const others = joinChoices().map((d) => ({ value: d.id, label: `${d.name} (${d.id})` }));
    fillSelect(joinRight, [{ value: "", label: "No join" }, ...others]);
  }

  function renderJoinKeys() {
    const right = joinChoices().find((d) => d.id === joinRight.value);
    const hint = $("#join-hint");
    if (!right || !state.current) {
      joinKeys.replaceChildren();
      hint.hidden = true;
      return;
    }
    const theirs = new Set(right.columns.map((c) => c.name));
    const shared = state.current.columns.map((c) => c.name).filter((n) => theirs.has(n));
    chips(joinKeys, shared, new Set(checkedIn(joinKeys)), "join-key");
    hint.hidden = false;
    hint.textContent = shared.length
      ? "Match rows on the ticked columns (they have the same name in both datasets)."
      : `“${right.name}” has no column with the same name as one here, so the two cannot be joined yet.`;
  }

  function joinStep() {
    if (!joinRight.value) return null;
    return { join: { right: joinRight.value, on: checkedIn(joinKeys), how: joinHow.value } };
  }

  /** After the join changes, ask the API which columns the joined frame has, for the menus. */
  async function joinChanged() {
    clearErrors($("#join"));
    renderJoinKeys();
    const step = joinStep();
    if (!step || !step.join.on.length) {
      setColumns(state.current.columns);
      return;
    }
    const variables = { id: state.current.id, steps: [step] };
    showQuery($("#shape-query"), COLUMNS, variables);
    try {
      const data = await graphql(COLUMNS, variables);
      setColumns(unwrap(data.dataset.pipeline.explain).columns);
    } catch (error) {
      showError($("#join-error"), error.message, joinRight);
    }
  }

  // Filters ---------------------------------------------------------------------------------------
  function addFilter() {
    const column = h("select", { class: "f-column", "aria-label": "Column to filter on" });
    const op = h("select", { class: "f-op", "aria-label": "Condition" });
    const value = h("input", { class: "f-value", type: "text", "aria-label": "Value", autocomplete: "off" });
    const and = h("span", { class: "f-and" }, "and");
    const high = h("input", { class: "f-high", type: "text", "aria-label": "Upper value", autocomplete: "off" });
    const error = h("p", { class: "error", role: "alert", hidden: true });
    const li = h(
      "li",
      { class: "filter-row" },
      h(
        "div",
        { class: "row" },
        column,
        op,
        value,
        and,
        high,
        removeButton("Remove this condition", $("#add-filter")),
      ),
      error,
    );
    const refreshOps = () => {
      const ops = OPS_BY_KIND[kindOf(dtypeOf(column.value))];
      fillSelect(op, ops.map((o) => ({ value: o, label: OPS[o] })));
      refreshValue();
    };
    const refreshValue = () => {
      const needsValue = !["IS_NULL", "NOT_NULL"].includes(op.value);
      value.hidden = !needsValue;
      and.hidden = high.hidden = op.value !== "BETWEEN";
      const list = ["IN", "NOT_IN"].includes(op.value);
      const boolean = kindOf(dtypeOf(column.value)) === "boolean";
      value.placeholder = list ? "a, b, c" : boolean ? "true or false" : "";
      value.setAttribute("aria-label", op.value === "BETWEEN" ? "Lower value" : "Value");
    };
    column.addEventListener("change", refreshOps);
    op.addEventListener("change", refreshValue);
    fillSelect(column, columnItems());
    refreshOps();
    refreshers.set(li, () => {
      fillSelect(column, columnItems());
      refreshOps();
    });
    filterList.append(li);
    column.focus();
  }

  function readCondition(li) {
    const column = $(".f-column", li).value;
    const op = $(".f-op", li).value;
    const dtype = dtypeOf(column);
    const text = $(".f-value", li).value;
    const condition = { column, op };
    if (op === "IN" || op === "NOT_IN") condition.value = text.split(",").map((part) => valueFor(part, dtype));
    else if (op === "BETWEEN") condition.value = [valueFor(text, dtype), valueFor($(".f-high", li).value, dtype)];
    else if (op !== "IS_NULL" && op !== "NOT_NULL") condition.value = valueFor(text, dtype);
    return condition;
  }

  // Group by --------------------------------------------------------------------------------------
  function addAggregation() {
    const fn = h("select", { class: "a-fn", "aria-label": "Summary" });
    const column = h("select", { class: "a-column", "aria-label": "Column to summarise" });
    const output = h("span", { class: "a-output hint" });
    const error = h("p", { class: "error", role: "alert", hidden: true });
    const li = h(
      "li",
      { class: "agg-row" },
      h(
        "div",
        { class: "row" },
        fn,
        column,
        output,
        removeButton("Remove this summary", $("#add-agg")),
      ),
      error,
    );
    fillSelect(fn, Object.entries(AGGS).map(([value, label]) => ({ value, label })));
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
    aggList.append(li);
    fn.focus();
  }

  function setColumns(next) {
    columns = next;
    chips(groupKeys, columns.map((c) => c.name), new Set(checkedIn(groupKeys)), "group-key");
    for (const li of [...filterList.children, ...aggList.children]) refreshers.get(li)();
    time.refresh();
    renderSort();
  }

  // Sort ------------------------------------------------------------------------------------------
  /** The columns the sort can use: those the result will have (after a group-by, its keys and
   * its summaries' output columns). */
  function sortItems() {
    const by = checkedIn(groupKeys);
    const aggRows = [...aggList.children];
    if (!by.length && !aggRows.length) return columnItems();
    const outputs = aggRows.map((li) => `${$(".a-column", li).value}_${$(".a-fn", li).value.toLowerCase()}`);
    return [...by, ...outputs].map((name) => ({ value: name, label: name }));
  }

  function renderSort() {
    fillSelect(sortColumn, [{ value: "", label: "the data's own order" }, ...sortItems()]);
  }

  function sortStep() {
    if (!sortColumn.value) return null;
    return { sort: [{ column: sortColumn.value, descending: sortOrder.value === "desc" }] };
  }

  // The steps, and errors back to their menus ----------------------------------------------------
  /** The pipeline the menus describe, in order: join, filter, window, as-of join, resample, group,
   * pivot, unpivot, sort. */
  function steps() {
    const out = [];
    made = [];
    const join = joinStep();
    if (join) {
      out.push(join);
      made.push({ kind: "join" });
    }
    const rows = [...filterList.children];
    if (rows.length) {
      out.push({ filter: rows.map(readCondition) });
      made.push({ kind: "filter", rows });
    }
    time.timeSteps(out, made);
    const by = checkedIn(groupKeys);
    const aggRows = [...aggList.children];
    if (by.length || aggRows.length) {
      const aggregations = aggRows.map((li) => ({ column: $(".a-column", li).value, fn: $(".a-fn", li).value }));
      out.push({ groupBy: { by, aggregations } });
      made.push({ kind: "groupBy", rows: aggRows });
    }
    time.reshapeSteps(out, made);
    const sort = sortStep();
    if (sort) {
      out.push(sort);
      made.push({ kind: "sort" });
    }
    return out;
  }

  /** Show an error next to the menu that made the failing step; false when no step is to blame. */
  function placeError(error) {
    const message = error.message;
    // A GraphQL variables error names its place ("... at [1].filter[0].op: ..."); the API's own
    // messages start with the step's name and quote the column ('filter on "age" ...').
    const at = (pattern) => Number(pattern.exec(message)?.[1] ?? -1);
    // ("join" must not claim "joinAsof: ...": the kind is followed by a space or a colon.)
    const source = made[at(/\[(\d+)\]\.\w+/)] ?? made.find((m) => new RegExp(`^${m.kind}[ :]`).test(message));
    const names = quoted(message);
    const naming = (selector) => (li) => names.includes($(selector, li).value);
    if (source?.kind === "filter") {
      const row = source.rows[at(/\.filter\[(\d+)\]/)] ?? source.rows.find(naming(".f-column"));
      if (row) showError($(".error", row), message, $(".f-value", row));
      else showError($("#filters-error"), message);
      return true;
    }
    if (source?.kind === "groupBy") {
      const row = source.rows[at(/\.aggregations\[(\d+)\]/)] ?? source.rows.find(naming(".a-column"));
      if (row) showError($(".error", row), message, $(".a-column", row));
      else showError($("#group-error"), message);
      return true;
    }
    if (source?.kind === "sort") {
      showError($("#sort-error"), message, sortColumn);
      return true;
    }
    if (source?.kind === "join") {
      showError($("#join-error"), message, joinRight);
      return true;
    }
    return source ? time.placeError(source, message, at, naming) : false;
  }

  function reset() {
    joinRight.value = "";
    filterList.replaceChildren();
    aggList.replaceChildren();
    groupKeys.replaceChildren();
    sortColumn.value = "";
    sortOrder.value = "asc";
    clearErrors($("#shape"));
    renderJoinKeys();
    time.reset();
    setColumns(state.current?.columns ?? []);
  }

  joinRight.addEventListener("change", joinChanged);
  joinHow.addEventListener("change", () => clearErrors($("#join")));
  joinKeys.addEventListener("change", joinChanged);
  $("#add-filter").addEventListener("click", addFilter);
  $("#add-agg").addEventListener("click", addAggregation);
  // Grouping changes the columns a sort can use (the listeners above have run by the time these
  // events bubble up here: a summary is added or removed first).
  for (const name of ["change", "click"]) $("#group").addEventListener(name, renderSort);
  sortColumn.addEventListener("change", () => clearErrors($("#sort")));
  function renderJoin() {
    renderJoinChoices();
    renderJoinKeys();
    time.renderAsof();
  }
  // The join's list is fetched once, and again only when datasets come, go or change their columns
  // (a live event); paging or searching the picker only adds its page to it.
  let joinableLoaded = false;
  app.on("datasets", async () => {
    renderJoin();
    if (joinableLoaded) return;
    joinableLoaded = true;
    await loadJoinable();
    renderJoin();
  });
  app.on("dataset-event", async ({ kind }) => {
    if (kind === "APPENDED") return; // the same columns
    await loadJoinable();
    renderJoin();
  });

  return { steps, placeError, reset, refreshColumns: () => joinChanged() };
}
