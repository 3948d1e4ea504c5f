// Before the first paint (loaded without defer): the saved theme, else the system's. A file, not an
// inline script, so the Content-Security-Policy can refuse every inline script.
document.documentElement.dataset.theme =
  localStorage.getItem("muster-theme") || (matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light");
