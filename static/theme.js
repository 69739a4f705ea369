// Run before the page paints (a classic script in <head>): apply the theme the person chose with
// the toggle, if any; otherwise the stylesheet follows prefers-color-scheme.
try {
  const chosen = localStorage.getItem("datagraph.theme");
  if (chosen === "dark" || chosen === "light") document.documentElement.dataset.theme = chosen;
} catch {
  // Storage refused (a privacy setting): the system's scheme it is.
}
