// Section 4: a chart of the current result. The API computes the values and answers a Vega-Lite
// spec; vega-embed (vendored, loaded on first use) draws it as SVG.

import { graphql, unwrap } from "./api.js";
import { $, busy, clearErrors, fillSelect, formatNumber, h, newestOnly, showError, showQuery } from "./dom.js";
import { CHART } from "./queries.js";
import { scopeOf } from "./result.js";
import { cssColour } from "./theme.js";

const VENDOR = ["vega/vega.min.js", "vega-lite/vega-lite.min.js", "vega-embed/vega-embed.min.js"];
// Which fields each kind of chart takes.
const FIELDS = {
  BAR: ["x", "y", "color", "aggregate"],
  LINE: ["x", "y", "color", "aggregate"],
  SCATTER: ["x", "y", "color"],
  HISTOGRAM: ["x", "bins"],
  BOX: ["x", "y"],
};

let vega = null;
const SHORT_LABEL = 12; // characters: labels this short stay level under their bars

/** The spec as the page draws it: as wide as its card, in the page's colours, short labels level,
 * and, when y is already a group-by's summary (one value per bar), titled by that column alone
 * rather than "mean of fare_mean". Only the look changes: the values are the API's. */
function styled(spec, sent, state) {
  const out = { ...spec };
  const single = !out.layer && !out.facet && !out.hconcat && !out.vconcat && !out.concat;
  if (single) {
    out.width = "container";
    out.height = 320;
    out.autosize = { type: "fit", contains: "padding" };
  }
  const grouped = state.applied.findLast((s) => s.groupBy || s.select)?.groupBy;
  const summaries = grouped?.aggregations.map((a) => a.alias ?? `${a.column}_${a.fn.toLowerCase()}`) ?? [];
  const y = out.encoding?.y;
  const keys = new Set(grouped?.by ?? []);
  const onePerBar = keys.has(sent.x) && (!sent.color || keys.has(sent.color)) && keys.size <= 1 + (sent.color ? 1 : 0);
  if (!sent.aggregate && sent.y && summaries.includes(sent.y) && onePerBar && y) {
    out.encoding = { ...out.encoding, y: { ...y, title: sent.y } };
    out.title = `${sent.y} by ${sent.x}${sent.color && sent.color !== sent.x ? ` and ${sent.color}` : ""}`;
  }
  const x = out.encoding?.x;
  if (x && ["nominal", "ordinal"].includes(x.type)) {
    const labels = (out.data?.values ?? []).map((row) => String(row[x.field] ?? ""));
    const longest = Math.max(0, ...labels.map((l) => l.length));
    out.encoding = { ...out.encoding, x: { ...x, axis: { ...(x.axis ?? {}), labelAngle: longest <= SHORT_LABEL ? 0 : -40 } } };
  }
  return out;
}

/** The page's theme, for vega: text, lines and background from its CSS variables. */
function themed() {
  const text = cssColour("--text");
  const muted = cssColour("--muted");
  const line = cssColour("--line");
  return {
    background: "transparent",
    font: "system-ui, sans-serif",
    title: { color: text, fontSize: 14 },
    axis: { labelColor: muted, titleColor: text, domainColor: muted, tickColor: muted, gridColor: line },
    legend: { labelColor: muted, titleColor: text },
    view: { stroke: line },
  };
}

/** Load vega, vega-lite and vega-embed once, in order (they are UMD scripts that set globals). */
function loadVega() {
  vega ??= new Promise((resolve, reject) => {
    const scripts = VENDOR.map((path) => h("script", { src: `/static/vendor/${path}` }));
    for (const script of scripts) {
      script.async = false; // fetched in parallel, run in order
      script.addEventListener("error", () => {
        vega = null;
        reject(new Error(`Could not load ${script.src}.`));
      });
    }
    scripts.at(-1).addEventListener("load", () => resolve(window.vegaEmbed));
    document.head.append(...scripts);
  });
  return vega;
}

export function initChart(app) {
  const { state } = app;
  const section = $("#chart");
  const form = $("#chart-form");
  const kind = $("#chart-kind");
  const view = $("#chart-view");
  const note = $("#chart-note");
  const controls = {
    x: $("#chart-x"),
    y: $("#chart-y"),
    color: $("#chart-color"),
    aggregate: $("#chart-aggregate"),
    bins: $("#chart-bins"),
  };
  let drawn = null; // the embedded view, to free it before drawing again
  const asked = newestOnly();

  function showFields() {
    const wanted = FIELDS[kind.value];
    for (const [name, control] of Object.entries(controls)) control.closest(".field").hidden = !wanted.includes(name);
  }

  function renderMenus() {
    const items = state.columns.map((c) => ({ value: c.name, label: `${c.name} (${c.dtype})` }));
    fillSelect(controls.x, items);
    fillSelect(controls.y, [{ value: "", label: "none (count rows)" }, ...items]);
    fillSelect(controls.color, [{ value: "", label: "none" }, ...items]);
  }

  function spec() {
    const wanted = FIELDS[kind.value];
    const out = { kind: kind.value, x: controls.x.value };
    for (const name of ["y", "color", "aggregate"]) {
      if (wanted.includes(name) && controls[name].value) out[name] = controls[name].value;
    }
    if (wanted.includes("bins") && controls.bins.value !== "") out.bins = Number(controls.bins.value);
    return out;
  }

  /** The control an error is about: a column it names, or the setting it names. */
  function culprit(message, sent) {
    for (const name of ["x", "y", "color"]) {
      if (sent[name] && message.includes(`"${sent[name]}"`)) return controls[name];
    }
    if (/\bbins\b/.test(message)) return controls.bins;
    if (/\baggregate\b/.test(message)) return controls.aggregate;
    return kind;
  }

  async function draw() {
    clearErrors(section);
    const sent = spec();
    const variables = { id: state.current.id, steps: state.applied, spec: sent };
    showQuery($("#chart-query"), CHART, variables);
    const newest = asked();
    try {
      const [data, embed] = await Promise.all([graphql(CHART, variables), loadVega()]);
      if (!newest()) return;
      const vegaLite = styled(unwrap(data.dataset.pipeline.chart), sent, state);
      drawn?.finalize();
      drawn = null;
      const target = h("div");
      view.replaceChildren(target);
      const embedded = await embed(target, vegaLite, {
        renderer: "svg",
        ast: true, // vega's expression interpreter: no eval, so the page's CSP needs no 'unsafe-eval'
        actions: { export: true, source: false, compiled: false, editor: false },
        downloadFileName: `${state.current.id}-chart`,
        // The page's look, not the spec's content: its theme's colours and font.
        config: themed(),
      });
      if (!newest()) {
        embedded.finalize(); // a newer chart took its place meanwhile
        return;
      }
      drawn = embedded;
      const meta = vegaLite.usermeta ?? {};
      note.textContent = meta.truncated
        ? `Showing ${formatNumber(meta.points)} of ${formatNumber(meta.totalPoints)} points (the API caps a chart's points).`
        : "";
    } catch (error) {
      if (!newest()) return;
      showError($("#chart-error"), error.message, culprit(error.message, sent));
    }
  }

  kind.addEventListener("change", () => {
    showFields();
    clearErrors(section);
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    busy($("#chart-draw"), draw);
  });
  app.on("result", ({ live }) => {
    $(".scope", section).textContent = scopeOf(state);
    renderMenus();
    if (drawn && live) draw();
    else if (drawn) {
      drawn.finalize();
      drawn = null;
      view.replaceChildren(h("p", { class: "hint" }, "The result changed: draw the chart again."));
      note.textContent = "";
    }
  });
  /** Draw the chart `wanted` asks for ({kind, x, y, color, aggregate, bins}, as the API's chart
   * takes it) and bring it into view: a chart named by the page's address. */
  async function show(wanted) {
    if (FIELDS[wanted.kind]) kind.value = wanted.kind;
    showFields();
    for (const [name, control] of Object.entries(controls)) {
      if (wanted[name] !== undefined && wanted[name] !== null) control.value = String(wanted[name]);
    }
    section.scrollIntoView();
    await busy($("#chart-draw"), draw);
  }

  showFields();
  return { redraw: () => drawn && draw(), show };
}
