// Small DOM helpers: building elements, tables, number formatting, and showing errors next to
// the control that caused them.

/** Make an element: h("td", {class: "num"}, "3"). Attributes that are DOM properties (value,
 * checked, hidden) are set as properties; on* attributes become event listeners. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name in el && typeof value !== "string") el[name] = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

const NUMERIC = /^(U?Int|Float|Decimal)/;
export const isNumeric = (dtype) => NUMERIC.test(dtype ?? "");

const integers = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const decimals = new Intl.NumberFormat(undefined, { maximumFractionDigits: 4 });

/** A number for people: grouped digits, at most four decimals. */
export function formatNumber(n) {
  return Number.isInteger(n) ? integers.format(n) : decimals.format(n);
}

const oneDecimal = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

export function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${oneDecimal.format(bytes / 1024)} KiB`;
  return `${oneDecimal.format(bytes / 1024 / 1024)} MiB`;
}

/** A table cell for one value; missing values are shown as a muted dash. */
export function cell(value) {
  if (value === null || value === undefined) return h("td", { class: "missing", title: "missing" }, "–");
  if (typeof value === "number") return h("td", { class: "num" }, formatNumber(value));
  if (typeof value === "boolean") return h("td", { class: "bool" }, String(value));
  if (typeof value === "object") return h("td", {}, JSON.stringify(value));
  return h("td", {}, String(value));
}

/** A <table> of records; `columns` are [{name, dtype?, label?}]. */
export function recordsTable(columns, records, { caption } = {}) {
  const head = h(
    "tr",
    {},
    columns.map((c) =>
      h("th", { scope: "col" }, c.label ?? c.name, c.dtype ? h("span", { class: "dtype" }, c.dtype) : null),
    ),
  );
  const body = records.map((record) => h("tr", {}, columns.map((c) => cell(record[c.name]))));
  return h(
    "table",
    { class: "grid" },
    caption ? h("caption", {}, caption) : null,
    h("thead", {}, head),
    h("tbody", {}, body),
  );
}

/** Fill a <select> with options [{value, label}], keeping the chosen value when it still exists. */
export function fillSelect(select, items, { keep = true, fallback } = {}) {
  const previous = select.value;
  select.replaceChildren(...items.map((item) => h("option", { value: item.value }, item.label ?? item.value)));
  const values = items.map((i) => i.value);
  if (keep && values.includes(previous)) select.value = previous;
  else if (fallback !== undefined && values.includes(fallback)) select.value = fallback;
}

/** Fill `container` with a checkbox chip per name in `names`, ticked when in the Set `checked`; the
 * boxes' ids are `${prefix}-0`, `${prefix}-1`... */
export function chips(container, names, checked, prefix) {
  container.replaceChildren(
    ...names.map((name, i) => {
      const id = `${prefix}-${i}`;
      return h(
        "span",
        { class: "chip" },
        h("input", { type: "checkbox", id, value: name, checked: checked.has(name) }),
        h("label", { for: id }, name),
      );
    }),
  );
}

/** The names of the ticked chips in `container`, in order. */
export const checkedIn = (container) => $$("input:checked", container).map((i) => i.value);

/** Show `message` in the error slot `slot` (a <p class="error">), marking `control` invalid. */
export function showError(slot, message, control) {
  slot.textContent = message;
  slot.hidden = false;
  const target = control ?? null;
  if (target) {
    target.setAttribute("aria-invalid", "true");
    if (!slot.id) slot.id = `error-${Math.random().toString(36).slice(2, 9)}`;
    const described = new Set((target.getAttribute("aria-describedby") ?? "").split(" ").filter(Boolean));
    described.add(slot.id);
    target.setAttribute("aria-describedby", [...described].join(" "));
  }
}

/** Hide every error slot under `root` and clear the invalid marks. */
export function clearErrors(root) {
  for (const slot of $$(".error", root)) {
    slot.hidden = true;
    slot.textContent = "";
  }
  for (const el of $$("[aria-invalid]", root)) el.removeAttribute("aria-invalid");
}

/** Write the GraphQL request a section sent into its <pre>, so it can be copied into a script. */
export function showQuery(pre, query, variables) {
  const parts = [query.trim()];
  if (variables && Object.keys(variables).length) parts.push(`\n# variables\n${JSON.stringify(variables, null, 2)}`);
  pre.textContent = parts.join("\n");
}

/** For requests that may overlap (a live update while another runs): `const ask = newestOnly()`
 * once, then `const mine = ask()` per request and, after its answer, drop it unless `mine()`. */
export function newestOnly() {
  let ticket = 0;
  return () => {
    const mine = ++ticket;
    return () => mine === ticket;
  };
}

/** Toggle a button's busy state while its request runs. */
export async function busy(button, work) {
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    return await work();
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}
