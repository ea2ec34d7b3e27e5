// raysplit's results page. It draws what the JSON routes answer and computes no figure of
// its own: every number shown is a field of /experiment, /experiment/timeline, /models,
// /rollout or /experiments, formatted. Charts are SVG drawn here (no library, nothing fetched
// from elsewhere), each with a table as its text equivalent. URLs are relative to the page,
// so the page works under any route prefix; a browser sends the API key it was asked for
// (HTTP Basic) with these requests by itself.
"use strict";

const REFRESH_MS = 5000;
// Okabe-Ito: told apart with every common colour-vision deficiency; dashes tell them apart too
const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#000000"];
const DASHES = ["", "6 3", "2 3", "8 3 2 3", "4 4", "1 2", "10 4"];
const SVG = "http://www.w3.org/2000/svg";
const BASE = window.location.pathname.replace(/ui\/?$/, "");

const colours = new Map();
function colourOf(name) {
  if (!colours.has(name)) colours.set(name, colours.size % PALETTE.length);
  const i = colours.get(name);
  return { stroke: PALETTE[i], dash: DASHES[i] };
}

// ------------------------------------------------------------------ DOM and formatting
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c));
  return node;
}
function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined && v !== "") node.setAttribute(k, v);
  }
  return node;
}
const isNum = (x) => typeof x === "number" && Number.isFinite(x);
const pct = (x, d = 1) => (isNum(x) ? `${(x * 100).toFixed(d)}%` : "–");
const num = (x, d = 2) => (isNum(x) ? x.toFixed(d) : "–");
const pval = (p) => (!isNum(p) ? "–" : p < 0.001 ? "< 0.001" : p.toFixed(3));
const clock = (t, seconds) =>
  new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: seconds ? "2-digit" : undefined });
const stamp = (t) => new Date(t * 1000).toLocaleString();

function cell(field, value, text, cls) {
  // data-field and data-value carry the JSON field and its raw value, for tests and tools
  const attrs = { "data-field": field, class: cls };
  if (value !== undefined) attrs["data-value"] = value === null ? "" : String(value);
  return el("td", attrs, text);
}

async function getJson(path) {
  const response = await fetch(BASE + path, { headers: { Accept: "application/json" } });
  if (!response.ok) {
    let detail = response.statusText;
    try {
      detail = (await response.json()).detail || detail;
    } catch (_) {
      /* not JSON: keep the status text */
    }
    throw new Error(`${path}: ${response.status} ${detail}`);
  }
  return response.json();
}

// ------------------------------------------------------------------ charts
// A chart is a <figure>: caption, SVG (role=img, aria-label), legend, and a table.
function figure(id, title, description) {
  const fig = document.getElementById(id);
  fig.replaceChildren(el("figcaption", {}, title));
  fig.dataset.drawn = "false";
  fig.setAttribute("aria-description", description);
  return fig;
}
function emptyChart(fig, message) {
  fig.append(el("p", { class: "empty" }, message));
}
function textTable(fig, headers, rows) {
  const table = el("table", {}, el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", { scope: "col" }, h)))));
  const body = el("tbody");
  for (const row of rows) body.append(el("tr", {}, ...row.map((c) => el("td", {}, c))));
  table.append(body);
  fig.append(el("details", {}, el("summary", {}, "Table"), table));
}
function legend(fig, names) {
  const box = el("div", { class: "legend" });
  for (const name of names) {
    const c = colourOf(name);
    box.append(el("span", {}, el("span", { class: "swatch", style: `background:${c.stroke}` }), name));
  }
  fig.append(box);
}
function ticks(lo, hi, count) {
  if (hi <= lo) return [lo];
  const step = (hi - lo) / count;
  return Array.from({ length: count + 1 }, (_, i) => lo + i * step);
}

// drawn at the figure's own width in CSS pixels (redrawn every refresh), so text in a chart
// is the page's size on a phone and on a wide screen alike
const H = 220;
const M = { left: 52, right: 16, top: 10, bottom: 26 };
const chartWidth = (fig) => Math.max(280, Math.round(fig.getBoundingClientRect().width) || 600);
function timeLabel(root, x, t, first, last, seconds) {
  const anchor = first ? "start" : last ? "end" : "middle";
  const label = svg("text", { x, y: H - 6, "text-anchor": anchor });
  label.textContent = clock(t, seconds);
  root.append(label);
}

// series: [{name, points: [[t, y]], band: [[t, lo, hi]]}]; opts: {yFormat, refs, log, yMin, yMax}
function lineChart(fig, label, series, opts) {
  const W = chartWidth(fig);
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = series.flatMap((s) => [
    ...s.points.map((p) => p[1]),
    ...(s.band || []).flatMap((b) => [b[1], b[2]]),
  ]);
  if (!xs.length) return emptyChart(fig, "No data yet.");
  const tf = opts.log ? (v) => Math.log10(Math.max(v, opts.yMin)) : (v) => v;
  let y0 = opts.yMin !== undefined ? tf(opts.yMin) : Math.min(...ys.map(tf));
  let y1 = opts.yMax !== undefined ? tf(opts.yMax) : Math.max(...ys.map(tf));
  if (opts.yMin === undefined || opts.yMax === undefined) {
    const pad = (y1 - y0) * 0.08 || Math.abs(y1) * 0.05 || 1;
    if (opts.yMin === undefined) y0 -= pad;
    if (opts.yMax === undefined) y1 += pad;
  }
  if (opts.bounds) { // padding must not run past what the metric can be (accuracy: 0 to 1)
    y0 = Math.max(y0, tf(opts.bounds[0]));
    y1 = Math.min(y1, tf(opts.bounds[1]));
  }
  let x0 = Math.min(...xs);
  let x1 = Math.max(...xs);
  if (x1 === x0) {
    x0 -= 60;
    x1 += 60;
  }
  const X = (t) => M.left + ((t - x0) / (x1 - x0)) * (W - M.left - M.right);
  const Y = (v) => H - M.bottom - ((tf(v) - y0) / (y1 - y0)) * (H - M.top - M.bottom);
  const Yt = (u) => H - M.bottom - ((u - y0) / (y1 - y0)) * (H - M.top - M.bottom);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label });
  for (const u of ticks(y0, y1, 4)) {
    root.append(svg("line", { class: "axis", x1: M.left, x2: W - M.right, y1: Yt(u), y2: Yt(u) }));
    const t = svg("text", { x: M.left - 6, y: Yt(u) + 4, "text-anchor": "end" });
    t.textContent = opts.yFormat(opts.log ? 10 ** u : u);
    root.append(t);
  }
  const xTicks = ticks(x0, x1, W < 400 ? 2 : 3);
  const seconds = x1 - x0 < 600; // minutes alone would repeat on a short span
  xTicks.forEach((t, i) => timeLabel(root, X(t), t, i === 0, i === xTicks.length - 1, seconds));
  for (const ref of opts.refs || []) {
    root.append(svg("line", { class: "ref", x1: M.left, x2: W - M.right, y1: Y(ref.y), y2: Y(ref.y) }));
    const t = svg("text", { x: W - M.right - 2, y: Y(ref.y) - 4, "text-anchor": "end" });
    t.textContent = ref.label;
    root.append(t);
  }
  for (const s of series) {
    const c = colourOf(s.name);
    if (s.band && s.band.length) {
      const upper = s.band.map((b) => `${X(b[0])},${Y(b[2])}`);
      const lower = s.band.map((b) => `${X(b[0])},${Y(b[1])}`).reverse();
      root.append(svg("polygon", { points: [...upper, ...lower].join(" "), fill: c.stroke, "fill-opacity": 0.15 }));
    }
    if (s.points.length > 1) {
      const d = s.points.map((p, i) => `${i ? "L" : "M"}${X(p[0])},${Y(p[1])}`).join("");
      root.append(svg("path", { d, fill: "none", stroke: c.stroke, "stroke-width": 2, "stroke-dasharray": c.dash }));
    }
    for (const p of s.points) {
      root.append(svg("circle", { cx: X(p[0]), cy: Y(p[1]), r: 3, fill: c.stroke }));
    }
  }
  fig.append(root);
  fig.dataset.drawn = "true";
  legend(fig, series.map((s) => s.name));
}

// rows: [{name, estimate, low, high}] drawn as a dot on a line from low to high
function intervalChart(fig, label, rows, format, bounds) {
  if (!rows.length) return emptyChart(fig, "No labelled requests yet.");
  const W = chartWidth(fig);
  const lo = Math.min(...rows.map((r) => r.low));
  const hi = Math.max(...rows.map((r) => r.high));
  const pad = (hi - lo) * 0.1 || 0.01;
  let [x0, x1] = bounds ? [Math.max(bounds[0], lo - pad), Math.min(bounds[1], hi + pad)] : [lo - pad, hi + pad];
  if (x1 - x0 < 1e-9) [x0, x1] = [x0 - 0.01, x1 + 0.01];
  const rowH = 28;
  const h = rows.length * rowH + 30;
  const left = 100;
  const X = (v) => left + ((v - x0) / (x1 - x0)) * (W - left - M.right);
  const root = svg("svg", { viewBox: `0 0 ${W} ${h}`, role: "img", "aria-label": label });
  for (const u of ticks(x0, x1, 4)) {
    root.append(svg("line", { class: "axis", x1: X(u), x2: X(u), y1: 4, y2: h - 20 }));
    const t = svg("text", { x: X(u), y: h - 6, "text-anchor": "middle" });
    t.textContent = format(u);
    root.append(t);
  }
  rows.forEach((r, i) => {
    const y = 16 + i * rowH;
    const c = colourOf(r.name);
    const name = svg("text", { x: left - 8, y: y + 4, "text-anchor": "end" });
    name.textContent = r.name;
    root.append(name);
    root.append(svg("line", { x1: X(r.low), x2: X(r.high), y1: y, y2: y, stroke: c.stroke, "stroke-width": 3 }));
    for (const v of [r.low, r.high]) {
      root.append(svg("line", { x1: X(v), x2: X(v), y1: y - 6, y2: y + 6, stroke: c.stroke, "stroke-width": 2 }));
    }
    root.append(svg("circle", { cx: X(r.estimate), cy: y, r: 5, fill: c.stroke }));
  });
  fig.append(root);
  fig.dataset.drawn = "true";
}

// groups: [{feature, values: [{name, psi}]}], horizontal bars with the 0.1 and 0.25 lines
function driftChart(fig, label, groups) {
  if (!groups.length) return emptyChart(fig, "No drift figures (no training reference or no recent inputs).");
  const W = chartWidth(fig);
  const names = [...new Set(groups.flatMap((g) => g.values.map((v) => v.name)))];
  const barH = 12;
  const groupH = names.length * barH + 10;
  const h = groups.length * groupH + 26;
  const left = 110;
  const top = Math.max(0.3, ...groups.flatMap((g) => g.values.map((v) => v.psi))) * 1.1;
  const X = (v) => left + (v / top) * (W - left - M.right);
  const root = svg("svg", { viewBox: `0 0 ${W} ${h}`, role: "img", "aria-label": label });
  groups.forEach((g, i) => {
    const y = 4 + i * groupH;
    const t = svg("text", { x: left - 8, y: y + groupH / 2, "text-anchor": "end" });
    t.textContent = g.feature;
    root.append(t);
    g.values.forEach((v) => {
      const j = names.indexOf(v.name);
      root.append(svg("rect", {
        x: left, y: y + j * barH, width: Math.max(1, X(v.psi) - left), height: barH - 2,
        fill: colourOf(v.name).stroke,
      }));
    });
  });
  for (const [v, name] of [[0.1, "0.1"], [0.25, "0.25"]]) {
    root.append(svg("line", { class: "ref", x1: X(v), x2: X(v), y1: 2, y2: h - 20 }));
    const t = svg("text", { x: X(v), y: h - 6, "text-anchor": "middle" });
    t.textContent = name;
    root.append(t);
  }
  fig.append(root);
  fig.dataset.drawn = "true";
  legend(fig, names);
}

// ------------------------------------------------------------------ sections
function renderVerdict(report) {
  const parts = report.comparisons.map((c) => {
    const summary = report.summaries.find((s) => s.challenger === c.challenger);
    const words = summary ? summary.summary : `${c.verdict} on ${c.metric}`;
    return `${c.challenger} against ${c.control}: ${words}.`;
  });
  const verdict = document.getElementById("verdict");
  verdict.textContent = parts.length ? parts.join(" ") : "No challenger to compare yet.";
  verdict.dataset.verdicts = report.comparisons.map((c) => c.verdict).join("|");
  const warnings = document.getElementById("warnings");
  // the report's own warnings (sample ratio, label coverage), then the guardrails that fail
  const items = [...report.warnings];
  for (const g of report.guardrails) {
    if (g.verdict === "challenger worse") items.push(`Guardrail: ${g.challenger} is worse on ${g.metric}.`);
  }
  warnings.replaceChildren(...items.map((w) => el("li", {}, w)));
}

function renderDeploy(models) {
  // a refused deploy changes nothing that is served, so it must be said in words (GET /models)
  const banner = document.getElementById("deploy-refused");
  const deploy = models && models.deploy;
  const refused = Boolean(deploy && deploy.status === "REFUSED");
  banner.hidden = !refused;
  banner.dataset.refused = deploy ? deploy.refused_config_hash || "" : "";
  if (!refused) return;
  const since = deploy.since ? new Date(deploy.since * 1000).toLocaleString() : "?";
  banner.textContent = `The last deploy was refused (config ${deploy.refused_config_hash}, since ${since}):`
    + ` ${deploy.reason} Still serving config ${deploy.serving_config_hash}.`;
}

function renderVariants(report, models, links) {
  const quality = report.task === "classification" ? "accuracy" : "mae";
  document.getElementById("quality-heading").textContent =
    quality === "accuracy" ? "Accuracy [95% interval]" : "MAE [95% interval]";
  const byName = new Map((models ? models.variants : []).map((v) => [v.name, v]));
  const versions = new Map((links ? links.variants : []).map((v) => [v.variant, v]));
  const rows = report.variants.map((v) => {
    const m = byName.get(v.name);
    const q = v[quality];
    const c = colourOf(v.name);
    const link = versions.get(v.name);
    const versionText = v.model_versions.length ? v.model_versions.join(", ") : link && link.version ? link.version : "–";
    const qText = q ? (quality === "accuracy" ? `${pct(q.estimate)} [${pct(q.low)}, ${pct(q.high)}]` : `${num(q.estimate, 3)} [${num(q.low, 3)}, ${num(q.high, 3)}]`) : "–";
    const latency = v.latency_ms ? `${num(v.latency_ms.p50)} / ${num(v.latency_ms.p95)}` : "–";
    return el("tr", { "data-variant": v.name },
      el("th", { scope: "row" }, el("span", { class: "swatch", style: `background:${c.stroke}` }), v.name + (v.shadow ? " (shadow)" : "")),
      cell("model_versions", v.model_versions.join(","), versionText),
      cell("observed_share", v.observed_share, pct(v.observed_share), "num"),
      cell("expected_share", v.expected_share, pct(v.expected_share), "num"),
      cell("configured_weight", m ? m.configured_weight : null, m && !v.shadow ? String(m.configured_weight) : "–", "num"),
      cell("assigned", v.assigned, String(v.assigned), "num"),
      cell("errors", v.errors, String(v.errors), "num"),
      cell("latency_p95", v.latency_ms ? v.latency_ms.p95 : null, latency, "num"),
      cell(quality, q ? q.estimate : null, qText, "num"),
      cell("label_coverage", v.label_coverage, pct(v.label_coverage), "num"));
  });
  document.querySelector("#variants tbody").replaceChildren(...rows);

  const fig = figure("chart-intervals", `${quality === "accuracy" ? "Accuracy" : "MAE"} with its 95% interval`,
    `Each variant's ${quality} as a dot and its 95% confidence interval as a line.`);
  const intervals = report.variants.filter((v) => v[quality]).map((v) => ({ name: v.name, ...v[quality] }));
  const format = quality === "accuracy" ? (x) => pct(x, 0) : (x) => num(x, 2);
  intervalChart(fig, `${quality} per variant with 95% intervals: ` +
    intervals.map((r) => `${r.name} ${format(r.estimate)} from ${format(r.low)} to ${format(r.high)}`).join("; "),
  intervals, format, quality === "accuracy" ? [0, 1] : null);
  textTable(fig, ["Variant", "Estimate", "Low", "High"], intervals.map((r) => [r.name, format(r.estimate), format(r.low), format(r.high)]));
}

function renderTimeline(timeline, task) {
  const quality = task === "classification" ? "accuracy" : "mae";
  const names = [...new Set(timeline.points.flatMap((p) => p.variants.map((v) => v.name)))];
  const series = (pick) => names.map((name) => ({
    name,
    points: timeline.points.flatMap((p) => {
      const v = p.variants.find((x) => x.name === name);
      const y = v ? pick(v) : null;
      return isNum(y) ? [[p.at, y]] : [];
    }),
  }));
  const q = series((v) => (v[quality] ? v[quality].estimate : null));
  for (const s of q) {
    s.band = timeline.points.flatMap((p) => {
      const v = p.variants.find((x) => x.name === s.name);
      return v && v[quality] ? [[p.at, v[quality].low, v[quality].high]] : [];
    });
  }
  const qFormat = quality === "accuracy" ? (x) => pct(x, 0) : (x) => num(x, 2);
  let fig = figure("chart-quality", `${quality === "accuracy" ? "Accuracy" : "MAE"} over time, with its 95% band`,
    `Cumulative ${quality} of each variant at the end of each minute, shaded by its 95% interval.`);
  lineChart(fig, `${quality} over time per variant`, q, { yFormat: qFormat, yMin: quality === "accuracy" ? undefined : 0, bounds: quality === "accuracy" ? [0, 1] : null });
  timeTable(fig, timeline, names, (v) => (v[quality] ? `${qFormat(v[quality].estimate)} [${qFormat(v[quality].low)}, ${qFormat(v[quality].high)}]` : "–"));

  const challengers = [...new Set(timeline.points.flatMap((p) => p.comparisons.map((c) => c.challenger)))];
  const pSeries = challengers.map((name) => ({
    name,
    points: timeline.points.flatMap((p) => {
      const c = p.comparisons.find((x) => x.challenger === name);
      return c && isNum(c.always_valid_p_value) ? [[p.at, c.always_valid_p_value]] : [];
    }),
  }));
  fig = figure("chart-pvalue", `Always-valid p-value against ${timeline.alpha}`,
    "Each challenger's always-valid p-value at each look, on a log scale, with the significance level as a dashed line.");
  lineChart(fig, `always-valid p-value per challenger against alpha ${timeline.alpha}`, pSeries,
    { yFormat: (x) => (x >= 0.01 ? x.toFixed(2) : x.toExponential(0)), log: true, yMin: 1e-4, yMax: 1, refs: [{ y: timeline.alpha, label: `α = ${timeline.alpha}` }] });
  textTable(fig, ["Time", ...challengers], timeline.points.map((p) => [clock(p.at), ...challengers.map((n) => {
    const c = p.comparisons.find((x) => x.challenger === n);
    return c ? pval(c.always_valid_p_value) : "–";
  })]));

  const live = names.filter((n) => timeline.points.some((p) => p.variants.some((v) => v.name === n && !v.shadow)));
  fig = figure("chart-share", "Traffic share", "Each live variant's share of the latest allocation's requests, over time.");
  lineChart(fig, "traffic share per live variant over time", series((v) => (v.shadow ? null : v.observed_share)).filter((s) => live.includes(s.name)),
    { yFormat: (x) => pct(x, 0), yMin: 0, yMax: 1 });
  timeTable(fig, timeline, live, (v) => pct(v.observed_share));

  fig = figure("chart-latency", "p95 latency (ms)", "Each variant's 95th-percentile model latency per interval, from the newest answers.");
  lineChart(fig, "p95 latency per variant over time", series((v) => v.p95_latency_ms), { yFormat: (x) => num(x, 1), yMin: 0 });
  timeTable(fig, timeline, names, (v) => num(v.p95_latency_ms, 2));
}

function timeTable(fig, timeline, names, text) {
  textTable(fig, ["Time", ...names], timeline.points.map((p) => [clock(p.at), ...names.map((n) => {
    const v = p.variants.find((x) => x.name === n);
    return v ? text(v) : "–";
  })]));
}

function renderRollout(view, links) {
  const section = document.getElementById("rollout-section");
  const state = document.getElementById("rollout-state");
  const body = document.querySelector("#decisions tbody");
  const fig = figure("chart-rollout", "Candidate's share of live traffic, step by step",
    "The rollout's candidate share after each decision, with its configured steps as dashed lines.");
  if (!view || !view.rollout) {
    state.textContent = view && view.configured ? "A rollout is configured and starts with the first replica's controller." : "No rollout in this experiment.";
    state.dataset.phase = "none";
    body.replaceChildren();
    emptyChart(fig, "No rollout.");
    return;
  }
  const r = view.rollout;
  const steps = r.config.steps;
  const versions = `candidate ${r.config.candidate} v${r.candidate_version || "?"}, control ${r.control} v${r.control_version || "?"}`;
  state.replaceChildren(
    el("strong", { "data-field": "phase", "data-value": r.phase }, r.phase.replace("_", " ")),
    `: step ${r.step + 1} of ${steps.length} (${steps.join("% → ")}%), candidate at `,
    el("strong", { "data-field": "share", "data-value": r.share }, `${r.share}%`),
    `; ${versions}; registry ${r.registry}${r.registry_error ? ` (${r.registry_error})` : ""}.`,
    r.reason ? ` ${r.reason}` : "");
  state.dataset.phase = r.phase;
  section.dataset.phase = r.phase;

  const moves = view.decisions.filter((d) => d.kind !== "hold");
  const points = [[r.started_at, moves.length ? moves[0].share : r.share]];
  for (const d of moves) points.push([d.at, d.share], [d.at, d.share_after]);
  points.push([Math.max(Date.now() / 1000, r.updated_at), r.share]);
  lineChart(fig, `candidate share over the rollout: now ${r.share}% (${r.phase}) at step ${r.step + 1} of ${steps.length}`,
    [{ name: r.config.candidate, points }],
    { yFormat: (x) => `${x.toFixed(0)}%`, yMin: 0, yMax: 100, refs: steps.map((s, i) => ({ y: s, label: `step ${i + 1}: ${s}%` })) });

  const figures = (f) => {
    if (!f) return "";
    const parts = [`${f.metric} Δ ${num(f.difference, 3)}`, `margin ${num(f.margin, 3)}`,
      `non-inferiority p ${pval(f.non_inferiority_p_value)}`, `labelled ${f.candidate_labelled}/${f.control_labelled}`];
    if (isNum(f.latency_ratio)) parts.push(`latency ×${num(f.latency_ratio)}`);
    if (isNum(f.psi)) parts.push(`PSI ${num(f.psi, 3)}`);
    return parts.join(", ");
  };
  const shown = view.decisions.filter((d, i) => d.kind !== "hold" || i === view.decisions.length - 1);
  body.replaceChildren(...shown.slice().reverse().map((d) => el("tr", { "data-kind": d.kind },
    el("td", {}, stamp(d.at)), el("td", {}, d.kind), el("td", { class: "num" }, `${d.share}% → ${d.share_after}%`),
    el("td", {}, d.reason), el("td", {}, figures(d.figures)), el("td", {}, d.actor))));
  textTable(fig, ["Time", "Share"], points.map((p) => [stamp(p[0]), `${p[1]}%`]));
}

function renderDrift(report) {
  const fig = figure("chart-drift", "PSI per feature", "Population stability index per feature and variant, with the 0.1 and 0.25 thresholds as dashed lines.");
  const features = [];
  for (const v of report.variants) {
    for (const [feature, d] of Object.entries(v.drift || {})) {
      let g = features.find((x) => x.feature === feature);
      if (!g) features.push((g = { feature, values: [] }));
      g.values.push({ name: v.name, psi: d.psi, status: d.status });
    }
  }
  driftChart(fig, "PSI per feature: " + features.map((g) => `${g.feature} ${g.values.map((v) => `${v.name} ${num(v.psi, 3)} (${v.status})`).join(", ")}`).join("; "), features);
  textTable(fig, ["Feature", "Variant", "PSI", "Status"], features.flatMap((g) => g.values.map((v) => [g.feature, v.name, num(v.psi, 3), v.status])));
}

function renderShadows(report) {
  const rows = report.variants.filter((v) => v.shadow).map((v) => {
    const p = report.shadows.find((s) => s.shadow === v.name);
    const a = v.agreement_with_live;
    const d = p && p.difference;
    return el("tr", { "data-variant": v.name },
      el("th", { scope: "row" }, v.name),
      cell("agreement_with_live", a ? a.estimate : null, a ? `${pct(a.estimate)} [${pct(a.low)}, ${pct(a.high)}]` : "–", "num"),
      cell("pairs", p ? p.pairs : null, p ? String(p.pairs) : "–", "num"),
      cell("difference", d ? d.estimate : null, d ? `${num(d.estimate, 3)} [${num(d.low, 3)}, ${num(d.high, 3)}]` : "–", "num"),
      cell("always_valid_p_value", p ? p.always_valid_p_value : null, p ? pval(p.always_valid_p_value) : "–", "num"),
      cell("verdict", p ? p.verdict : null, p ? p.verdict : "–"));
  });
  document.querySelector("#shadows tbody").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 6 }, "No shadow variant."))]));
}

function renderLinks(links) {
  const list = document.getElementById("links");
  if (!links) return;
  const items = [el("li", {}, el("a", { href: links.ray_dashboard, id: "ray-dashboard" }, "Ray dashboard"), ` (${links.ray_dashboard})`)];
  if (links.mlflow_ui) items.push(el("li", {}, el("a", { href: links.mlflow_ui }, "MLflow UI")));
  for (const v of links.variants) {
    const model = `${v.model} v${v.version || "?"}`;
    const li = el("li", { "data-variant": v.variant }, `${v.variant}: `);
    li.append(v.model_url ? el("a", { href: v.model_url }, model) : model);
    if (v.run_id) {
      li.append(", run ");
      li.append(v.run_url ? el("a", { href: v.run_url }, v.run_id.slice(0, 8)) : v.run_id);
    }
    items.push(li);
  }
  if (!links.mlflow_ui) items.push(el("li", { class: "note" }, "MLflow keeps its store in a local database here: `mlflow ui` with the same tracking URI shows these runs."));
  list.replaceChildren(...items);
}

async function renderApplications() {
  // Serve's proxy lists its applications ({prefix: name}) without a key
  try {
    const response = await fetch("/-/routes");
    if (!response.ok) return;
    const routes = await response.json();
    const entries = Object.entries(routes);
    if (entries.length < 2) return;
    const box = document.getElementById("applications");
    box.replaceChildren("Applications: ", ...entries.flatMap(([prefix, name], i) => [
      i ? " · " : "", el("a", { href: `${prefix.replace(/\/$/, "")}/ui` }, name)]));
  } catch (_) {
    /* no route table: one application */
  }
}

// ------------------------------------------------------------------ refresh loop
const params = new URLSearchParams(window.location.search);
let selected = params.get("experiment");
let links = null;
let refreshes = 0;

async function refresh() {
  const status = document.getElementById("status");
  const q = selected ? `?experiment=${encodeURIComponent(selected)}` : "";
  const generation = ++refreshes; // a newer refresh (another experiment chosen) wins
  try {
    const [report, timeline, models, list] = await Promise.all([
      getJson(`experiment${q}`), getJson(`experiment/timeline${q}`), getJson("models"), getJson("experiments")]);
    const current = !selected || selected === list.current;
    const rollout = current ? await getJson("rollout") : null;
    if (!links) links = await getJson("ui/links");
    if (generation !== refreshes) return;
    document.getElementById("experiment-name").textContent = report.experiment;
    document.title = `raysplit: ${report.experiment}`;
    const select = document.getElementById("experiment-select");
    select.replaceChildren(...list.experiments.map((e) => el("option", { value: e.experiment },
      `${e.experiment}${e.current ? " (serving)" : ""}`)));
    if (!list.experiments.some((e) => e.experiment === report.experiment)) select.prepend(el("option", { value: report.experiment }, report.experiment));
    select.value = report.experiment;
    renderVerdict(report);
    renderDeploy(models);
    renderVariants(report, current ? models : null, current ? links : null);
    renderTimeline(timeline, report.task);
    document.getElementById("rollout-section").hidden = !current;
    if (current) renderRollout(rollout, links);
    renderDrift(report);
    renderShadows(report);
    renderLinks(links);
    status.textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
  } catch (error) {
    status.textContent = `could not refresh: ${error.message}`;
  }
}

async function loop() {
  await refresh();
  setTimeout(loop, REFRESH_MS);
}

document.getElementById("experiment-select").addEventListener("change", (event) => {
  selected = event.target.value;
  const url = new URL(window.location.href);
  url.searchParams.set("experiment", selected);
  window.history.replaceState(null, "", url);
  refresh();
});
renderApplications();
loop();
