// OpenRFT dashboard: runs list, per-run charts and completions browser, run comparison, and the
// read-only local runs (run directories `openrft train` wrote under the server's --runs-dir).
// Plain JS + plotly.js (served by the server from the `plotly` Python package). Routes (hash):
//   #/                 runs list           #/run/<id>          one run (live while it runs)
//   #/compare/<a>/<b>  two runs on one chart
//   #/local/<name>[/<stage>]  one local run (a chained run's stage)
// The API key is asked once and kept in localStorage; every API call sends it as a Bearer token.
"use strict";

const KEY_STORE = "openrft.apiKey";
const TERMINAL = ["succeeded", "failed", "cancelled"];
const COLORS = ["#3b5bdb", "#e8590c", "#2b8a3e", "#ae3ec9", "#1098ad", "#f08c00", "#c92a2a", "#5c940d"];
let pollTimer = null;
let nav = 0;  // bumped by every navigation: a render started for an older page must not touch the DOM

// ---------------------------------------------------------------------------- helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));  // text only: no HTML injection
  }
  return node;
}

// Children for replaceChildren, which (unlike el) would show a null as the text "null".
function present(...children) {
  return children.flat().filter((c) => c !== null && c !== undefined);
}

function fmt(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  return typeof x === "number" ? x.toFixed(digits) : String(x);
}

function when(ts) {
  return ts ? new Date(ts * 1000).toLocaleString() : "–";
}

class AuthError extends Error {}

async function api(path, options = {}) {
  const key = localStorage.getItem(KEY_STORE) || "";
  const resp = await fetch(path, {
    ...options,
    headers: { ...(options.headers || {}), Authorization: "Bearer " + key },
  });
  if (resp.status === 401) throw new AuthError("the API key was refused");
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const error = new Error((body.error && body.error.message) || resp.statusText);
    error.status = resp.status;
    throw error;
  }
  return body;
}

// A run's API path with query parameters (the run's own, e.g. a local run's stage, and `params`).
function runUrl(state, path, params = {}) {
  const query = new URLSearchParams({ ...(state.params || {}), ...params }).toString();
  return `${state.base}/${path}${query ? "?" + query : ""}`;
}

function askKey(message) {
  const dialog = document.getElementById("key-dialog");
  document.getElementById("key-error").textContent = message || "";
  document.getElementById("key-input").value = localStorage.getItem(KEY_STORE) || "";
  if (!dialog.open) dialog.showModal();
}

function stopPolling() {
  if (pollTimer) clearTimeout(pollTimer);
  pollTimer = null;
}

function poll(fn, ms) {
  stopPolling();
  pollTimer = setTimeout(async () => {
    try {
      await fn();
    } catch (e) {
      handleError(e);
    }
  }, ms);
}

function handleError(e) {
  if (e instanceof AuthError) {
    askKey("The server refused the key: " + e.message);
  } else {
    const main = document.getElementById("main");
    main.prepend(el("p", { class: "error" }, String(e.message || e)));
  }
}

// ---------------------------------------------------------------------------- charts

const LAYOUT = {
  margin: { l: 50, r: 15, t: 36, b: 40 },
  xaxis: { title: { text: "step" } },
  legend: { orientation: "h", y: -0.25 },
  paper_bgcolor: "#fff",
  plot_bgcolor: "#fff",
};

function hexToRgba(hex, alpha) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255},${(n >> 8) & 255},${n & 255},${alpha})`;
}

// A mean line with a +-std band: two invisible bounds (the lower filled to the upper) and the line.
function bandTraces(name, steps, mean, std, color) {
  const upper = mean.map((m, i) => (m === null || std[i] === null ? null : m + std[i]));
  const lower = mean.map((m, i) => (m === null || std[i] === null ? null : m - std[i]));
  return [
    { x: steps, y: upper, mode: "lines", line: { width: 0 }, hoverinfo: "skip", showlegend: false, name: name + " +std" },
    {
      x: steps, y: lower, mode: "lines", line: { width: 0 }, fill: "tonexty",
      fillcolor: hexToRgba(color, 0.18), hoverinfo: "skip", showlegend: false, name: name + " -std",
    },
    { x: steps, y: mean, mode: "lines+markers", name: name, line: { color: color, width: 2 }, marker: { size: 5 } },
  ];
}

function lineTrace(name, steps, values, color) {
  return { x: steps, y: values, mode: "lines+markers", name: name, line: { color: color, width: 2 }, marker: { size: 5 } };
}

function draw(id, title, traces, yTitle) {  // id: an element's id, or the element
  const layout = { ...LAYOUT, title: { text: title, font: { size: 14 } }, yaxis: { title: { text: yTitle || "" } } };
  Plotly.react(id, traces, layout, { displaylogo: false, responsive: true });
}

// ---------------------------------------------------------------------------- runs list

async function showRuns(token) {
  const main = document.getElementById("main");
  const [{ data }, local] = await Promise.all([api("/v1/runs"), localRuns()]);
  if (token !== nav) return;
  const selected = new Set();
  const compareBtn = el("button", {
    class: "primary", id: "compare-button", disabled: "disabled",
    onclick: () => { const [a, b] = [...selected]; location.hash = `#/compare/${a}/${b}`; },
  }, "Compare 2 selected runs");
  const rows = data.map((r) => {
    const box = el("input", {
      type: "checkbox", "data-run": r.id,
      onchange: (ev) => {
        if (ev.target.checked) selected.add(r.id); else selected.delete(r.id);
        if (selected.size === 2) compareBtn.removeAttribute("disabled"); else compareBtn.setAttribute("disabled", "disabled");
      },
    });
    return el("tr", { class: "run-row", "data-run": r.id },
      el("td", {}, box),
      el("td", {}, el("a", { href: `#/run/${r.id}` }, r.name || r.id), el("div", { class: "muted" }, r.id)),
      el("td", {}, el("span", { class: `badge ${r.status}` }, r.status)),
      el("td", {}, `${r.step} / ${r.max_steps ?? "?"}`),
      el("td", {}, fmt(r.reward)),
      el("td", {}, r.base_model),
      el("td", {}, r.attempts),
      el("td", {}, when(r.created_at)),
      el("td", { class: "error" }, r.error || ""));
  });
  main.replaceChildren(...present(
    el("h1", {}, "Runs"),
    el("div", { class: "row" }, compareBtn, el("span", { class: "muted" }, `${data.length} runs; the list refreshes itself`)),
    el("table", { id: "runs-table" },
      el("thead", {}, el("tr", {}, ["", "run", "status", "step", "reward", "base model", "attempts", "created", "error"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows)),
    data.length ? null : el("p", { class: "muted" }, "No runs yet: create a job with the SDK (client.finetune) or POST /v1/jobs."),
    local ? localRunsSection(local) : null,
  ));
  poll(() => token === nav && showRuns(token), 3000);
}

// The server's local runs ({runs_dir, data}), or null where it shows none to this key (404) or has no runs dir.
async function localRuns() {
  try {
    const local = await api("/v1/local-runs");
    return local.runs_dir ? local : null;
  } catch (e) {
    if (e.status === 404) return null;
    throw e;
  }
}

function localHref(name, stage) {
  return `#/local/${encodeURIComponent(name)}` + (stage ? `/${encodeURIComponent(stage)}` : "");
}

function localRunsSection(local) {
  const rows = local.data.flatMap((r) => [
    el("tr", { class: "local-run-row", "data-local-run": r.name },
      el("td", {}, el("a", { href: localHref(r.name) }, r.name), r.stages ? el("div", { class: "muted" }, "chained") : null),
      el("td", {}, el("span", { class: `badge ${r.status}` }, r.status)),
      el("td", {}, r.method || "–"),
      el("td", {}, `${r.step} / ${r.max_steps ?? "?"}`),
      el("td", {}, fmt(r.reward)),
      el("td", {}, r.base_model || "–"),
      el("td", {}, when(r.modified))),
    ...(r.stages || []).map((s) => el("tr", { class: "local-stage-row", "data-local-run": r.name, "data-stage": s.name },
      el("td", { class: "stage-name" }, s.status === "pending" ? s.name : el("a", { href: localHref(r.name, s.name) }, s.name)),
      el("td", {}, el("span", { class: `badge ${s.status}` }, s.status)),
      el("td", {}, s.method || "–"),
      el("td", {}, `${s.step} / ${s.max_steps ?? "?"}`),
      el("td", {}, fmt(s.reward)),
      el("td", {}, s.base_model || "–"),
      el("td", {}, s.modified ? when(s.modified) : "–"))),
  ]);
  return el("section", { id: "local-runs" },
    el("h2", {}, "Local runs"),
    el("p", { class: "muted" }, `Read-only: the run directories under ${local.runs_dir} (openrft train). `,
      "The status is a guess from the files: finished = the adapter was written."),
    el("table", { id: "local-runs-table" },
      el("thead", {}, el("tr", {}, ["run", "status", "method", "step", "reward", "base model", "modified"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows)),
    local.data.length ? null : el("p", { class: "muted" }, "No run directories there yet."));
}

// ---------------------------------------------------------------------------- one run

async function showRun(id, token) {
  const main = document.getElementById("main");
  const job = await api(`/v1/jobs/${id}`);
  if (token !== nav) return;
  const actions = el("span", { class: "row" },
    ({ queued: ["pause", "cancel"], running: ["pause", "cancel"], paused: ["resume", "cancel"], failed: ["resume"] }[job.status] || []).map((a) => el("button", {
      id: `action-${a}`,
      onclick: async () => { try { await api(`/v1/jobs/${id}/${a}`, { method: "POST" }); route(); } catch (e) { handleError(e); } },
    }, a)));
  main.replaceChildren(
    el("h1", {}, job.name || job.id, " ", el("span", { class: `badge ${job.status}`, id: "run-status" }, job.status)),
    el("div", { class: "row muted" },
      el("span", { id: "run-step" }, `step ${job.step} / ${job.max_steps}`),
      el("span", {}, `model ${job.base_model}`),
      el("span", {}, `attempts ${job.attempts}`),
      job.error ? el("span", { class: "error" }, job.error) : null,
      actions),
    ...runBody(),
    el("h2", {}, "Log"),
    el("pre", { class: "log", id: "log" }),
  );
  const state = { id, token, base: `/v1/runs/${id}`, stepsSeen: -1, logOffset: 0 };
  watchBrowser(state);
  await refreshRun(state, job.status);
}

// What every run's page shows: the charts and the completions browser.
function runBody() {
  return [
    el("div", { class: "grid" },
      el("div", { id: "chart-reward", class: "chart" }),
      el("div", { id: "chart-rewards", class: "chart" })),
    el("div", { class: "grid" },
      el("div", { id: "chart-kl", class: "chart small" }),
      el("div", { id: "chart-length", class: "chart small" }),
      el("div", { id: "chart-loss", class: "chart small" })),
    el("h2", { id: "metrics-title", hidden: "hidden" }, "Other metrics"),
    el("div", { class: "grid", id: "metric-charts" }),
    el("h2", {}, "Completions"),
    el("div", { class: "row" },
      el("label", {}, "step ", el("select", { id: "step-select" })),
      el("label", {}, "prompt ", el("select", { id: "group-select" }))),
    el("div", { id: "browser" }),
  ];
}

function watchBrowser(state) {
  document.getElementById("step-select").addEventListener("change", () => loadSamples(state, false));
  document.getElementById("group-select").addEventListener("change", () => renderGroup(state));
}

async function refreshRun(state, status) {
  const stale = () => state.token !== nav;
  if (!(await refreshBody(state))) return;
  const log = await api(`/v1/jobs/${state.id}/logs?offset=${state.logOffset}`);
  if (stale()) return;
  if (log.text) {
    const pre = document.getElementById("log");
    pre.textContent += log.text;
    pre.scrollTop = pre.scrollHeight;
    state.logOffset = log.next_offset;
  }
  const job = await api(`/v1/jobs/${state.id}`);
  if (stale()) return;
  document.getElementById("run-status").textContent = job.status;
  document.getElementById("run-status").className = `badge ${job.status}`;
  document.getElementById("run-step").textContent = `step ${job.step} / ${job.max_steps}`;
  if (!TERMINAL.includes(job.status) || !TERMINAL.includes(status)) {
    poll(() => refreshRun(state, job.status), 2000);  // live while running (and once more after it ends)
  }
}

// Charts and the completions browser's steps, from the run's API (`state.base`); false once the page was left.
async function refreshBody(state) {
  const stale = () => state.token !== nav;
  if (stale()) return false;
  const curves = await api(runUrl(state, "curves"));
  if (stale()) return false;
  drawRunCharts(curves);
  const { data: steps } = await api(runUrl(state, "steps"));
  if (stale()) return false;
  if (steps.length !== state.stepsSeen) {
    const select = document.getElementById("step-select");
    const follow = select.value === "" || Number(select.value) === (state.lastStep ?? -1);
    select.replaceChildren(...steps.map((s) => el("option", { value: s.step }, `step ${s.step}`)));
    state.lastStep = steps.length ? steps[steps.length - 1].step : null;
    if (steps.length) select.value = follow || !state.current ? state.lastStep : state.current;
    state.stepsSeen = steps.length;
    if (steps.length) await loadSamples(state, true);
  }
  return !stale();
}

// A held-out curve (eval.every) drawn over the training curve it matches: dashed, points only where evaluated.
function heldOutTrace(name, steps, values, color) {
  return { x: steps, y: values, mode: "lines+markers", name: name, connectgaps: true,
    line: { color: color, width: 2, dash: "dash" }, marker: { size: 7, symbol: "diamond" } };
}

function drawRunCharts(c) {
  const s = c.step;
  const series = c.series || {};
  const reward = bandTraces("reward", s, c.reward.mean, c.reward.std, COLORS[0]);
  if (series["eval/reward"]) reward.push(heldOutTrace("held-out reward", s, series["eval/reward"], COLORS[0]));
  draw("chart-reward", "Total reward (mean ± std within groups; dashed: held-out)", reward, "reward");
  const per = Object.entries(c.rewards).flatMap(([name, r], i) => {
    const color = COLORS[(i + 1) % COLORS.length];
    const traces = bandTraces(name, s, r.mean, r.std, color);
    const held = series[`eval/rewards/${name}/mean`];
    if (held) traces.push(heldOutTrace(`${name} (held-out)`, s, held, color));
    return traces;
  });
  draw("chart-rewards", "Each reward function (mean ± std; dashed: held-out)", per, "reward");
  draw("chart-kl", "KL to the base model", [lineTrace("kl", s, c.kl, COLORS[3])]);
  draw("chart-length", "Completion length (tokens)", [lineTrace("mean length", s, c.length, COLORS[4])]);
  draw("chart-loss", "Loss", [lineTrace("loss", s, c.loss, COLORS[5])]);
  drawMetricCharts(s, c.series || {});
}

// Metrics the charts above already show (as metrics.jsonl names them).
const CHARTED = new Set(["reward", "reward_std", "kl", "loss", "completions/mean_length"]);

function charted(key) {
  return CHARTED.has(key) || /^rewards\/.+\/(mean|std)$/.test(key);
}

// One small chart for each other numeric metric (eval/..., entropy, grad_norm, lr, ...), eval/ first.
function drawMetricCharts(steps, series) {
  const box = document.getElementById("metric-charts");
  const keys = Object.keys(series).filter((k) => !charted(k));
  keys.sort((a, b) => Number(!a.startsWith("eval/")) - Number(!b.startsWith("eval/")));
  document.getElementById("metrics-title").hidden = keys.length === 0;
  const charts = new Map([...box.children].map((d) => [d.dataset.metric, d]));
  for (const key of keys) {  // every chart's place first: one drawn before the grid fills up would keep its width
    if (!charts.has(key)) {
      charts.set(key, el("div", { class: "chart small", "data-metric": key }));
      box.append(charts.get(key));
    }
  }
  keys.forEach((key, i) => {
    const trace = { ...lineTrace(key, steps, series[key], COLORS[i % COLORS.length]), connectgaps: true };
    draw(charts.get(key), key, [trace]);
  });
}

async function loadSamples(state, keepGroup) {
  const step = document.getElementById("step-select").value;
  if (step === "") return;
  state.current = Number(step);
  const data = await api(runUrl(state, "samples", { step }));
  if (state.token !== nav) return;
  state.groups = data.groups;
  const gsel = document.getElementById("group-select");
  const previous = gsel.value;
  gsel.replaceChildren(...data.groups.map((g) => el("option", { value: g.group },
    `#${g.group}: ${(g.prompt || "").replace(/\s+/g, " ").slice(-70)}`)));
  if (keepGroup && previous !== "" && data.groups.some((g) => String(g.group) === previous)) gsel.value = previous;
  renderGroup(state);
}

function renderGroup(state) {
  const g = (state.groups || []).find((x) => String(x.group) === document.getElementById("group-select").value);
  const browser = document.getElementById("browser");
  if (!g) { browser.replaceChildren(el("p", { class: "muted" }, "No samples yet.")); return; }
  const cards = g.completions.map((c, i) => el("div", { class: "completion" },
    el("div", { class: "muted" }, `completion ${i + 1}${c.truncated ? " (clipped)" : ""} · ${c.length} tokens`),
    el("pre", {}, c.completion),
    el("div", { class: "scores" },
      Object.entries(c.rewards || {}).map(([n, v]) => el("span", {}, `${n}: ${fmt(v, 2)}`)),
      el("span", {}, `total: ${fmt(c.reward, 2)}`),
      el("span", { class: c.advantage > 0 ? "adv-pos" : c.advantage < 0 ? "adv-neg" : "" }, `advantage: ${fmt(c.advantage, 2)}`))));
  browser.replaceChildren(el("div", { class: "prompt" }, g.prompt), el("div", { class: "completions" }, cards));
}

// ---------------------------------------------------------------------------- one local run

// A run directory under the server's --runs-dir: read-only (no actions), its events and config
// instead of a job's log; a chained run shows one stage at a time (by default the latest started).
async function showLocalRun(name, stage, token) {
  const main = document.getElementById("main");
  const base = `/v1/local-runs/${encodeURIComponent(name)}`;
  const run = await api(base);
  if (token !== nav) return;
  const started = (run.stages || []).filter((s) => s.status !== "pending");
  if (run.stages && !stage) stage = (started[started.length - 1] || run.stages[0]).name;
  const shown = run.stages ? run.stages.find((s) => s.name === stage) || { ...run, name: stage } : run;
  const tabs = run.stages ? el("div", { class: "row", id: "stage-tabs" }, "stages:",
    run.stages.map((s) => s.name === stage ? el("strong", {}, s.name)
      : s.status === "pending" ? el("span", { class: "muted" }, `${s.name} (pending)`)
      : el("a", { href: localHref(name, s.name) }, s.name))) : null;
  main.replaceChildren(...present(
    el("h1", {}, run.stages ? `${name} / ${stage}` : name, " ", el("span", { class: `badge ${shown.status}`, id: "run-status" }, shown.status)),
    el("div", { class: "row muted" },
      el("span", { id: "run-step" }, `step ${shown.step} / ${shown.max_steps ?? "?"}`),
      el("span", {}, `method ${shown.method || "–"}`),
      el("span", {}, `model ${shown.base_model || run.base_model || "–"}`),
      el("span", {}, `local run, read-only (modified ${when(shown.modified)})`)),
    tabs,
    ...runBody(),
    el("h2", {}, "Events"),
    el("pre", { class: "log", id: "events" }),
    el("details", { id: "config-details" }, el("summary", {}, "Config"), el("pre", { class: "log", id: "config" })),
  ));
  const state = { token, base, params: stage ? { stage } : {}, stepsSeen: -1, name, stage };
  watchBrowser(state);
  const config = await api(runUrl(state, "config"));
  if (token !== nav) return;
  document.getElementById("config").textContent = JSON.stringify(config, null, 2);
  await refreshLocalRun(state);
}

async function refreshLocalRun(state) {
  if (!(await refreshBody(state))) return;
  const { data: events } = await api(runUrl(state, "events"));
  if (state.token !== nav) return;
  document.getElementById("events").textContent = events.length
    ? events.map((e) => JSON.stringify(e)).join("\n") : "(no events.jsonl)";
  const run = await api(state.base);
  if (state.token !== nav) return;
  const shown = run.stages ? run.stages.find((s) => s.name === state.stage) || run : run;
  document.getElementById("run-status").textContent = shown.status;
  document.getElementById("run-status").className = `badge ${shown.status}`;
  document.getElementById("run-step").textContent = `step ${shown.step} / ${shown.max_steps ?? "?"}`;
  if (shown.status !== "finished") poll(() => refreshLocalRun(state), 3000);  // its files may still grow
}

// ---------------------------------------------------------------------------- compare

async function showCompare(a, b, token) {
  const main = document.getElementById("main");
  const [ca, cb] = await Promise.all([api(`/v1/runs/${a}/curves`), api(`/v1/runs/${b}/curves`)]);
  if (token !== nav) return;
  const options = [["reward", "total reward"], ...Object.keys({ ...ca.rewards, ...cb.rewards }).map((n) => [`rewards/${n}`, `reward: ${n}`]),
    ["kl", "KL"], ["length", "completion length"], ["loss", "loss"]];
  const select = el("select", { id: "compare-metric" }, options.map(([v, t]) => el("option", { value: v }, t)));
  main.replaceChildren(
    el("h1", {}, "Compare runs"),
    el("div", { class: "row" }, el("a", { href: `#/run/${a}` }, a), " vs ", el("a", { href: `#/run/${b}` }, b), el("label", {}, " metric ", select)),
    el("div", { id: "chart-compare", class: "chart" }),
  );
  const pick = (c, metric) => {
    if (metric === "reward") return [c.reward.mean, c.reward.std];
    if (metric.startsWith("rewards/")) { const r = c.rewards[metric.slice(8)]; return r ? [r.mean, r.std] : [[], []]; }
    return [c[metric], null];
  };
  const render = () => {
    const metric = select.value;
    const traces = [[a, ca, COLORS[0]], [b, cb, COLORS[1]]].flatMap(([id, c, color]) => {
      const [mean, std] = pick(c, metric);
      return std ? bandTraces(id, c.step, mean, std, color) : [lineTrace(id, c.step, mean, color)];
    });
    draw("chart-compare", select.options[select.selectedIndex].text, traces);
  };
  select.addEventListener("change", render);
  render();
  poll(() => token === nav && showCompare(a, b, token), 5000);
}

// ---------------------------------------------------------------------------- router

function decoded(part) {
  try {
    return decodeURIComponent(part);
  } catch {
    return part;  // not percent-encoded after all
  }
}

async function route() {
  stopPolling();
  const token = ++nav;
  if (!localStorage.getItem(KEY_STORE)) { askKey(""); return; }
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decoded);
  try {
    if (parts[0] === "run" && parts[1]) await showRun(parts[1], token);
    else if (parts[0] === "local" && parts[1]) await showLocalRun(parts[1], parts[2], token);
    else if (parts[0] === "compare" && parts[2]) await showCompare(parts[1], parts[2], token);
    else await showRuns(token);
  } catch (e) {
    handleError(e);
  }
}

document.getElementById("key-form").addEventListener("submit", () => {
  localStorage.setItem(KEY_STORE, document.getElementById("key-input").value.trim());
  route();
});
document.getElementById("key-button").addEventListener("click", () => askKey(""));
window.addEventListener("hashchange", route);
if (typeof Plotly === "undefined") {
  document.getElementById("main").replaceChildren(el("p", { class: "error" },
    "plotly.js did not load: install the `plotly` Python package on the server (pip install plotly)."));
} else {
  route();
}
