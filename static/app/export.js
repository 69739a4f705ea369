// Section 5: export the current result as a file. The API writes it and answers a link under
// /exports/ (unguessable, expiring); the page starts the download and keeps the link.

import { graphql, unwrap } from "./api.js";
import { $, busy, clearErrors, formatBytes, formatNumber, h, showError, showQuery } from "./dom.js";
import { EXPORT } from "./queries.js";
import { scopeOf } from "./result.js";

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
      const name = `${state.current.id}.${file.format.toLowerCase()}`;
      const anchor = h("a", { href: file.url, download: name }, `Download ${name}`);
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
