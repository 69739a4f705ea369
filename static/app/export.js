// Section 5: export the current result as a file. The API writes it and answers a link under
// /exports/ (unguessable, expiring); the page names the file after what it holds
// ("titanic-filtered-by-class.csv": the server saves it under the `?name=` given), starts the
// download and keeps the link, which downloads under the same name.

import { graphql, unwrap } from "./api.js";
import { $, busy, clearErrors, formatBytes, formatNumber, h, showError, showQuery } from "./dom.js";
import { EXPORT } from "./queries.js";
import { scopeOf } from "./result.js";


/** A file name (without extension) that says what the result is: the dataset, then its steps. */
export function exportStem(state) {
  const parts = [state.current.id];
  for (const step of state.applied) {
    if (step.join) parts.push("joined", step.join.right);
    if (step.filter) parts.push("filtered", "by", ...new Set(step.filter.map((c) => c.column)));
    if (step.window) parts.push("with", ...step.window.map((w) => w.alias ?? `${w.column}_${w.fn.toLowerCase()}`));
    if (step.joinAsof) parts.push("asof", step.joinAsof.right);
    if (step.resample) parts.push("every", step.resample.every);
    if (step.groupBy) parts.push("grouped", "by", ...step.groupBy.by);
    if (step.pivot) parts.push("pivoted", "by", step.pivot.columns);
    if (step.unpivot) parts.push("unpivoted");
    if (step.sort) parts.push("sorted", "by", ...step.sort.map((k) => k.column));
    if (step.select) parts.push(`${step.select.length}-columns`);
  }
  return parts.join("-").replace(/[^A-Za-z0-9._-]+/g, "-").replace(/^[.-]+|[.-]+$/g, "").slice(0, 100);
}

export function initExport(app) {
  const { state } = app;
  const section = $("#export");
  const button = $("#export-run");
  const format = $("#export-format");
  const link = $("#export-link");

  async function run() {
    clearErrors(section);
    link.replaceChildren();
    const variables = { id: state.current.id, steps: state.applied, format: format.value };
    showQuery($("#export-query"), EXPORT, variables);
    try {
      const data = await graphql(EXPORT, variables);
      const file = unwrap(data.dataset.pipeline.export);
      const stem = exportStem(state);
      const name = `${stem}.${file.format.toLowerCase()}`;
      const href = `${file.url}?name=${encodeURIComponent(stem)}`;
      const anchor = h("a", { href, download: name }, `Download ${name}`);
      const expires = new Date(file.expiresAt).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      link.replaceChildren(
        anchor,
        ` (${formatNumber(file.rows)} rows, ${formatBytes(file.bytes)}; the link works until ${expires}).`,
      );
      anchor.click();
    } catch (error) {
      showError($("#export-error"), error.message, format);
    }
  }

  button.addEventListener("click", () => busy(button, run));
  app.on("result", () => {
    $(".scope", section).textContent = scopeOf(state);
    link.replaceChildren();
  });
}
