// The datagraph web page: plain ES modules, no build step. Each section is one module under
// app/; they share `state` and a few events:
//   "datasets"  the dataset list changed
//   "dataset"   a dataset was opened ({changed: true}) or its data changed ({changed: false})
//   "result"    the current result was run ({live: true} when rerun after a change)

import { initKeyButton } from "./app/auth.js";
import { initBuilder } from "./app/builder.js";
import { initChart } from "./app/chart.js";
import { initData } from "./app/data.js";
import { initDescribe } from "./app/describe.js";
import { $ } from "./app/dom.js";
import { initExport } from "./app/export.js";
import { initHistory } from "./app/history.js";
import { LiveConnection } from "./app/live.js";
import { EVENTS } from "./app/queries.js";
import { initRecipe } from "./app/recipe.js";
import { initResult } from "./app/result.js";
import { initTheme } from "./app/theme.js";

function createApp() {
  const listeners = new Map();
  return {
    state: {
      datasets: [], // the page of the list shown: [{id, name, version, rowCount, columns}]
      datasetTotal: 0, // datasets matching the search, on every page
      current: null, // the dataset shown, with its columns and preview
      base: [], // the steps of the current result, without the column pick
      picked: null, // the columns kept (a select step), or null for all
      applied: [], // base plus the select: what describe, chart and export work on
      count: 0, // rows in the current result
      allColumns: [], // the current result's columns before the pick
      columns: [], // ... and after it
    },
    on(name, listener) {
      if (!listeners.has(name)) listeners.set(name, []);
      listeners.get(name).push(listener);
    },
    emit(name, detail = {}) {
      for (const listener of listeners.get(name) ?? []) listener(detail);
    },
  };
}

const app = createApp();
const live = new LiveConnection({
  onStatus(state, text) {
    const badge = $("#live");
    badge.dataset.state = state;
    badge.textContent = text;
  },
  onResume: refresh,
});
const data = initData(app, live);
const builder = initBuilder(app);
const result = initResult(app, builder);
initDescribe(app);
const chart = initChart(app);
initExport(app);
initRecipe(app);
initHistory(app);
initTheme(() => chart.redraw()); // the chart takes its colours from the theme

/** Bring the page up to date: the list, and the dataset shown (after a reconnection or a new key). */
async function refresh() {
  await data.refreshList();
  const wanted = app.state.current?.id ?? decodeURIComponent(location.hash.slice(1));
  if (wanted) await data.open(wanted, { quiet: true }); // on any page of the list, or none
}

// A link to another dataset (`/#penguins`) followed on an open page, or the back button, opens it.
window.addEventListener("hashchange", async () => {
  const wanted = decodeURIComponent(location.hash.slice(1));
  if (!wanted || wanted === app.state.current?.id) return;
  await data.refreshList();
  await data.open(wanted, { quiet: true });
});

live.subscribe(EVENTS, {}, {
  next({ data: payload, errors }) {
    if (errors?.length || !payload) return;
    const event = payload.datasetEvents;
    data.changed(event);
    app.emit("dataset-event", event);
    const joined = app.state.applied.some((step) => (step.join ?? step.joinAsof)?.right === event.dataset);
    if (joined && event.dataset !== app.state.current?.id) {
      result.run(app.state.base, { picked: app.state.picked, live: true });
    }
  },
  error(errors) {
    $("#live").textContent = `Not live: ${errors.map((e) => e.message).join(" ")}`;
  },
});
live.connect();
initKeyButton(() => {
  live.close();
  live.connect();
  refresh();
});
window.addEventListener("pagehide", () => live.close());
window.addEventListener("pageshow", (event) => {
  if (event.persisted) live.connect(); // back from the back/forward cache
});

/** A view the address names: `/?steps=[...]&chart={...}#dataset` (as `make demo` prints it) opens
 * the dataset with these steps applied and their chart drawn, kept live like any result. Null when
 * there is none, or it is not JSON of that shape (the page then opens as usual). */
function viewInAddress() {
  const params = new URLSearchParams(location.search);
  if (!params.has("steps") && !params.has("chart")) return null;
  try {
    const steps = JSON.parse(params.get("steps") ?? "[]");
    const spec = JSON.parse(params.get("chart") ?? "null");
    const isObject = (value) => value !== null && typeof value === "object" && !Array.isArray(value);
    if (!Array.isArray(steps) || !steps.every(isObject) || (spec !== null && !isObject(spec))) return null;
    return { steps, spec };
  } catch {
    return null;
  }
}

async function start() {
  await refresh();
  const view = viewInAddress();
  if (!view || !app.state.current) return;
  // The chart is drawn on the first result of these steps: this run's, or that of a rerun after a
  // change of the data that overtook it (which runs the steps set here).
  let chartWanted = Boolean(view.spec);
  app.on("result", () => {
    if (!chartWanted || app.state.base !== view.steps) return;
    chartWanted = false;
    chart.show(view.spec);
  });
  Object.assign(app.state, { base: view.steps, picked: null });
  await result.run(view.steps);
}
start();
