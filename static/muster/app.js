/* Muster's page behaviour: theme, toasts, menus, confirm dialogs, graphs, selection, drag and drop.
   The server renders every table and panel; this file only wires them up and keeps the view state
   (selection, open menus, scroll) across HTMX's live refreshes. */
(function () {
  "use strict";
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const csrf = () => (document.querySelector("meta[name=csrf-token]") || {}).content || "";

  /* --- theme -------------------------------------------------------------------------------- */
  function setTheme(theme) {
    document.documentElement.dataset.theme = theme;
    localStorage.setItem("muster-theme", theme);
    $$(".graph").forEach((el) => el._data && draw(el, el._data));
  }
  document.addEventListener("click", (e) => {
    if (e.target.closest("#theme-toggle")) {
      setTheme(document.documentElement.dataset.theme === "dark" ? "light" : "dark");
    }
  });

  /* --- times: the reader's zone, or UTC by their choice (Settings) ----------------------------------
     The server writes every moment in UTC and names the zone (<time datetime data-when>); here
     they are shown in the chosen zone, named too, on tables, axes and tooltips. */
  const zone = () => (localStorage.getItem("muster-tz") === "UTC" ? "UTC" : Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC");
  const formats = {};  // one formatter a zone: making one costs far more than using it
  function zoneParts(date, tz) {
    const parts = {};
    formats[tz] = formats[tz] || new Intl.DateTimeFormat("en-US", { timeZone: tz, hourCycle: "h23", year: "numeric",
      month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short" });
    formats[tz].formatToParts(date).forEach((p) => { parts[p.type] = p.value; });
    return parts;
  }
  // "2026-12-07 09:14:03" in the zone (what Plotly reads as a plain date), and the zone's short name.
  function inZone(iso, tz) {
    const p = zoneParts(new Date(iso), tz);
    return { text: `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}:${p.second}`, abbr: p.timeZoneName, p };
  }
  function applyTimes(root) {
    const tz = zone();
    $$("time[data-when]", root).forEach((el) => {
      const z = inZone(el.getAttribute("datetime"), tz), p = z.p;
      const full = `${z.text} ${z.abbr}`;
      el.title = full + (tz === "UTC" ? "" : ` (${tz})`);
      const style = el.dataset.when;
      if (style === "time") el.textContent = `${p.hour}:${p.minute}:${p.second} ${z.abbr}`;
      else if (style === "date") el.textContent = `${p.year}-${p.month}-${p.day}`;
      else if (style === "datetime") el.textContent = full;
    });
    const browser = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
    $$("option[data-zone-option]", root).forEach((o) => { o.textContent = `this browser's time zone (${browser})`; });
    $$("select[data-zone-setting]", root).forEach((sel) => { sel.value = localStorage.getItem("muster-tz") === "UTC" ? "UTC" : "local"; });
  }
  document.addEventListener("change", (e) => {
    const sel = e.target.closest("select[data-zone-setting]");
    if (!sel) return;
    if (sel.value === "UTC") localStorage.setItem("muster-tz", "UTC"); else localStorage.removeItem("muster-tz");
    applyTimes(document);
    $$(".graph").forEach((el) => el._data && draw(el, el._data));
    toast(sel.value === "UTC" ? "Times now show in UTC" : "Times now show in " + zone());
  });
  window.musterZone = zone;

  /* --- the top bar's menu on phones ------------------------------------------------------------------ */
  document.addEventListener("click", (e) => {
    const t = e.target.closest("#nav-toggle");
    if (!t) return;
    const open = t.closest(".topbar").classList.toggle("open");
    t.setAttribute("aria-expanded", String(open));
  });

  /* --- toasts (HX-Trigger: {"toast": {"level", "text"}}) ------------------------------------- */
  function toast(text, level) {
    const box = $("#toasts");
    const el = document.createElement("div");
    el.className = "toast" + (level === "error" ? " error" : "");
    el.setAttribute("role", level === "error" ? "alert" : "status");
    el.textContent = text;
    box.appendChild(el);
    setTimeout(() => el.remove(), level === "error" ? 8000 : 4000);
  }
  window.musterToast = toast;
  document.body.addEventListener("toast", (e) => toast(e.detail.text, e.detail.level));
  document.body.addEventListener("htmx:sendError", () => toast("The server cannot be reached; retrying.", "error"));
  document.body.addEventListener("htmx:responseError", (e) => {
    if (!e.detail.xhr.getResponseHeader("HX-Trigger")) toast("The server answered " + e.detail.xhr.status, "error");
  });
  document.body.addEventListener("htmx:configRequest", (e) => { e.detail.headers["X-CSRFToken"] = csrf(); });

  /* --- confirm dialogs (hx-confirm) ---------------------------------------------------------- */
  function ask(message, onYes) {
    const dlg = $("#confirm-dialog");
    $("#confirm-text", dlg).textContent = message;
    dlg.returnValue = "";
    dlg.onclose = () => { if (dlg.returnValue === "yes") onYes(); };
    dlg.showModal();
  }
  document.body.addEventListener("htmx:confirm", (e) => {
    if (!e.detail.question) return;
    e.preventDefault();
    ask(e.detail.question, () => e.detail.issueRequest(true));
  });

  /* --- context menus: right click on a row with data-menu, or its ⋮ button -------------------- */
  let openMenu = null, menuOpener = null;
  function closeMenu() {
    // Hidden, not removed at once: htmx drops the answers of requests whose element left the page.
    if (!openMenu) return;
    const menu = openMenu;
    openMenu = null;
    menu.hidden = true;
    setTimeout(() => menu.remove(), 30000);
  }
  window.musterMenuOpen = () => openMenu !== null || !!document.querySelector("dialog[open]");
  const escapeHtml = (v) => String(v).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  const truthy = (v) => v !== undefined && v !== "" && v !== "0" && v !== "false";
  /* One <template> serves every row of a table: __key__ is the row's data-key (escaped), and
     data-if / data-unless / data-enable-if keep or drop parts by the row's data. */
  function instantiate(template, row) {
    const data = row ? row.dataset : {};
    const holder = document.createElement("div");
    holder.innerHTML = template.innerHTML.replace(/__(\w+)__/g, (m, k) => (k in data ? escapeHtml(data[k]) : m));
    $$("[data-if]", holder).forEach((el) => { if (!truthy(data[el.dataset.if])) el.remove(); });
    $$("[data-unless]", holder).forEach((el) => { if (truthy(data[el.dataset.unless])) el.remove(); });
    $$("[data-enable-if]", holder).forEach((el) => { el.disabled = !truthy(data[el.dataset.enableIf]); });
    return holder.firstElementChild;
  }
  function showMenu(template, x, y, row) {
    closeMenu();
    const menu = instantiate(template, row);
    menu.dataset.for = row ? row.id : "";
    document.body.appendChild(menu);
    htmx.process(menu);
    const r = menu.getBoundingClientRect();
    menu.style.left = Math.min(x, window.innerWidth - r.width - 8) + "px";
    menu.style.top = Math.min(y, window.innerHeight - r.height - 8) + "px";
    openMenu = menu;
    menuOpener = document.activeElement;
    const first = $("button:not([disabled])", menu);
    if (first) first.focus();
  }
  document.addEventListener("contextmenu", (e) => {
    const row = e.target.closest("[data-menu]");
    if (!row) return;
    e.preventDefault();
    showMenu(document.getElementById(row.dataset.menu), e.clientX, e.clientY, row);
  });
  document.addEventListener("click", (e) => {
    const btn = e.target.closest("[data-menu-button]");
    if (btn) {
      e.stopPropagation();
      const row = btn.closest("[data-menu]");
      const r = btn.getBoundingClientRect();
      showMenu(document.getElementById(row.dataset.menu), r.left - 150, r.bottom + 4, row);
      return;
    }
    if (openMenu && !e.target.closest(".menu")) closeMenu();
    if (e.target.closest(".menu button")) setTimeout(closeMenu, 0);
  }, true);
  document.addEventListener("keydown", (e) => {
    if (e.key !== "Escape" || !openMenu) return;
    closeMenu();
    if (menuOpener && menuOpener.isConnected) menuOpener.focus();
  });

  /* --- dialogs opened from menus: <button data-dialog="id" data-value="..."> -------------------- */
  document.addEventListener("click", (e) => {
    const btn = e.target.closest("[data-dialog]");
    if (!btn) return;
    const dlg = document.getElementById(btn.dataset.dialog);
    const form = $("form", dlg);
    if (btn.dataset.action) form.setAttribute("hx-post", btn.dataset.action);
    htmx.process(form);
    $$("[data-fill]", dlg).forEach((input) => {
      const value = btn.dataset[input.dataset.fill] || "";
      input.value = input.dataset.fill === "ids" && !value ? Array.from(selected).join(",") : value;
    });
    $$(".field-error", dlg).forEach((el) => (el.textContent = ""));
    dlg.showModal();
    const first = $("input:not([type=hidden]), select", dlg);
    if (first) { first.focus(); if (first.select) first.select(); }
  });
  document.addEventListener("click", (e) => {
    const close = e.target.closest("[data-close]");
    if (close) close.closest("dialog").close();
  });
  document.body.addEventListener("closeDialogs", () => $$("dialog[open]").forEach((d) => d.close()));

  /* --- copy to clipboard ---------------------------------------------------------------------- */
  document.addEventListener("click", (e) => {
    const btn = e.target.closest("[data-copy]");
    if (!btn) return;
    e.stopPropagation();
    const done = () => toast("Copied " + btn.dataset.copy);
    if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(btn.dataset.copy).then(done);
    else {
      const ta = document.createElement("textarea");
      ta.value = btn.dataset.copy; document.body.appendChild(ta); ta.select();
      document.execCommand("copy"); ta.remove(); done();
    }
  }, true);

  /* --- sub-tabs inside panels (client side, remembered across refreshes) ----------------------- */
  const subtab = {};
  function applySubtabs(root) {
    $$("[data-tabs]", root).forEach((bar) => {
      const name = subtab[bar.dataset.tabs] || $("button", bar).dataset.tab;
      $$("button", bar).forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
      $$("[data-tab-body]", bar.parentElement).forEach((body) => { body.hidden = body.dataset.tabBody !== name; });
    });
  }
  document.addEventListener("click", (e) => {
    const b = e.target.closest("[data-tabs] button[data-tab]");
    if (!b) return;
    subtab[b.parentElement.dataset.tabs] = b.dataset.tab;
    applySubtabs(b.parentElement.parentElement);
  });

  /* --- URL state: ?worker=…&queue=…&span=…&metric=… -------------------------------------------- */
  function state() { return new URLSearchParams(location.search); }
  function setState(changes) {
    const s = state();
    Object.entries(changes).forEach(([k, v]) => (v ? s.set(k, v) : s.delete(k)));
    history.replaceState(null, "", location.pathname + (s.toString() ? "?" + s : ""));
  }
  window.musterState = { get: (k) => state().get(k), set: setState };

  /* --- buttons that set a view state and fire an event; forms whose fields are the view state ----
     Declared in data attributes, not hx-on: the Content-Security-Policy refuses inline handlers. */
  document.addEventListener("click", (e) => {
    const btn = e.target.closest("[data-fire]");
    if (!btn) return;
    if (btn.dataset.stateKey) setState({ [btn.dataset.stateKey]: btn.dataset.stateValue || "" });
    htmx.trigger(document.body, btn.dataset.fire);
  });
  document.body.addEventListener("htmx:beforeRequest", (e) => {
    const form = e.detail.elt;
    if (form instanceof HTMLFormElement && form.hasAttribute("data-state-form")) setState(Object.fromEntries(new FormData(form)));
  });

  /* --- graphs ----------------------------------------------------------------------------------- */
  function css(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }
  function draw(el, data) {
    el._data = data;
    if (data.has_gpus !== undefined) $$("[data-needs-gpus]").forEach((c) => { c.hidden = !data.has_gpus; });
    if (!data.traces.length || data.traces.every((t) => !t.x.length)) {
      Plotly.purge(el);
      el.innerHTML = '<div class="nodata"></div>';
      el.firstChild.textContent = data.empty_text || "No data for this span yet";
      el.dataset.points = "0";
      return;
    }
    if (el.querySelector(".nodata")) el.innerHTML = "";
    const fg = css("--fg"), grid = css("--line"), muted = css("--muted");
    const tz = zone(), local = (iso) => inZone(iso, tz).text;
    const abbr = inZone(data.x_range ? data.x_range[1] : new Date().toISOString(), tz).abbr;
    const layout = {
      margin: { l: 60, r: 16, t: 8, b: 36 }, paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
      font: { color: fg, size: 11 }, hovermode: "x unified", showlegend: true,
      legend: { orientation: "h", y: 1.12, x: 0, font: { color: muted } },
      xaxis: { type: "date", gridcolor: grid, linecolor: grid, zeroline: false, automargin: true,
               range: data.x_range && data.x_range.map(local), hoverformat: "%Y-%m-%d %H:%M:%S " + abbr,
               title: { text: tz, font: { size: 10, color: muted }, standoff: 4 } },
      yaxis: { title: { text: data.y_title, standoff: 8 }, gridcolor: grid, linecolor: grid, zeroline: false, rangemode: "tozero",
               automargin: true, ticksuffix: data.y_suffix || "", tickformat: data.y_format || "" },
    };
    if (data.integer) {  // counts: whole-number ticks, not 0.2, 0.4 … for a fleet of one
      const top = Math.max(0, ...data.traces.flatMap((t) => t.y.filter((v) => v !== null)));
      layout.yaxis.tickformat = ",d";
      if (top < 5) layout.yaxis.dtick = 1;
    }
    const traces = data.traces.map((t) => ({
      type: "scatter", mode: t.x.length > 60 ? "lines" : "lines+markers", name: t.name, x: t.x.map(local), y: t.y,
      cliponaxis: false,  // the newest point sits on the span's right edge: draw it whole
      line: { width: 1.8, shape: data.shape || "linear" }, marker: { size: 4 },
      hovertemplate: "%{y:" + (data.hover_format || ".3~s") + "}" + (data.y_suffix || "") + "<extra>" + t.name + "</extra>",
    }));
    Plotly.react(el, traces, layout, { displayModeBar: false, responsive: true });
    el.dataset.points = String(traces.reduce((n, t) => n + t.x.length, 0));
  }
  async function load(el) {
    const url = el.dataset.src;
    if (!url) return;
    el.dataset.loading = "1";
    try {
      const r = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (!r.ok) throw new Error(String(r.status));
      const data = await r.json();
      if (el.dataset.src === url) { draw(el, data); el.dataset.loaded = url; }
    } catch (err) {
      el.innerHTML = '<div class="nodata">Could not load the graph (' + err.message + ")</div>";
    } finally { delete el.dataset.loading; }
  }
  window.musterGraph = function (el, src) { el.dataset.src = src; load(el); };
  function loadAll(root) { $$(".graph[data-src]", root).forEach((el) => { if (el.dataset.loaded !== el.dataset.src) load(el); }); }
  setInterval(() => { if (!document.hidden) $$(".graph[data-src]").forEach(load); }, 15000);

  /* --- selection of many rows (checkboxes) kept across refreshes -------------------------------- */
  const selected = new Set();
  window.musterSelection = selected;
  function applySelection(root) {
    $$("input[data-select]", root).forEach((cb) => { cb.checked = selected.has(cb.value); });
    $$("[data-bulkbar]").forEach((bar) => {
      bar.hidden = selected.size === 0;
      const n = $("[data-count]", bar); if (n) n.textContent = String(selected.size);
      $$("input[name=experiments]", bar).forEach((i) => i.remove());
      selected.forEach((id) => {
        const i = document.createElement("input"); i.type = "hidden"; i.name = "experiments"; i.value = id;
        bar.appendChild(i);
      });
    });
  }
  document.addEventListener("change", (e) => {
    const cb = e.target.closest("input[data-select]");
    if (cb) { cb.checked ? selected.add(cb.value) : selected.delete(cb.value); applySelection(); return; }
    const all = e.target.closest("input[data-select-all]");
    if (all) {
      $$("input[data-select]").forEach((c) => { all.checked ? selected.add(c.value) : selected.delete(c.value); });
      applySelection();
    }
  });
  document.body.addEventListener("clearSelection", () => { selected.clear(); applySelection(); });

  /* --- drag to reorder (SortableJS) -------------------------------------------------------------
     The drop does not keep the order SortableJS drew: the row goes back, marked as moving, until
     the server answers with the queue as it now is (or refuses, with a toast). So what the page
     shows is what a reload shows; a reload before the answer shows the row still moving back. */
  function wireSortable(root) {
    $$("[data-sortable]", root).forEach((tbody) => {
      if (tbody._sortable) return;
      tbody._sortable = Sortable.create(tbody, {
        handle: ".drag-handle", animation: 120, ghostClass: "sortable-ghost", forceFallback: true, fallbackOnBody: true,
        onStart: () => { tbody.dataset.dragging = "1"; },
        onEnd: (ev) => {
          delete tbody.dataset.dragging;
          if (ev.oldIndex === ev.newIndex) return;
          const rows = tbody.children;
          tbody.insertBefore(ev.item, rows[ev.oldIndex + (ev.newIndex <= ev.oldIndex ? 1 : 0)] || null);
          ev.item.dataset.moving = "1";
          ev.item.setAttribute("aria-busy", "true");
          htmx.ajax("POST", tbody.dataset.sortable, {
            source: ev.item, target: tbody.dataset.target, swap: "outerHTML",
            values: { experiments: ev.item.dataset.id, to: "position", value: String(ev.newIndex) },
          }).finally(() => { if (ev.item.isConnected) { delete ev.item.dataset.moving; ev.item.removeAttribute("aria-busy"); } });
        },
      });
    });
  }
  // A press on a drag handle counts as dragging at once: a live refresh landing before SortableJS
  // starts its drag would replace the rows under the pointer and lose the move.
  let pressing = false;
  document.addEventListener("pointerdown", (e) => { if (e.target.closest(".drag-handle")) pressing = true; }, true);
  document.addEventListener("pointerup", () => { setTimeout(() => { pressing = false; }, 300); }, true);
  const moving = () => !!document.querySelector("[data-dragging], [data-moving]");
  window.musterBusy = () => pressing || window.musterMenuOpen() || moving();
  document.body.addEventListener("htmx:beforeSwap", (e) => {
    // A refresh that was already on its way when the drag began must not land in the middle of it.
    const target = e.detail.target;
    // Nor one that would take away a moving row before the server's answer to its move lands.
    if ((pressing || moving()) && target && target.querySelector("[data-sortable]")) {
      const verb = (e.detail.requestConfig && e.detail.requestConfig.verb) || "get";
      if (verb.toLowerCase() === "get") e.detail.shouldSwap = false;
    }
  });

  /* --- custom actions ---------------------------------------------------------------------------- */
  document.addEventListener("click", async (e) => {
    const btn = e.target.closest("[data-custom-action]");
    if (!btn) return;
    const menu = btn.closest(".menu");
    const row = menu && menu.dataset.for ? document.getElementById(menu.dataset.for) : btn.closest("[data-object-id]");
    const objectId = (row && row.dataset.objectId) || btn.dataset.objectId;
    const run = async () => {
      const body = new URLSearchParams({ object: objectId });
      const r = await fetch(btn.dataset.customAction, { method: "POST", body, credentials: "same-origin",
        headers: { "X-CSRFToken": csrf(), Accept: "application/json" } });
      const answer = await r.json();
      if (!r.ok) return toast(answer.error ? answer.error.message : "The action failed", "error");
      if (answer.mode === "server") {
        return toast(answer.ok ? btn.dataset.name + ": done (" + answer.status + ")" : btn.dataset.name + " failed: " + answer.detail,
                     answer.ok ? "ok" : "error");
      }
      const q = answer.request;
      try {
        const res = await fetch(q.url, { method: q.method, headers: q.headers, body: q.method === "GET" ? undefined : q.body, mode: "cors" });
        toast(btn.dataset.name + (res.ok ? ": done (" + res.status + ")" : " failed (" + res.status + ")"), res.ok ? "ok" : "error");
      } catch (err) { toast(btn.dataset.name + " failed: " + err.message, "error"); }
    };
    if (btn.dataset.confirm) ask(btn.dataset.confirm, run); else run();
  });

  /* --- graphs follow the URL state: data-graph="base?fixed=1" data-graph-keys="span,queue" ---------- */
  function graphSrc(el) {
    const url = new URL(el.dataset.graph, location.origin);
    (el.dataset.graphKeys || "").split(",").filter(Boolean).forEach((k) => {
      const v = state().get(k); if (v) url.searchParams.set(k, v);
    });
    return url.pathname + url.search;
  }
  function repointGraphs(root) {
    $$(".graph[data-graph]", root).forEach((el) => {
      const src = graphSrc(el);
      if (el.dataset.src !== src) { el.dataset.src = src; load(el); }
    });
    $$("[data-show-when]").forEach((el) => { el.hidden = !state().get(el.dataset.showWhen); });
    $$("[data-graph-title]", root).forEach((el) => {
      const sel = state().get(el.dataset.graphTitleKey);
      el.textContent = sel ? el.dataset.graphTitle.replace("%s", el.dataset.selectedName || sel) : el.dataset.graphTitleAll;
    });
  }
  window.musterRepoint = repointGraphs;
  document.addEventListener("change", (e) => {
    const span = e.target.closest("select[data-span]");
    if (span) { setState({ span: span.value }); repointGraphs(); return; }
    const param = e.target.closest("[data-state]");
    if (param) {
      setState({ [param.dataset.state]: param.type === "checkbox" ? (param.checked ? "1" : "") : param.value });
      repointGraphs();
    }
  });

  /* --- clicking a row selects it: URL state, highlight, panel, graphs --------------------------- */
  document.addEventListener("click", (e) => {
    const row = e.target.closest("tr[data-select-row]");
    if (!row || e.target.closest("a, button, input, label, .drag-handle")) return;
    const key = row.dataset.selectRow;
    const same = state().get(key) === row.dataset.objectId;
    setState({ [key]: same ? "" : row.dataset.objectId });
    markSelected(); repointGraphs();
    const panel = $("#panel");
    if (same) { panel.innerHTML = ""; panel.removeAttribute("hx-get"); $(".split").classList.remove("with-panel"); return; }
    htmx.ajax("GET", row.dataset.panel, { target: "#panel", swap: "outerHTML" });
  });
  function markSelected(root) {
    $$("tr[data-select-row]", root).forEach((tr) => {
      tr.classList.toggle("selected", state().get(tr.dataset.selectRow) === tr.dataset.objectId);
    });
    const split = $(".split");
    const panel = $("#panel");
    if (split && panel) split.classList.toggle("with-panel", panel.children.length > 0);
    $$("[data-graph-title]").forEach((el) => {
      const tr = $("tr.selected[data-name]");
      el.dataset.selectedName = tr ? tr.dataset.name : "";
    });
  }
  document.body.addEventListener("closePanel", () => {
    const panel = $("#panel"); if (!panel) return;
    ["queue", "worker"].forEach((k) => setState({ [k]: "" }));
    panel.innerHTML = ""; panel.removeAttribute("hx-get"); markSelected(); repointGraphs();
  });

  /* --- keyboard: a row opens its panel with Enter or Space, its menu with the context-menu key or
     Shift+F10; a menu moves with the arrow keys; focus survives the live refresh ---------------- */
  document.addEventListener("keydown", (e) => {
    const row = e.target.closest && e.target.closest("tr[data-select-row], tr[data-menu]");
    if (row && e.target === row) {
      if ((e.key === "Enter" || e.key === " ") && row.matches("[data-select-row]")) { e.preventDefault(); row.click(); return; }
      if ((e.key === "ContextMenu" || (e.key === "F10" && e.shiftKey)) && row.dataset.menu) {
        e.preventDefault();
        const r = row.getBoundingClientRect();
        showMenu(document.getElementById(row.dataset.menu), r.left + 24, r.bottom, row);
        return;
      }
    }
    if (openMenu && (e.key === "ArrowDown" || e.key === "ArrowUp")) {
      e.preventDefault();
      const items = $$("button:not([disabled])", openMenu);
      const at = items.indexOf(document.activeElement);
      const next = e.key === "ArrowDown" ? (at + 1) % items.length : (at - 1 + items.length) % items.length;
      if (items[next]) items[next].focus();
    }
  });
  let focusedId = null;
  document.body.addEventListener("htmx:beforeSwap", () => {
    const el = document.activeElement;
    focusedId = el && el.id && el !== document.body ? el.id : null;
  });
  document.body.addEventListener("htmx:afterSettle", () => {
    if (!focusedId || (document.activeElement && document.activeElement !== document.body)) return;
    const el = document.getElementById(focusedId);
    if (el) el.focus({ preventScroll: true });
  });

  /* --- sortable column headers: the table re-renders in place --------------------------------------- */
  document.addEventListener("click", (e) => {
    const a = e.target.closest("th a[href^='?sort=']");
    if (!a) return;
    e.preventDefault();
    setState({ sort: new URLSearchParams(a.getAttribute("href").slice(1)).get("sort"), offset: "" });
    const table = a.closest("table[hx-get]");
    htmx.ajax("GET", table.getAttribute("hx-get"), { source: table, target: table, swap: "outerHTML" });
  });

  /* --- scroll positions survive live refreshes ---------------------------------------------------- */
  const scrolls = {};
  document.body.addEventListener("htmx:beforeSwap", (e) => {
    $$("[data-keep-scroll]").forEach((el) => { scrolls[el.id] = el.scrollTop; });
  });
  document.body.addEventListener("htmx:afterSwap", () => {
    $$("[data-keep-scroll]").forEach((el) => { if (scrolls[el.id] !== undefined) el.scrollTop = scrolls[el.id]; });
  });

  /* --- an experiment's live log (polled while the page is visible) -------------------------------
     One span a stored chunk. A capped log keeps its head and its last part: each answer names
     the window (selectors.LogWindow), and the copy here drops what the server dropped, takes
     the trimmed ends and shows the one marker, so it always reads as the stored log does. */
  function tailLog(log) {
    const follow = $("#log-follow"), status = $("#log-state");
    let after = "", attempt = null, busy = false;
    const span = (seq) => log.querySelector(`span[data-seq="${seq}"]`);
    function keepWindow(w) {
      for (const el of [...log.querySelectorAll("span[data-seq]")]) {
        const seq = Number(el.dataset.seq);
        if ((w.head_end === null || seq > w.head_end) && (w.kept_from === null || seq < w.kept_from)) el.remove();
      }
      const head = w.head_end !== null ? span(w.head_end) : null, kept = w.kept_from !== null ? span(w.kept_from) : null;
      if (head && head.textContent !== w.head_text) head.textContent = w.head_text;
      if (kept && kept.textContent !== w.kept_text) kept.textContent = w.kept_text;
      let marker = log.querySelector(".log-marker");
      if (!marker) { marker = document.createElement("span"); marker.className = "log-marker"; }
      marker.textContent = w.marker;
      if (head) head.after(marker); else log.prepend(marker);
    }
    async function tail() {
      if (busy || document.hidden) return;
      busy = true;
      try {
        const url = log.dataset.src + (after !== "" ? "?after=" + after : "");
        const r = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
        if (r.ok) {
          const page = await r.json();
          if (page.attempt !== attempt) { log.textContent = ""; attempt = page.attempt; after = ""; }
          for (const c of page.chunks) {
            if (span(c.seq)) continue;
            const el = document.createElement("span"); el.dataset.seq = c.seq; el.textContent = c.text; log.append(el);
          }
          if (page.window) keepWindow(page.window);
          if (follow.checked && (page.chunks.length || page.window)) log.scrollTop = log.scrollHeight;
          if (page.after !== null && page.after !== undefined) after = String(page.after);
          const live = page.status === "in_progress";
          log.dataset.empty = log.textContent ? "" : (page.attempt === null ? "Not started yet: no output." : live ? "No output yet." : "This attempt wrote no output.");
          status.textContent = live ? "live" : "";
        }
      } finally { busy = false; }
    }
    tail(); setInterval(tail, 1500);
  }
  document.addEventListener("DOMContentLoaded", () => { const log = $("#log[data-src]"); if (log) tailLog(log); });

  /* --- a machine's console output (autoscalers), in a dialog --------------------------------------- */
  document.addEventListener("click", async (e) => {
    const btn = e.target.closest("[data-console-url]");
    if (!btn) return;
    const dlg = $("#console-dialog"), out = $("#console-output");
    out.textContent = "reading …";
    dlg.showModal();
    try {
      const r = await fetch(btn.dataset.consoleUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      const body = await r.json();
      out.textContent = r.ok ? (body.output || "(no output yet)") : (body.error ? body.error.message : "HTTP " + r.status);
    } catch (err) { out.textContent = "Could not read it: " + err.message; }
  });

  /* --- the autoscaler form: the provider's sections, and rows added from a template ------------------ */
  document.addEventListener("change", (e) => {
    const sel = e.target.closest("select[data-provider-switch]");
    if (!sel) return;
    $$("[data-provider-section]").forEach((el) => { el.hidden = el.dataset.providerSection !== sel.value; });
  });
  document.addEventListener("click", (e) => {
    const btn = e.target.closest("[data-add-row]");
    if (!btn) return;
    const kind = btn.dataset.addRow, count = $(`input[data-row-count="${kind}"]`);
    const template = document.getElementById(`${kind}-row-template`);
    const body = $(`#${kind}-rows tbody`);
    const holder = document.createElement("tbody");
    holder.innerHTML = template.innerHTML.replaceAll("__i__", count.value);
    const row = holder.firstElementChild;
    body.appendChild(row);
    count.value = String(Number(count.value) + 1);
    const first = $("input", row); if (first) first.focus();
  });

  /* --- after every swap -------------------------------------------------------------------------- */
  function wire(root) { applyTimes(root); markSelected(root); applySubtabs(root); applySelection(root); wireSortable(root); repointGraphs(root); loadAll(root); }
  document.body.addEventListener("htmx:afterSettle", (e) => wire(e.detail.elt));
  document.addEventListener("DOMContentLoaded", () => wire(document));
})();
