// Section 5's recipe: the current result as a standalone Polars script ("Copy as Polars": to the
// clipboard, and shown, for browsers that refuse the clipboard) and as files ("Download recipe":
// the steps and dataset versions as JSON, for runRecipe, and the script as a .py file).

import { graphql, unwrap } from "./api.js";
import { $, busy, clearErrors, h, showError, showQuery } from "./dom.js";
import { exportStem } from "./export.js";
import { RECIPE } from "./queries.js";

export function initRecipe(app) {
  const { state } = app;
  const copy = $("#recipe-copy");
  const download = $("#recipe-download");
  const script = $("#recipe-script");
  const status = $("#recipe-status");
  const slot = $("#recipe-error");
  let urls = []; // the Blob URLs of the last download, kept while their links are shown

  /** The current result's recipe: {steps, sources, polars, sql}. */
  async function recipe() {
    const variables = { id: state.current.id, steps: state.applied };
    showQuery($("#export-query"), RECIPE, variables);
    const data = await graphql(RECIPE, variables);
    return unwrap(data.dataset.pipeline.recipe);
  }

  function show(text) {
    script.textContent = text;
    script.hidden = false;
  }

  // The current frame's recipe, or null after showing the API's problem next to `button`.
  async function fetched(button) {
    clearErrors(slot.parentElement);
    status.textContent = "";
    try {
      return await recipe();
    } catch (error) {
      showError(slot, error.message, button);
      return null;
    }
  }

  async function copyScript() {
    const found = await fetched(copy);
    if (!found) return;
    show(found.polars);
    try {
      await navigator.clipboard.writeText(found.polars);
      status.textContent = "Copied the Polars script to the clipboard; it is also shown below.";
    } catch {
      status.textContent = "This browser did not allow copying: the script is shown below, to select and copy.";
    }
  }

  function forget() {
    for (const url of urls) URL.revokeObjectURL(url);
    urls = [];
  }

  async function downloadFiles() {
    const found = await fetched(download);
    if (!found) return;
    forget();
    const stem = exportStem(state);
    const files = [
      [`${stem}.recipe.json`, JSON.stringify({ steps: found.steps, sources: found.sources }, null, 2), "application/json"],
      [`${stem}.py`, found.polars, "text/x-python"],
    ];
    const links = files.map(([name, text, type]) => {
      const url = URL.createObjectURL(new Blob([text], { type }));
      urls.push(url);
      return h("a", { href: url, download: name }, name);
    });
    status.replaceChildren("Downloaded ", links[0], " (the steps and dataset versions) and ", links[1], " (the script).");
    for (const link of links) link.click();
    show(found.polars);
  }

  copy.addEventListener("click", () => busy(copy, copyScript));
  download.addEventListener("click", () => busy(download, downloadFiles));
  app.on("result", () => {
    forget();
    status.textContent = "";
    script.textContent = "";
    script.hidden = true;
  });
}
