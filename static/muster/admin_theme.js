// The admin keeps to the pages' theme: one choice ("muster-theme", set by the pages' toggle), which
// the admin's own toggle sets too. A file, not an inline script (the Content-Security-Policy).
(function () {
  "use strict";
  const chosen = localStorage.getItem("muster-theme");
  if (chosen === "light" || chosen === "dark") {
    localStorage.setItem("theme", chosen);
    document.documentElement.dataset.theme = chosen;
  }
  new MutationObserver(() => {
    const theme = document.documentElement.dataset.theme;
    if (theme === "light" || theme === "dark") localStorage.setItem("muster-theme", theme);
    else if (theme === "auto") localStorage.removeItem("muster-theme");
  }).observe(document.documentElement, { attributes: true, attributeFilter: ["data-theme"] });
})();
