// nonstop dashboard. No libraries, no external assets, nothing inline (the page is served
// with a strict CSP). Every value from the server is written with textContent.
"use strict";

(function () {
  const API = "/_nonstop/api/";
  const POLL_MS = 5000;
  const RECONNECT_MS = 10000;
  const MAX_ROWS = 200;
  const CHART_ROWS = 60;
  const SVG = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);

  const view = {
    status: null,
    offset: 0, // server clock minus ours, in seconds
    rows: [], // newest first
    keys: new Set(),
    es: null,
    pollTimer: 0,
    statusTimer: 0,
    hasUsers: false,
  };

  // --- small helpers ----------------------------------------------------------------------

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const k in attrs) e.setAttribute(k, String(attrs[k]));
    return e;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function num(v) {
    return typeof v === "number" && isFinite(v) ? v : null;
  }

  function serverNow() {
    return Date.now() / 1000 + view.offset;
  }

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  function clock(epoch, withSeconds) {
    const d = new Date(epoch * 1000);
    const hm = pad(d.getHours()) + ":" + pad(d.getMinutes());
    return withSeconds ? hm + ":" + pad(d.getSeconds()) : hm;
  }

  function whenLabel(epoch) {
    const d = new Date(epoch * 1000);
    const ahead = epoch - serverNow();
    if (ahead >= 20 * 3600) {
      return d.toLocaleDateString(undefined, { weekday: "short", month: "short", day: "numeric" }) + " " + clock(epoch);
    }
    return clock(epoch);
  }

  function duration(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    const sec = s % 60;
    if (d > 0) return d + "d " + h + "h " + pad(m) + "m";
    if (h > 0) return h + ":" + pad(m) + ":" + pad(sec);
    return m + ":" + pad(sec);
  }

  function ms(v) {
    const n = num(v);
    if (n === null) return "—";
    return n >= 1000 ? (n / 1000).toFixed(n >= 10000 ? 0 : 1) + " s" : Math.round(n) + " ms";
  }

  function count(v) {
    const n = num(v) || 0;
    if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
    if (n >= 1e4) return Math.round(n / 1e3) + "k";
    if (n >= 1e3) return (n / 1e3).toFixed(1) + "k";
    return String(Math.round(n));
  }

  function side(row) {
    if (!row.backend) return "none";
    return row.backend === "cloud" ? "cloud" : "local";
  }

  // --- cloud state --------------------------------------------------------------------------

  function renderCloud(st) {
    const cloud = st.cloud || {};
    const state = cloud.state || "unknown";
    const box = $("cloud-state");
    box.dataset.state = state;
    let text = "Cloud state unknown";
    if (state === "serving") text = "Cloud serving";
    else if (state === "out") text = "On local — cloud out";
    else if (state === "probing") text = "Probing the cloud";
    box.textContent = text;
    let why = "";
    if (state !== "serving") {
      why = cloud.reason ? String(cloud.reason).replace(/_/g, " ") : "";
      if (cloud.detail) why += (why ? ": " : "") + cloud.detail;
      if (state === "probing") why = "One request is checking whether the cloud is back." + (why ? " Was: " + why : "");
    } else if (num(cloud.since)) {
      why = "since " + clock(cloud.since);
    }
    $("cloud-reason").textContent = why;
    renderAccounts(st);
    document.title = (state === "serving" ? "☁ cloud" : state === "out" ? "⌂ local" : "… probing") + " · nonstop";
    tick();
  }

  function renderAccounts(st) {
    // A shared gateway: each account's quota is its own (labels, never credentials).
    const list = $("accounts");
    clear(list);
    const accounts = Array.isArray(st.accounts) ? st.accounts : [];
    list.hidden = accounts.length < 2;
    if (list.hidden) return;
    for (const a of accounts) {
      const li = el("li");
      li.dataset.state = String(a.state || "");
      li.appendChild(el("span", "name", a.name || a.account));
      let text = a.state === "out" && num(a.until) ? "out until " + whenLabel(a.until) : String(a.state || "");
      const five = num((a.utilization || {})["5h"]);
      if (five !== null) text += " · 5h " + Math.round(five * 100) + "%";
      li.appendChild(el("span", "muted", " " + text));
      list.appendChild(li);
    }
  }

  function tick() {
    const st = view.status;
    const cd = $("countdown");
    const at = $("countdown-at");
    const cloud = (st && st.cloud) || {};
    const until = num(cloud.until);
    if (cloud.state === "out" && until !== null) {
      const left = until - serverNow();
      if (left > 0) {
        cd.textContent = duration(left);
        cd.dataset.remaining = String(Math.ceil(left));
        at.textContent = "cloud back at " + whenLabel(until);
        at.title = new Date(until * 1000).toISOString();
      } else {
        cd.textContent = "due";
        cd.dataset.remaining = "0";
        at.textContent = "the next request checks the cloud";
        at.title = "";
      }
      return;
    }
    cd.textContent = "";
    delete cd.dataset.remaining;
    at.textContent = cloud.state === "probing" ? "checking now" : "";
    at.title = "";
  }

  // --- quota -------------------------------------------------------------------------------

  function renderMeter(key, util) {
    const bar = $("util-" + key);
    const v = num(util[key]);
    const fill = bar.querySelector(".fill");
    if (v === null) {
      bar.dataset.level = "none";
      bar.removeAttribute("aria-valuenow");
      delete bar.dataset.value;
      fill.style.width = "0%";
      $("util-" + key + "-text").textContent = "—";
    } else {
      const pct = Math.round(v * 100);
      bar.dataset.level = v >= 1 ? "full" : v >= 0.8 ? "high" : "ok";
      bar.dataset.value = String(v);
      bar.setAttribute("aria-valuenow", String(pct));
      fill.style.width = Math.min(100, Math.max(0, v * 100)) + "%";
      $("util-" + key + "-text").textContent = pct + "%";
    }
    const reset = num(util[key + "_reset"]);
    $("util-" + key + "-reset").textContent = reset !== null ? "resets " + whenLabel(reset) : "";
  }

  function renderQuota(st) {
    const u = st.utilization || {};
    renderMeter("5h", u);
    renderMeter("7d", u);
    const updated = num(u.updated);
    $("util-updated").textContent = updated
      ? "as reported by the cloud at " + clock(updated)
      : "not reported yet: the cloud sends it with each reply";
    renderForecast(st.forecast || {});
  }

  function renderForecast(f) {
    const box = $("forecast");
    clear(box);
    box.dataset.conserving = f.conserving ? "yes" : "no";
    const windows = Array.isArray(f.windows) ? f.windows : [];
    for (const w of windows) {
      const line = el("div", "fc-line");
      line.dataset.window = String(w.window || "");
      const pct = num(w.utilization);
      let text = String(w.window || "?") + " " + (pct !== null ? Math.round(pct * 100) + "%" : "—");
      if (num(w.runs_out)) text += " · out ~" + whenLabel(w.runs_out);
      else text += " · not forecast to run out";
      if (num(w.resets)) text += ", resets " + whenLabel(w.resets);
      if (w.method) text += " (" + w.method + ")";
      line.textContent = text;
      box.appendChild(line);
    }
    if (f.conserving) {
      box.appendChild(el("div", "fc-conserve", "Conserving: background work and subagents go to local models first, so the main conversation keeps the cloud until the reset."));
    }
  }

  // --- today and backends ---------------------------------------------------------------

  function renderToday(st) {
    const t = st.today || {};
    for (const k of ["cloud", "local"]) {
      const v = t[k];
      $("today-" + k).textContent = v
        ? count(v.requests) + (v.requests === 1 ? " request · " : " requests · ") +
          count(v.input_tokens) + " in / " + count(v.output_tokens) + " out"
        : "—";
    }
  }

  function renderBackends(st) {
    const list = $("backends");
    clear(list);
    const backends = Array.isArray(st.local) ? st.local : [];
    if (!backends.length) {
      list.appendChild(el("li", "muted", "None configured or found — run `nonstop doctor`."));
      return;
    }
    for (const b of backends) {
      const li = el("li");
      li.dataset.backend = String(b.name || "");
      li.dataset.health = b.healthy === true ? "up" : b.healthy === false ? "down" : "unknown";
      const name = el("div");
      name.appendChild(el("span", "name", b.name));
      name.appendChild(el("span", "tag", b.healthy === true ? "up" : b.healthy === false ? "down" : "not checked yet"));
      if (b.embedded) name.appendChild(el("span", "tag", "embedded"));
      li.appendChild(name);
      if (b.demoted) name.appendChild(el("span", "tag warn", "demoted"));
      if (b.warmth) name.appendChild(el("span", "tag", b.warmth));
      const meta = [];
      if (b.model) meta.push(b.model);
      if (b.api) meta.push(b.api + " API");
      const window = num(b.window) || num(b.context_window);
      if (window) {
        let w = Math.round(window / 1024) + "k context";
        if (b.window_assumed) w += " (assumed: the server has not said it yet)";
        else if (num(b.context_window) && num(b.window) && b.window < b.context_window) w += " (configured " + Math.round(b.context_window / 1024) + "k)";
        meta.push(w);
      }
      if (b.url) meta.push(b.url);
      li.appendChild(el("div", "meta", meta.join(" · ")));
      const load = [];
      load.push((num(b.inflight) || 0) + " in flight" + (num(b.free_slots) !== null ? ", " + b.free_slots + " slot" + (b.free_slots === 1 ? "" : "s") + " free" : ""));
      if (num(b.prompt_tps)) load.push(Math.round(b.prompt_tps) + " prompt tok/s");
      if (num(b.gen_tps)) load.push(Math.round(b.gen_tps) + " output tok/s");
      li.appendChild(el("div", "meta load", load.join(" · ")));
      // The last eval score (absent while the gateway does not report it).
      const ev = b.eval;
      if (ev && typeof ev === "object" && ev.text) {
        const verdict = el("div", "meta eval" + (!ev.evaluated || ev.stale ? " stale" : ""), (ev.evaluated ? "eval: " : "") + ev.text);
        verdict.title = String(ev.line || "");
        li.appendChild(verdict);
      }
      if (b.demoted && b.demoted_why) li.appendChild(el("div", "err", b.demoted_why));
      if (b.healthy === false && b.error) li.appendChild(el("div", "err", b.error));
      list.appendChild(li);
    }
  }

  function renderShadow(st) {
    const box = $("shadow");
    clear(box);
    const sh = st.shadow;
    box.hidden = !sh || typeof sh !== "object";
    if (box.hidden) return;
    box.appendChild(el("div", "muted", "Shadow comparison: " + Math.round((num(sh.sample) || 0) * 100) +
      "% of cloud answers replayed on the local model"));
    const by = sh.by_class || {};
    const names = Object.keys(by).sort();
    if (!names.length) box.appendChild(el("div", "muted", "no comparisons yet"));
    for (const cls of names) {
      const c = by[cls];
      const line = el("div", "sh-line", cls + ": " + Math.round((num(c.rate) || 0) * 100) + "% agree (" + c.n + " compared)");
      line.dataset.workload = cls;
      box.appendChild(line);
    }
  }

  function renderStatus(st) {
    if (!st || typeof st !== "object") return;
    view.status = st;
    if (num(st.now) !== null) view.offset = st.now - Date.now() / 1000;
    $("version").textContent = st.version ? "v" + st.version : "";
    renderCloud(st);
    renderQuota(st);
    renderToday(st);
    renderBackends(st);
    renderShadow(st);
  }

  function renderDecisions() {
    const list = $("decisions");
    clear(list);
    const rows = view.rows.filter((r) => r.route && typeof r.route === "object").slice(0, 12);
    $("decisions-empty").hidden = rows.length > 0;
    for (const r of rows) {
      const li = el("li");
      li.dataset.backend = String(r.backend || "");
      const head = el("div", "d-head");
      head.appendChild(el("time", "", num(r.ts) ? clock(r.ts, true) : "—"));
      head.appendChild(el("span", "tag", String(r.route.class || r.workload || "?")));
      head.appendChild(el("span", "pill " + side(r), r.backend || "none"));
      li.appendChild(head);
      const steps = Array.isArray(r.route.steps) ? r.route.steps : [];
      const chosen = steps.find((s) => s.target === r.backend) || steps[0];
      if (chosen) li.appendChild(el("div", "d-why", String(chosen.rule) + ": " + String(chosen.reason)));
      const skipped = Array.isArray(r.route.skipped) ? r.route.skipped : [];
      for (const s of skipped) {
        li.appendChild(el("div", "d-skip muted", "skipped " + String(s.target) + " — " + String(s.rule) + ": " + String(s.reason)));
      }
      list.appendChild(li);
    }
  }

  function addSwitch(ev) {
    const list = $("switches");
    const li = el("li");
    const t = el("time", "", clock(num(ev.ts) || serverNow(), true));
    li.appendChild(t);
    li.appendChild(document.createTextNode(String(ev.line || "switched to " + ev.to)));
    list.insertBefore(li, list.firstChild);
    while (list.children.length > 5) list.removeChild(list.lastChild);
  }

  // --- requests -----------------------------------------------------------------------------

  function rowKey(r) {
    // Rows from the log carry an id, rows from the live feed a sequence number; the
    // start time and path are common to both.
    return [r.ts, r.path, r.model, r.session_id].join("|");
  }

  function rowElement(r, fresh) {
    const tr = el("tr", fresh ? "fresh" : "");
    tr.dataset.backend = String(r.backend || "");
    tr.dataset.outcome = String(r.outcome || "");
    tr.appendChild(el("td", "time", num(r.ts) ? clock(r.ts, true) : "—"));
    const model = el("td", "model", r.model || "—");
    model.title = String(r.model || "");
    tr.appendChild(model);
    const user = el("td", "col-user", r.user || "");
    user.hidden = !view.hasUsers;
    tr.appendChild(user);
    const by = el("td");
    by.appendChild(el("span", "pill " + side(r), r.backend || "none"));
    tr.appendChild(by);
    const why = el("td", "why", r.reason || "");
    if (r.error) why.title = String(r.error);
    tr.appendChild(why);
    const result = el("td", "res-" + String(r.outcome || "none").replace(/[^a-z_]/g, ""),
      (r.outcome || "?") + (r.status ? " " + r.status : ""));
    if (r.error) result.title = String(r.error);
    tr.appendChild(result);
    tr.appendChild(el("td", "num", ms(r.ttfb_ms)));
    tr.appendChild(el("td", "num", ms(r.total_ms)));
    tr.appendChild(el("td", "num", count(r.input_tokens) + " / " + count(r.output_tokens)));
    return tr;
  }

  function addRows(rows, fresh) {
    const added = new Set();
    for (const r of rows) {
      if (!r || typeof r !== "object") continue;
      const key = rowKey(r);
      if (view.keys.has(key)) continue;
      view.keys.add(key);
      view.rows.push(r);
      added.add(key);
    }
    if (!added.size) return;
    view.hasUsers = view.hasUsers || view.rows.some((r) => r.user);
    for (const th of document.querySelectorAll("th.col-user")) th.hidden = !view.hasUsers;
    view.rows.sort((a, b) => (num(b.ts) || 0) - (num(a.ts) || 0));
    while (view.rows.length > MAX_ROWS) view.keys.delete(rowKey(view.rows.pop()));
    // Rebuilt whole (at most MAX_ROWS rows): late rows from a backfill land in time order.
    const body = $("requests");
    const frag = document.createDocumentFragment();
    for (const r of view.rows) frag.appendChild(rowElement(r, fresh && added.has(rowKey(r))));
    clear(body);
    body.appendChild(frag);
    $("requests-empty").hidden = view.rows.length > 0;
    $("requests-count").textContent = "latest " + view.rows.length;
    drawCharts();
    renderDecisions();
  }

  // --- charts -------------------------------------------------------------------------------

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  function barChart(host, rows, series, fmt) {
    clear(host);
    const w = Math.max(200, host.clientWidth || 600);
    const h = Math.max(100, host.clientHeight || 150);
    const left = 44;
    const bottom = 14;
    const s = svg("svg", { viewBox: "0 0 " + w + " " + h, width: w, height: h });
    if (!rows.length) {
      const t = svg("text", { x: w / 2, y: h / 2, "text-anchor": "middle", class: "none" });
      t.textContent = "no requests yet";
      s.appendChild(t);
      host.appendChild(s);
      return;
    }
    let max = 0;
    for (const r of rows) {
      let total = 0;
      for (const part of series(r)) total += part.value;
      max = Math.max(max, total);
    }
    max = niceMax(max);
    const plotH = h - bottom - 6;
    for (const f of [0, 0.5, 1]) {
      const y = 6 + plotH * (1 - f);
      s.appendChild(svg("line", { x1: left, x2: w, y1: y, y2: y, class: "grid" }));
      const label = svg("text", { x: left - 6, y: y + 3, "text-anchor": "end", class: "axis" });
      label.textContent = fmt(max * f);
      s.appendChild(label);
    }
    const slot = (w - left) / Math.max(rows.length, 20);
    const bw = Math.max(2, slot * 0.7);
    rows.forEach((r, i) => {
      const x = left + i * slot + (slot - bw) / 2;
      let base = 6 + plotH;
      const g = svg("g", {});
      const title = svg("title", {});
      const parts = series(r);
      title.textContent = clock(num(r.ts) || 0, true) + " · " + (r.model || "") + " · " + (r.backend || "no backend") +
        " · " + parts.map((p) => p.label + " " + fmt(p.value)).join(", ");
      g.appendChild(title);
      for (const p of parts) {
        const bh = Math.max(p.value > 0 ? 1 : 0, (p.value / max) * plotH);
        base -= bh;
        g.appendChild(svg("rect", { x: x, y: base, width: bw, height: bh, class: p.cls }));
      }
      s.appendChild(g);
    });
    const first = svg("text", { x: left, y: h - 2, class: "axis" });
    first.textContent = clock(num(rows[0].ts) || 0);
    s.appendChild(first);
    const last = svg("text", { x: w, y: h - 2, "text-anchor": "end", class: "axis" });
    last.textContent = clock(num(rows[rows.length - 1].ts) || 0);
    s.appendChild(last);
    host.appendChild(s);
  }

  function drawCharts() {
    const rows = view.rows.slice(0, CHART_ROWS).reverse();
    barChart($("chart-latency"), rows.filter((r) => num(r.ttfb_ms) !== null), (r) => {
      const cls = !r.backend || r.outcome === "error" ? "b-fail" : r.backend === "cloud" ? "b-cloud" : "b-local";
      return [{ value: r.ttfb_ms, cls: cls, label: "first byte" }];
    }, ms);
    barChart($("chart-tokens"), rows.filter((r) => (r.input_tokens || 0) + (r.output_tokens || 0) > 0), (r) => [
      { value: num(r.input_tokens) || 0, cls: "b-in", label: "in" },
      { value: num(r.output_tokens) || 0, cls: "b-out", label: "out" },
    ], count);
  }

  // --- getting updates -------------------------------------------------------------------------

  function setMode(mode, text) {
    const c = $("conn");
    c.dataset.mode = mode;
    c.textContent = text;
  }

  async function getJSON(path) {
    const r = await fetch(API + path, { cache: "no-store", credentials: "same-origin" });
    if (!r.ok) {
      const err = new Error(path + ": HTTP " + r.status);
      err.status = r.status;
      throw err;
    }
    return r.json();
  }

  async function refreshStatus() {
    renderStatus(await getJSON("status"));
  }

  async function refreshRows(fresh) {
    const doc = await getJSON("requests?limit=50");
    if (doc && Array.isArray(doc.requests)) addRows(doc.requests, fresh);
  }

  function refreshSoon() {
    // Today's totals move with every request; one status read per burst is enough.
    if (view.statusTimer) return;
    view.statusTimer = setTimeout(() => {
      view.statusTimer = 0;
      refreshStatus().catch(() => {});
    }, 1500);
  }

  async function poll() {
    try {
      await Promise.all([refreshStatus(), refreshRows(true)]);
      if (!view.es || view.es.readyState !== EventSource.OPEN) setMode("polling", "polling every 5 s");
    } catch (e) {
      if (e && e.status === 401) setMode("offline", "access token needed: open /_nonstop/?token=…");
      else setMode("offline", "nonstop is not reachable — retrying");
    }
  }

  function startPolling() {
    if (view.pollTimer) return;
    poll();
    view.pollTimer = setInterval(poll, POLL_MS);
  }

  function stopPolling() {
    if (!view.pollTimer) return;
    clearInterval(view.pollTimer);
    view.pollTimer = 0;
  }

  function parse(e) {
    try {
      return JSON.parse(e.data);
    } catch (err) {
      return null;
    }
  }

  function connect() {
    if (typeof EventSource === "undefined") {
      startPolling();
      return;
    }
    const es = new EventSource(API + "events");
    view.es = es;
    es.addEventListener("open", () => {
      stopPolling();
      setMode("live", "live");
      // Rows logged while the stream was down are not replayed by it.
      refreshRows(true).catch(() => {});
    });
    es.addEventListener("status", (e) => renderStatus(parse(e)));
    es.addEventListener("request", (e) => {
      const ev = parse(e);
      if (ev && ev.row) {
        addRows([ev.row], true);
        refreshSoon();
      }
    });
    es.addEventListener("switch", (e) => {
      const ev = parse(e);
      if (ev) addSwitch(ev);
    });
    es.addEventListener("error", () => {
      startPolling();
      if (es.readyState === EventSource.CLOSED) {
        view.es = null;
        setTimeout(connect, RECONNECT_MS);
      }
    });
  }

  function start() {
    // A token given in the address has become a cookie; keep it out of history and screenshots.
    if (location.search.indexOf("token=") >= 0 && window.history && history.replaceState) {
      history.replaceState(null, "", location.pathname);
    }
    refreshStatus().catch(() => {});
    refreshRows(false).catch(() => {});
    drawCharts();
    connect();
    setInterval(tick, 500);
    // Backend health is checked in the background without an event: re-read it now and then.
    setInterval(() => refreshStatus().catch(() => {}), 30000);
    let resizeTimer = 0;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(drawCharts, 150);
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
