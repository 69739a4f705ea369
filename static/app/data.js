// Section 1: uploading a file (drop or pick, with progress), the dataset picker, and the chosen
// dataset's facts, column summary (missing-rate bars) and first rows.

import { ApiError, graphql, unwrap, upload, uploadCommand } from "./api.js";
import { $, clearErrors, fillSelect, formatNumber, h, newestOnly, recordsTable, showError, showQuery } from "./dom.js";
import { DATASET, DATASETS } from "./queries.js";

export function initData(app) {
  const { state } = app;
  const select = $("#dataset-select");
  const drop = $("#dropzone");
  const input = $("#file-input");
  const progress = $("#upload-progress");
  const status = $("#upload-status");
  const uploadError = $("#upload-error");
  const datasetError = $("#dataset-error");
  const queryPre = $("#data-query");
  const asked = newestOnly();

  async function refreshList() {
    showQuery(queryPre, DATASETS);
    try {
      const data = await graphql(DATASETS);
      state.datasets = data.datasets;
    } catch (error) {
      showError(datasetError, error.message, select);
      return;
    }
    renderList();
    app.emit("datasets");
  }

  function renderList() {
    const items = state.datasets.map((d) => ({
      value: d.id,
      label: `${d.name} (${d.id}) · ${formatNumber(d.rowCount)} rows`,
    }));
    if (!items.length) items.push({ value: "", label: "No datasets yet: upload a file" });
    else if (!state.current) items.unshift({ value: "", label: "Choose a dataset…" });
    fillSelect(select, items, { fallback: state.current?.id ?? "" });
  }

  /** Show a dataset. `changed` is false when the same dataset is shown again after a change. */
  async function open(id) {
    clearErrors($(".picker"));
    const changed = id !== state.current?.id;
    const newest = asked();
    showQuery(queryPre, DATASET, { id });
    let dataset;
    try {
      dataset = (await graphql(DATASET, { id })).dataset;
      if (!newest()) return;
      if (!dataset) throw new ApiError(`There is no dataset "${id}" (any more).`, "NOT_FOUND");
    } catch (error) {
      if (!newest()) return;
      showError(datasetError, error.message, select);
      if (error.code === "NOT_FOUND") forget();
      return;
    }
    state.current = dataset;
    history.replaceState(null, "", `#${encodeURIComponent(id)}`);
    renderList();
    renderDataset(dataset);
    app.emit("dataset", { changed });
  }

  function forget() {
    state.current = null;
    $("#dataset-view").hidden = true;
    $("#dataset-facts").hidden = true;
    history.replaceState(null, "", location.pathname);
    renderList();
    app.emit("dataset", { changed: true });
  }

  function renderDataset(dataset) {
    $("#dataset-facts").hidden = false;
    $("#dataset-view").hidden = false;
    $("#dataset-rows").textContent = formatNumber(dataset.rowCount);
    $("#dataset-columns").textContent = formatNumber(dataset.columns.length);
    $("#dataset-version").textContent = String(dataset.version);
    $("#dataset-updated").textContent = new Date(dataset.updatedAt).toLocaleString([], {
      dateStyle: "medium",
      timeStyle: "short",
    });
    $("#column-summary").replaceWith(columnSummary(dataset.columns));
    const preview = $("#preview");
    try {
      const rows = unwrap(dataset.preview);
      preview.replaceChildren(recordsTable(dataset.preview.meta.columns, rows));
    } catch (error) {
      preview.replaceChildren(h("p", { class: "error", role: "alert" }, error.message));
    }
  }

  async function send(file) {
    clearErrors(drop);
    showQuery(queryPre, uploadCommand(file.name));
    progress.hidden = false;
    progress.value = 0;
    progress.removeAttribute("aria-busy");
    status.textContent = `Uploading ${file.name}…`;
    drop.classList.add("busy");
    try {
      const payload = await upload(file, {
        onProgress(fraction) {
          progress.value = Math.round(fraction * 100);
          status.textContent = `Uploading ${file.name}: ${progress.value}%`;
        },
        onParsing() {
          progress.value = 100;
          progress.setAttribute("aria-busy", "true");
          status.textContent = `Reading ${file.name}…`;
        },
      });
      status.textContent = `${file.name} is now the dataset “${payload.dataset.name}” (${formatNumber(payload.dataset.rowCount)} rows).`;
      await refreshList();
      await open(payload.dataset.id);
    } catch (error) {
      status.textContent = "";
      showError(uploadError, error.message, input);
    } finally {
      progress.removeAttribute("aria-busy");
      drop.classList.remove("busy", "over");
      input.value = "";
    }
  }

  input.addEventListener("change", () => {
    if (input.files?.length) send(input.files[0]);
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  drop.addEventListener("dragleave", (event) => {
    if (!drop.contains(event.relatedTarget)) drop.classList.remove("over");
  });
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer?.files?.[0];
    if (file) send(file);
  });
  // A file dropped beside the zone should not make the browser navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  select.addEventListener("change", () => {
    if (select.value) open(select.value);
  });

  /** A dataset event from the live connection. */
  async function changed(event) {
    if (event.kind !== "APPENDED" || !state.datasets.some((d) => d.id === event.dataset)) await refreshList();
    else {
      const known = state.datasets.find((d) => d.id === event.dataset);
      Object.assign(known, { rowCount: event.rowCount, version: event.version });
      renderList();
    }
    if (event.dataset !== state.current?.id) return;
    if (event.kind === "DELETED") {
      forget();
      showError(datasetError, `The dataset "${event.dataset}" was deleted.`, select);
    } else {
      await open(event.dataset);
    }
  }

  return { refreshList, open, changed };
}

/** The column summary: name, type, missing values, and a bar of the missing rate. */
function columnSummary(columns) {
  const rows = columns.map((c) => {
    const percent = c.missingRate * 100;
    const shown = percent === 0 || percent >= 0.1 ? formatNumber(Math.round(percent * 10) / 10) : "<0.1";
    const fill = h("span", { class: "bar-fill" });
    fill.style.width = `${Math.min(100, percent).toFixed(2)}%`;
    return h(
      "tr",
      {},
      h("th", { scope: "row" }, c.name),
      h("td", {}, h("span", { class: "dtype" }, c.dtype)),
      h("td", { class: "num" }, formatNumber(c.nullCount)),
      h(
        "td",
        { class: "bar-cell" },
        h(
          "span",
          { class: "bar", role: "img", "aria-label": `${shown}% missing`, title: `${shown}% missing` },
          fill,
        ),
        h("span", { class: "bar-label" }, `${shown}%`),
      ),
    );
  });
  return h(
    "table",
    { id: "column-summary", class: "grid summary" },
    h(
      "thead",
      {},
      h("tr", {}, ["Column", "Type", "Missing", "Missing rate"].map((t) => h("th", { scope: "col" }, t))),
    ),
    h("tbody", {}, rows),
  );
}
