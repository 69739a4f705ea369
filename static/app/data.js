// Section 1: uploading a file (drop or pick, with progress: the bytes sent, then the server's stages
// followed over jobProgress), the dataset picker, and the chosen dataset's facts, column summary
// (missing-rate bars) and first rows; renaming and deleting it; a first file suggested while there
// is none.

import { ApiError, graphql, unwrap, upload, uploadCommand } from "./api.js";
import { $, clearErrors, fillSelect, formatNumber, h, newestOnly, recordsTable, showError, showQuery } from "./dom.js";
import { DATASET, DATASETS, DELETE, JOB_PROGRESS, RENAME } from "./queries.js";

const PAGE_SIZE = 50; // datasets in a page of the picker

export function initData(app, live) {
  const { state } = app;
  const select = $("#dataset-select");
  const drop = $("#dropzone");
  const input = $("#file-input");
  const progress = $("#upload-progress");
  const cancel = $("#upload-cancel");
  const status = $("#upload-status");
  const uploadError = $("#upload-error");
  const datasetError = $("#dataset-error");
  const queryPre = $("#data-query");
  const asked = newestOnly();
  let cancelUpload = null; // set while an upload runs

  const search = $("#dataset-search");
  const pageText = $("#dataset-page");
  const prev = $("#datasets-prev");
  const next = $("#datasets-next");
  const listed = newestOnly();
  let offset = 0; // where the page shown starts in the list

  /** Ask for the page of the list at `offset` (oldest first), of the datasets the search box matches. */
  async function refreshList() {
    const variables = { limit: PAGE_SIZE, offset, search: search.value.trim() || null };
    showQuery(queryPre, DATASETS, variables);
    const newest = listed();
    try {
      const data = await graphql(DATASETS, variables);
      if (!newest()) return;
      state.datasets = data.datasets;
      state.datasetTotal = data.datasetCount;
      if (!data.datasets.length && offset > 0 && data.datasetCount > 0) {
        offset = Math.max(0, Math.floor((data.datasetCount - 1) / PAGE_SIZE) * PAGE_SIZE); // the page emptied
        return refreshList();
      }
    } catch (error) {
      if (newest()) showError(datasetError, error.message, select);
      return;
    }
    renderList();
    app.emit("datasets");
  }

  function renderPager() {
    const total = state.datasetTotal;
    const searched = search.value.trim();
    if (!total) pageText.textContent = searched ? `No dataset matches “${searched}”.` : "";
    else {
      const last = offset + state.datasets.length;
      const of = searched ? `${formatNumber(total)} matching “${searched}”` : formatNumber(total);
      pageText.textContent = `Datasets ${formatNumber(offset + 1)}–${formatNumber(last)} of ${of}`;
    }
    prev.disabled = offset === 0;
    next.disabled = offset + state.datasets.length >= total;
    $("#dataset-pager").hidden = offset === 0 && total <= PAGE_SIZE; // one page: nothing to page through
  }

  let typing = null;
  search.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      offset = 0;
      refreshList();
    }, 250);
  });
  prev.addEventListener("click", () => {
    offset = Math.max(0, offset - PAGE_SIZE);
    refreshList();
  });
  next.addEventListener("click", () => {
    offset += PAGE_SIZE;
    refreshList();
  });

  /** The picker shows the dataset that is open, and only it: with none open (or the open one gone
   * from the list), a "Choose a dataset…" entry is selected, so choosing any dataset opens it. */
  function renderList() {
    const label = (d) => `${d.name} (${d.id}) · ${formatNumber(d.rowCount)} rows`;
    const items = state.datasets.map((d) => ({ value: d.id, label: label(d) }));
    const current = state.current;
    // The open dataset stays in the picker when the page or the search leaves it out.
    if (current && !state.datasets.some((d) => d.id === current.id)) {
      items.unshift({ value: current.id, label: label(current) });
    }
    const shown = current ? current.id : "";
    const none = !state.datasetTotal && !search.value.trim();
    if (!items.length) items.push({ value: "", label: none ? "No datasets yet: upload a file" : "No dataset matches" });
    else if (!shown) items.unshift({ value: "", label: "Choose a dataset…" });
    fillSelect(select, items, { keep: false, fallback: shown });
    renderPager();
    $("#empty-state").hidden = !none;
    $("#dataset-actions").hidden = !state.current;
    if (!state.current) closeRename();
  }

  /** Show a dataset. `changed` is false when the same dataset is shown again after a change. With
   * `quiet` (a dataset named by the address), one that is not there is no error worth showing. */
  async function open(id, { quiet = false } = {}) {
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
      if (quiet && error.code === "NOT_FOUND" && !state.current) return;
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
    closeRename();
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

  /** The bar at `percent` with `text` beside it; `busy` makes it pulse (work that is not measured). */
  function showProgress(percent, text, busy = false) {
    progress.value = Math.round(percent);
    if (busy) progress.setAttribute("aria-busy", "true");
    else progress.removeAttribute("aria-busy");
    status.textContent = text;
  }

  async function send(file) {
    clearErrors(drop);
    showQuery($("#upload-command"), uploadCommand(file.name));
    $("#upload-curl").hidden = false;
    progress.hidden = false;
    cancel.hidden = false;
    cancel.disabled = false;
    drop.classList.add("busy");
    showProgress(0, `Uploading ${file.name}…`);
    const job = crypto.randomUUID();
    const request = new AbortController();
    let sent = false; // every byte has left the page
    let seen = false; // a jobProgress event came: the server has the file
    let cancelled = false;
    let following = false; // the server's stages come over jobProgress
    // Subscribed before the upload is sent. Without the live connection, or when the subscription
    // fails, the bar pulses while the server reads the file.
    const stop = followJob(live, job, {
      onEvent(event) {
        seen = true;
        if (cancelled) {
          stop(); // the job is on the server: leaving it cancels it
          return;
        }
        const shown = stageShown(event, file);
        if (shown) showProgress(...shown);
      },
      onLost() {
        following = false;
        progress.setAttribute("aria-busy", "true");
        cancel.hidden = sent;
      },
    });
    following = stop !== null;
    const share = following ? 60 : 100; // of the bar for the bytes sent; the server's stages take the rest
    cancelUpload = () => {
      cancelled = true;
      cancel.disabled = true;
      if (!sent) request.abort();
      else if (seen) stop(); // else on the first event, once the job runs
    };
    try {
      const payload = await upload(file, {
        jobId: job,
        signal: request.signal,
        onProgress(fraction) {
          if (!seen) showProgress(fraction * share, `Uploading ${file.name}: ${Math.round(fraction * 100)}%`);
        },
        onSent() {
          sent = true;
          cancel.hidden = !following; // a job nobody follows cannot be stopped
          if (!seen) showProgress(share, following ? "Storing the file…" : `Reading ${file.name}…`, true);
        },
      }).finally(() => stop?.()); // the answer came, so the job has ended: leaving does not cancel it
      // The id the server gave (a second penguins.csv is "penguins-2"): the name the API knows it by.
      const { id, rowCount } = payload.dataset;
      showProgress(100, `${file.name} is now the dataset “${id}” (${formatNumber(rowCount)} rows).`);
      await refreshList();
      await open(payload.dataset.id);
    } catch (error) {
      // Refused or cancelled: no bar left standing half full.
      status.textContent = "";
      progress.hidden = true;
      progress.value = 0;
      if (cancelled && error.code === "CANCELLED") {
        status.textContent = `Upload cancelled: ${file.name} was not saved.`;
      } else {
        showError(uploadError, error.message, input);
      }
    } finally {
      cancelUpload = null;
      cancel.hidden = true;
      progress.removeAttribute("aria-busy");
      drop.classList.remove("busy", "over");
      input.value = "";
    }
  }

  cancel.addEventListener("click", () => cancelUpload?.());
  input.addEventListener("change", () => {
    const file = input.files?.[0];
    // Cleared at once, so choosing the same file again (a second copy) is a change the page sees,
    // even while the first upload's dataset is still being opened.
    input.value = "";
    if (file) send(file);
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

  // Rename and delete ------------------------------------------------------------------------
  const renameForm = $("#rename-form");
  const renameInput = $("#rename-input");
  const datasetStatus = $("#dataset-status");

  function closeRename() {
    renameForm.hidden = true;
    clearErrors(renameForm);
  }

  $("#rename-open").addEventListener("click", () => {
    datasetStatus.textContent = "";
    renameForm.hidden = false;
    renameInput.value = state.current.name;
    renameInput.focus();
    renameInput.select();
  });
  $("#rename-cancel").addEventListener("click", () => {
    closeRename();
    $("#rename-open").focus();
  });
  renameForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(renameForm);
    const variables = { id: state.current.id, name: renameInput.value.trim() };
    showQuery(queryPre, RENAME, variables);
    try {
      const payload = (await graphql(RENAME, variables)).renameDataset;
      unwrap(payload); // a refusal is thrown with its message
      closeRename();
      datasetStatus.textContent = `Renamed: “${payload.dataset.name}” (its id stays ${payload.dataset.id}).`;
      await refreshList();
      await open(payload.dataset.id);
      $("#rename-open").focus();
    } catch (error) {
      showError($("#rename-error"), error.message, renameInput);
    }
  });

  const deleteDialog = $("#delete-dialog");
  let deleting = null; // the id this page is deleting: its DELETED event is no news here
  $("#delete-open").addEventListener("click", () => {
    datasetStatus.textContent = "";
    const { id, name } = state.current;
    $("#delete-text").textContent =
      `“${name}” (${id}) and every version of it will be deleted, for everyone who uses this server.`;
    deleteDialog.showModal();
    $("#delete-cancel").focus();
  });
  $("#delete-cancel").addEventListener("click", () => deleteDialog.close());
  $("#delete-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    deleteDialog.close();
    const { id, name } = state.current;
    showQuery(queryPre, DELETE, { id });
    deleting = id;
    try {
      const payload = (await graphql(DELETE, { id })).deleteDataset;
      unwrap(payload); // a refusal is thrown with its message
    } catch (error) {
      deleting = null;
      showError(datasetError, error.message, select);
      return;
    }
    forget();
    datasetStatus.textContent = `Deleted “${name}” (${id}).`;
    await refreshList();
    select.focus();
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
      if (event.dataset !== deleting) showError(datasetError, `The dataset "${event.dataset}" was deleted.`, select);
    } else {
      await open(event.dataset);
    }
  }

  return { refreshList, open, changed };
}

/** Follow job `job` over the live connection: `onEvent(event)` for each jobProgress event, `onLost()`
 * when the subscription fails. Subscribed at once, or not at all (null) when the connection is down.
 * Answers the function that ends the subscription, which cancels the job if it still runs. */
function followJob(live, job, { onEvent, onLost }) {
  let stop = null;
  const subscribe = () => {
    stop = live.subscribeNow(JOB_PROGRESS, { job }, {
      next({ data }) {
        const event = data?.jobProgress;
        if (event?.stage === "unknown") {
          // The server stopped waiting for the job to start (after 30 s of a long upload): again.
          if (!subscribe()) onLost();
        } else if (event) onEvent(event);
        else onLost();
      },
      error: onLost,
    });
    return stop;
  };
  return subscribe() && (() => stop?.());
}

/** What the progress area shows for a jobProgress event of an upload: [percent, text, busy]. The
 * bytes sent fill the bar to 60%; storing the file on the server takes it to 75%, reading the rows
 * to 85%, and saving them to 100%. Reading and saving say nothing of how far they are: the bar pulses. */
function stageShown(event, file) {
  switch (event.stage) {
    case "started":
    case "staging":
      return [60 + 15 * Math.min(1, (event.bytesProcessed ?? 0) / (file.size || 1)), "Storing the file…"];
    case "parsing":
      return [75, "Reading the rows…", true];
    case "committing":
      return [85, `Saving ${formatNumber(event.rowsProcessed ?? 0)} rows…`, true];
    case "succeeded":
      return [100, `Saved ${formatNumber(event.rowsProcessed ?? 0)} rows.`];
    default: // failed: the upload's answer says why
      return null;
  }
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
