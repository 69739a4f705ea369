// The light/dark toggle in the top bar. Without a choice the page follows the system's
// prefers-color-scheme; a choice is remembered in localStorage and applied before the page paints
// (static/theme.js). The page's chart reads its colours from the same CSS variables.

import { $ } from "./dom.js";

const STORE = "datagraph.theme";
const systemDark = window.matchMedia("(prefers-color-scheme: dark)");

/** "dark" or "light": the theme the page shows now. */
export function currentTheme() {
  return document.documentElement.dataset.theme ?? (systemDark.matches ? "dark" : "light");
}

/** A CSS variable of the page's theme, e.g. cssColour("--text"). */
export function cssColour(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

export function initTheme(onChange) {
  const button = $("#theme-toggle");
  const show = () => {
    const dark = currentTheme() === "dark";
    button.setAttribute("aria-pressed", String(dark));
    button.textContent = "Dark theme";
    button.title = dark ? "Switch to the light theme" : "Switch to the dark theme";
  };
  button.addEventListener("click", () => {
    const next = currentTheme() === "dark" ? "light" : "dark";
    document.documentElement.dataset.theme = next;
    try {
      localStorage.setItem(STORE, next);
    } catch {
      // Not remembered, but applied.
    }
    show();
    onChange();
  });
  systemDark.addEventListener("change", () => {
    show();
    onChange();
  });
  show();
}
