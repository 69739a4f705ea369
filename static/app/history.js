// Section 6: the open dataset's history. Its kept versions (newest first), two of them compared
// (by default the one before the current against the current, rows matched by a key column or
// whole), with the changed rows and each column's statistics before and after; and restoring an
// old version, after a confirm step, as a new version.

import { graphql, unwrap } from "./api.js";
import {
  $,
  busy,
  clearErrors,
  fillSelect,
  formatBytes,
  formatNumber,
  h,
  newestOnly,
  recordsTable,
  showError,
  showQuery,
} from "./dom.js";
import { DIFF, RESTORE, VERSIONS } from "./queries.js";

const NO_KEY = ""; // the key menu's "whole rows" entry

// The statistics shown before and after, of the `describe` record of each column.
const STATS = [
  { name: "count", label: "Values" },
  { name: "nullCount", label: "Missing" },
  { name: "mean", label: "Mean" },
  { name: "min", label: "Min" },
  { name: "max", label: "Max" },
  { name: "unique", label: "Distinct" },
];

const when = (iso) => new Date(iso).toLocaleString([], { dateStyle: "medium", timeStyle: "medium" });

export function initHistory(app) {
  const { state } = app;
  const section = $("#history");
  const list = $("#history-versions");
  const status = $("#history-status");
  const before = $("#diff-before");
  const after = $("#diff-after");
  const key = $("#diff-key");
  const run = $("#diff-run");
  const view = $("#diff-view");
  const queryPre = $("#history-query");
  const dialog = $("#restore-dialog");
  const loads = newestOnly();
  const diffs = newestOnly();
  let shown = { id: null, version: null, versions: [] }; // what the list shows
  let restoring = null; // the version number the dialog asks about

  /** Load the open dataset's versions; `fresh` (another dataset was opened) resets the picks. */
  async function load({ fresh = false } = {}) {
    const current = state.current;
    if (!current) return;
    const newest = loads();
    const variables = { id: current.id };
    showQuery(queryPre, VERSIONS, variables);
    let dataset;
    try {
      dataset = (await graphql(VERSIONS, variables)).dataset;
      if (!newest()) return;
    } catch (error) {
      if (newest()) showError($("#history-error"), error.message, list);
      return;
    }
    if (!dataset) return; // deleted meanwhile: the picker says so
    const moved = shown.id === dataset.id && shown.version !== dataset.version;
    shown = { id: dataset.id, version: dataset.version, versions: dataset.versions };
    $(".scope", section).textContent =
      `Versions of “${dataset.name}” kept on the server, newest first; it is at version ${dataset.version}.`;
    renderVersions();
    fillVersions({ reset: fresh || moved });
    if (fresh) {
      view.hidden = true;
      status.textContent = "";
    }
  }

  function renderVersions() {
    const head = h(
      "tr",
      {},
      ["Version", "Made", "Origin", "Rows", "Size", ""].map((t, i) =>
        h("th", { scope: "col" }, i === 5 ? h("span", { class: "visually-hidden" }, "Action") : t),
      ),
    );
    const rows = shown.versions.map((v) => {
      const current = v.number === shown.version;
      const action = current
        ? h("td", { class: "hint" }, "current")
        : h(
            "td",
            {},
            h(
              "button",
              { type: "button", class: "secondary small", onclick: () => ask(v.number) },
              "Restore this version",
              h("span", { class: "visually-hidden" }, ` (version ${v.number})`),
            ),
          );
      return h(
        "tr",
        { "data-version": v.number },
        h("th", { scope: "row" }, String(v.number), current ? " (current)" : ""),
        h("td", {}, when(v.createdAt)),
        h("td", {}, v.origin.toLowerCase()),
        h("td", { class: "num" }, formatNumber(v.rowCount)),
        h("td", { class: "num" }, formatBytes(v.bytes)),
        action,
      );
    });
    list.replaceChildren(
      h(
        "table",
        { class: "grid versions" },
        h("caption", {}, `${formatNumber(shown.versions.length)} versions kept`),
        h("thead", {}, head),
        h("tbody", {}, rows),
      ),
    );
  }

  /** Fill the two version menus (default: the one before the current, and the current) and the key menu. */
  function fillVersions({ reset }) {
    const items = shown.versions.map((v) => ({
      value: String(v.number),
      label: `${v.number}${v.number === shown.version ? " (current)" : ""} · ${formatNumber(v.rowCount)} rows`,
    }));
    const numbers = shown.versions.map((v) => v.number);
    const previous = String(numbers[1] ?? numbers[0] ?? "");
    fillSelect(before, items, { keep: !reset, fallback: previous });
    fillSelect(after, items, { keep: !reset, fallback: String(shown.version) });
    fillKeys();
    run.disabled = !items.length;
  }

  /** The key menu: the columns both chosen versions have. */
  function fillKeys() {
    const columnsOf = (n) => shown.versions.find((v) => String(v.number) === n)?.columns.map((c) => c.name) ?? [];
    const theirs = new Set(columnsOf(before.value));
    const common = columnsOf(after.value).filter((c) => theirs.has(c));
    fillSelect(key, [{ value: NO_KEY, label: "whole rows (no key)" }, ...common.map((c) => ({ value: c }))]);
  }

  async function compare() {
    clearErrors(section);
    const variables = {
      id: shown.id,
      before: Number(before.value),
      after: Number(after.value),
      key: key.value === NO_KEY ? null : [key.value],
    };
    showQuery(queryPre, DIFF, variables);
    const newest = diffs();
    let data;
    let truncated;
    try {
      const answer = await graphql(DIFF, variables);
      if (!newest()) return;
      const at = answer.dataset?.at;
      if (!at) throw new Error(`Version ${variables.after} is not kept any more (pruned); pick another.`);
      data = unwrap(at.diff);
      truncated = at.diff.meta?.truncated;
    } catch (error) {
      if (!newest()) return;
      view.hidden = true;
      const control = /\bkey\b/.test(error.message) ? key : /version/i.test(error.message) ? before : run;
      showError($("#diff-error"), error.message, control);
      return;
    }
    renderDiff(data, variables, truncated);
  }

  function renderDiff({ summary, rows, stats }, { before: from, after: to }, truncated) {
    view.hidden = false;
    const facts = [
      ["Added", summary.added],
      ["Removed", summary.removed],
      ["Changed", summary.changed],
      ["Unchanged", summary.unchanged],
    ];
    $("#diff-summary").replaceChildren(
      ...facts.map(([label, n]) =>
        h("div", { "data-count": label.toLowerCase() }, h("dt", {}, label), h("dd", {}, formatNumber(n))),
      ),
    );
    const columnNotes = [];
    if (summary.columnsAdded.length) columnNotes.push(`Columns added: ${summary.columnsAdded.join(", ")}.`);
    if (summary.columnsRemoved.length) columnNotes.push(`Columns removed: ${summary.columnsRemoved.join(", ")}.`);
    for (const t of summary.typeChanges) columnNotes.push(`${t.column} changed type from ${t.from} to ${t.to}.`);
    $("#diff-columns").textContent =
      `Version ${to} against version ${from}. ` + (columnNotes.join(" ") || "The same columns, of the same types.");

    const total = summary.added + summary.removed + summary.changed;
    $("#diff-note").textContent = !total
      ? "No row changed."
      : truncated
        ? `The first ${formatNumber(rows.length)} of ${formatNumber(total)}, in key order.`
        : `All ${formatNumber(total)}; a changed row shows each value before beside it.`;
    const names = rows.length ? Object.keys(rows[0]) : [];
    const columns = names.map((name) => ({
      name,
      label: name === "_change" ? "Change" : name.endsWith("__before") ? `${name.slice(0, -8)} (before)` : name,
    }));
    $("#diff-rows").replaceChildren(...(rows.length ? [recordsTable(columns, rows)] : []));

    const present = STATS.filter((s) => stats.some((r) => r.before[s.name] !== undefined));
    const statColumns = [
      { name: "column", label: "Column" },
      ...present.flatMap((s) => [
        { name: `${s.name}:before`, label: `${s.label} before` },
        { name: `${s.name}:after`, label: `${s.label} after` },
      ]),
    ];
    const statRows = stats.map((r) => {
      const record = { column: r.column };
      for (const s of present) {
        record[`${s.name}:before`] = r.before[s.name];
        record[`${s.name}:after`] = r.after[s.name];
      }
      return record;
    });
    $("#diff-stats").replaceChildren(recordsTable(statColumns, statRows));
  }

  function ask(number) {
    clearErrors(section);
    status.textContent = "";
    restoring = number;
    const current = state.current;
    $("#restore-text").textContent =
      `“${current.name}” gets a new version with the rows and columns of version ${number}. ` +
      `Version ${shown.version} and the others stay in its history.`;
    dialog.showModal();
    $("#restore-cancel").focus();
  }

  async function restore() {
    const number = restoring;
    const variables = { id: shown.id, version: number };
    showQuery(queryPre, RESTORE, variables);
    const was = shown.version;
    try {
      const payload = (await graphql(RESTORE, variables)).restoreVersion;
      unwrap(payload); // a refusal is thrown with its message
      const now = payload.dataset.version;
      status.textContent =
        now === was
          ? `Version ${was} already has the rows of version ${number}: nothing changed.`
          : `Restored version ${number} as version ${now} (${formatNumber(payload.dataset.rowCount)} rows).`;
    } catch (error) {
      showError($("#history-error"), error.message, list.querySelector(`tr[data-version="${number}"] button`));
      return;
    }
    await load();
  }

  $("#restore-cancel").addEventListener("click", () => dialog.close());
  $("#restore-form").addEventListener("submit", (event) => {
    event.preventDefault();
    dialog.close();
    restore();
  });
  $("#diff-form").addEventListener("submit", (event) => {
    event.preventDefault();
    busy(run, compare);
  });
  before.addEventListener("change", fillKeys);
  after.addEventListener("change", fillKeys);

  app.on("dataset", ({ changed }) => {
    section.hidden = !state.current;
    if (!state.current) {
      shown = { id: null, version: null, versions: [] };
      return;
    }
    if (changed) clearErrors(section);
    load({ fresh: changed });
  });

  return { load };
}
