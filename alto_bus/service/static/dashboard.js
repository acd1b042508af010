// The alto_bus dashboard: polls v1/dashboard and draws it with SVG (the graph) and canvas
// (the plots). No library: it must work offline. Names from the topology are only ever
// set as text (textContent, SVG text nodes), never parsed as HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#d53f8c", "#319795", "#b7791f", "#e53e3e",
                 "#4a5568", "#00a3c4"];
const BOX_W = 200, GAP_X = 80, HEAD_H = 42, INST_H = 16, MAX_INST = 8, GAP_Y = 24, PSEUDO_W = 80;
const PLOT_SPAN = 120;  // seconds of history the plots show
const KEEP_SECONDS = 300;
let polls = 0;
let kept = {series: null, points: []};  // the samples this page has (it asks only for newer ones)

function el(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmt(x, digits) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  return Number(x).toLocaleString(undefined, {maximumFractionDigits: digits === undefined ? 1 : digits});
}

function ms(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  return seconds < 1 ? fmt(seconds * 1000, 1) + " ms" : fmt(seconds, 2) + " s";
}

function setText(id, text) { document.getElementById(id).textContent = text; }

// One pool's part of a sample ({} when the sample has none).
function poolAt(point, pool) { return (point.pools || {})[pool] || {}; }

function noData(ctx, w, h, text) {
  ctx.fillStyle = "#9ca3af"; ctx.textAlign = "center"; ctx.fillText(text, w / 2, h / 2);
}

function health(inst) {
  if (inst.stalled > 0) return "stalled";
  if (inst.draining) return "draining";
  return "ok";
}

// ---- the topology ---------------------------------------------------------------------

function nodeHeight(name, data) {
  if (name.startsWith("@")) return 32;
  const n = (data.instances[name] || []).length;
  return HEAD_H + Math.min(n, MAX_INST) * INST_H + (n > MAX_INST ? INST_H : 0) + 8;
}

function drawGraph(data) {
  const svg = document.getElementById("graph");
  const graph = data.graph;
  // Column x positions, then each column's nodes stacked top to bottom.
  const colX = [];
  let x = 10;
  for (let c = 0; c < graph.cols; c++) {
    colX.push(x);
    const pseudoOnly = graph.nodes.filter(n => n.col === c).every(n => n.name.startsWith("@"));
    x += (pseudoOnly ? PSEUDO_W : BOX_W) + GAP_X;
  }
  const pos = {}, colY = {};
  for (const n of graph.nodes) {
    const h = nodeHeight(n.name, data);
    const y = colY[n.col] === undefined ? 10 : colY[n.col];
    const w = n.name.startsWith("@") ? PSEUDO_W : BOX_W;
    pos[n.name] = {x: colX[n.col], y: y, w: w, h: h};
    colY[n.col] = y + h + GAP_Y;
  }
  // Centre each column vertically on the tallest one.
  const height = Math.max(60, ...Object.values(colY)) + 10;
  for (const n of graph.nodes) {
    const used = colY[n.col] - GAP_Y - 10;
    pos[n.name].y += (height - 20 - used) / 2;
  }
  svg.setAttribute("width", x - GAP_X + 20);
  svg.setAttribute("height", height);
  svg.replaceChildren();
  const defs = el("defs");
  const marker = el("marker", {id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "7",
                               markerHeight: "7", orient: "auto-start-reverse"});
  marker.appendChild(el("path", {d: "M 0 0 L 10 5 L 0 10 z", fill: "#8a94a6"}));
  defs.appendChild(marker);
  svg.appendChild(defs);
  // Edges first (under the boxes): from the right side of an input to the left of its reader;
  // several edges into one box arrive at spread points so a join stays readable.
  const into = {};
  for (const [a, b] of graph.edges) (into[b] = into[b] || []).push(a);
  for (const [a, b] of graph.edges) {
    const s = pos[a], t = pos[b];
    if (!s || !t) continue;
    const k = into[b].indexOf(a), m = into[b].length;
    const x1 = s.x + s.w, y1 = s.y + s.h / 2, x2 = t.x, y2 = t.y + t.h * (k + 1) / (m + 1);
    const bend = Math.max(30, (x2 - x1) / 2);
    svg.appendChild(el("path", {class: "edge", "marker-end": "url(#arrow)", "data-from": a, "data-to": b,
                                d: `M ${x1} ${y1} C ${x1 + bend} ${y1}, ${x2 - bend} ${y2}, ${x2} ${y2}`}));
  }
  const maxDepth = Math.max(1, ...Object.values(data.instances).flat().map(i => i.depth));
  const last = data.points.length ? data.points[data.points.length - 1] : {};
  for (const n of graph.nodes) {
    const p = pos[n.name];
    const g = el("g", {class: n.name.startsWith("@") ? "pseudo-node" : "stage", "data-stage": n.name,
                       transform: `translate(${p.x},${p.y})`});
    if (n.name.startsWith("@")) {
      g.appendChild(el("rect", {class: "pseudo", width: p.w, height: p.h, rx: 16}));
      g.appendChild(el("text", {x: p.w / 2, y: 20, "text-anchor": "middle", class: "sub"}, n.name.slice(1)));
      svg.appendChild(g);
      continue;
    }
    const st = data.stages[n.name] || {};
    const insts = data.instances[n.name] || [];
    const figures = (last.stages || {})[n.name] || {};
    const missing = st.replicas !== null && st.replicas !== undefined && insts.length < st.replicas;
    g.appendChild(el("rect", {class: "box" + (missing ? " missing" : ""), width: p.w, height: p.h, rx: 6}));
    g.appendChild(el("text", {x: 8, y: 16, class: "title"}, n.name));
    const kind = (st.kind || "?") + (st.pool ? ` on ${st.pool}` : "");
    g.appendChild(el("text", {x: p.w - 8, y: 16, "text-anchor": "end", class: "sub"},
                     `${kind} · ${insts.length}/${st.replicas === null ? "?" : st.replicas}`));
    g.appendChild(el("text", {x: 8, y: 32, class: "sub"},
                     `${fmt(figures.msgs_per_s)} msgs/s · handler p50 ${ms(figures.handler_p50)}`));
    insts.slice(0, MAX_INST).forEach((inst, k) => {
      const y = HEAD_H + k * INST_H;
      const h = health(inst);
      g.appendChild(el("circle", {cx: 13, cy: y + 6, r: 4.5, class: "health " + h,
                                  fill: h === "ok" ? "#1a9850" : h === "draining" ? "#f0a202" : "#d73027"}));
      g.appendChild(el("text", {x: 24, y: y + 10, class: "sub"}, `#${inst.iid}`));
      const w = (p.w - 110) * inst.depth / maxDepth;
      g.appendChild(el("rect", {x: 60, y: y + 2, width: p.w - 110, height: 9, fill: "#eef1f6"}));
      g.appendChild(el("rect", {x: 60, y: y + 2, width: Math.max(0, w), height: 9, fill: "#2b6cb0",
                                class: "load"}));
      g.appendChild(el("text", {x: p.w - 8, y: y + 10, "text-anchor": "end", class: "sub"}, fmt(inst.depth, 0)));
    });
    if (insts.length > MAX_INST) {
      g.appendChild(el("text", {x: 24, y: HEAD_H + MAX_INST * INST_H + 10, class: "sub"},
                       `+${insts.length - MAX_INST} more`));
    }
    svg.appendChild(g);
  }
}

// ---- plots ----------------------------------------------------------------------------

function canvasContext(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 400, h = canvas.clientHeight || 190;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px system-ui, sans-serif";
  return {ctx, w, h};
}

// lines: [{name, color, values: [[age_seconds (<= 0), y or null]]}]; a null y breaks the line.
function linePlot(canvas, lines, span) {
  const {ctx, w, h} = canvasContext(canvas);
  const left = 48, right = 8, top = 8, bottom = 34;
  const ys = lines.flatMap(l => l.values.map(v => v[1])).filter(y => y !== null && Number.isFinite(y));
  const ymax = niceMax(Math.max(0, ...ys));
  const X = age => left + (w - left - right) * (1 + age / span);
  const Y = y => top + (h - top - bottom) * (1 - y / ymax);
  ctx.strokeStyle = "#e5e7eb"; ctx.fillStyle = "#6b7280"; ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = ymax * i / 4;
    ctx.beginPath(); ctx.moveTo(left, Y(y)); ctx.lineTo(w - right, Y(y)); ctx.stroke();
    ctx.textAlign = "right"; ctx.fillText(fmt(y, 2), left - 4, Y(y) + 4);
  }
  ctx.textAlign = "center";
  for (let i = 0; i <= 4; i++) {
    const age = -span * (4 - i) / 4;
    ctx.textAlign = i === 4 ? "right" : "center";
    ctx.fillText(i === 4 ? "now" : `${Math.round(age)} s`, X(age), h - bottom + 14);
  }
  let lx = left;
  for (const l of lines) {
    ctx.strokeStyle = l.color; ctx.lineWidth = 1.8; ctx.beginPath();
    let pen = false;
    for (const [age, y] of l.values) {
      if (y === null || !Number.isFinite(y) || age < -span) { pen = false; continue; }
      if (pen) ctx.lineTo(X(age), Y(y)); else ctx.moveTo(X(age), Y(y));
      pen = true;
    }
    ctx.stroke();
    ctx.fillStyle = l.color; ctx.textAlign = "left";
    ctx.fillRect(lx, h - 12, 10, 3);
    ctx.fillText(l.name, lx + 14, h - 7);
    lx += 24 + ctx.measureText(l.name).width;
  }
  if (!ys.length) noData(ctx, w, h, "no data yet");
}

function niceMax(v) {
  if (v <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

// Which prompts sat on which member at each sample: a row per member, a column per sample,
// each cell split between the prompts placed there.
function placementPlot(canvas, points, pool, span, colors) {
  const {ctx, w, h} = canvasContext(canvas);
  const members = [...new Set(points.flatMap(p => Object.values(poolAt(p, pool).placement || {}).flat()))].sort();
  const left = 110, right = 8, top = 6, bottom = 34;
  if (!members.length) return noData(ctx, w, h, "no placement yet");
  const rowH = (h - top - bottom) / members.length;
  const now = points[points.length - 1].t;
  const X = age => left + (w - left - right) * (1 + age / span);
  ctx.fillStyle = "#6b7280"; ctx.textAlign = "right";
  members.forEach((m, r) => ctx.fillText(m, left - 6, top + rowH * (r + 0.5) + 4));
  points.forEach((p, k) => {
    const age = p.t - now;
    if (age < -span) return;
    const next = k + 1 < points.length ? points[k + 1].t - now : age + 1;
    const placement = poolAt(p, pool).placement || {};
    members.forEach((m, r) => {
      const on = Object.keys(placement).filter(pr => placement[pr].includes(m)).sort();
      on.forEach((pr, j) => {
        ctx.fillStyle = colors(pr);
        ctx.fillRect(X(age), top + rowH * r + (rowH - 2) * j / on.length, Math.max(1, X(next) - X(age)),
                     (rowH - 2) / on.length);
      });
    });
  });
  ctx.textAlign = "center"; ctx.fillStyle = "#6b7280";
  for (let i = 0; i <= 4; i++) {
    const age = -span * (4 - i) / 4;
    ctx.textAlign = i === 4 ? "right" : "center";
    ctx.fillText(i === 4 ? "now" : `${Math.round(age)} s`, X(age), h - bottom + 14);
  }
  let lx = left;
  const prompts = [...new Set(points.flatMap(p => Object.keys(poolAt(p, pool).placement || {})))].sort();
  for (const pr of prompts) {
    ctx.fillStyle = colors(pr); ctx.fillRect(lx, h - 14, 10, 8);
    ctx.fillStyle = "#1d2330"; ctx.textAlign = "left"; ctx.fillText(pr, lx + 14, h - 7);
    lx += 26 + ctx.measureText(pr).width;
  }
}

function series(points, now, pick) {
  return points.map(p => [p.t - now, pick(p)]);
}

function drawPools(data, now, span) {
  const box = document.getElementById("pools");
  const names = Object.keys(data.pools).sort();
  // Build each pool's section once; later polls only redraw into it.
  if (box.dataset.pools !== names.join(",")) {
    box.replaceChildren();
    for (const name of names) {
      const sec = document.createElement("div");
      sec.className = "pool";
      sec.dataset.pool = name;
      const h = document.createElement("h2");
      h.textContent = `Pool ${name}`;
      const plots = document.createElement("div");
      plots.className = "plots";
      for (const [cls, caption] of [["placement", "placement over time (members × prompts)"],
                                    ["demand", "demand per prompt, tokens/s"]]) {
        const fig = document.createElement("figure");
        const cap = document.createElement("figcaption");
        cap.textContent = caption;
        const c = document.createElement("canvas");
        c.className = cls;
        fig.append(cap, c);
        plots.appendChild(fig);
      }
      const table = document.createElement("table");
      table.className = "members";
      sec.append(h, plots, table);
      box.appendChild(sec);
    }
    box.dataset.pools = names.join(",");
  }
  for (const name of names) {
    const pool = data.pools[name];
    const sec = box.querySelector(`[data-pool="${CSS.escape(name)}"]`);
    sec.querySelector("h2").textContent = `Pool ${name} (${pool.policy || "?"})`;
    const prompts = [...new Set(data.points.flatMap(p => Object.keys(poolAt(p, name).demand || {}))
                                 .concat(Object.keys(pool.placement || {})))].sort();
    const colors = pr => PALETTE[Math.max(0, prompts.indexOf(pr)) % PALETTE.length];
    placementPlot(sec.querySelector("canvas.placement"), data.points, name, span, colors);
    linePlot(sec.querySelector("canvas.demand"), prompts.map(pr => ({
      name: pr, color: colors(pr),
      values: series(data.points, now, p => (poolAt(p, name).demand || {})[pr] ?? null),
    })), span);
    const rows = [["member", "load", "running", "waiting", "KV used", "prefix hits", "prompts"]];
    const members = Object.keys(pool.member_loads || {}).sort();
    for (const m of members) {
      const kv = (pool.kv || {})[m];
      const on = Object.keys(pool.placement || {}).filter(pr => pool.placement[pr].includes(m)).sort();
      const of = key => (pool[key] || {})[m];
      const hits = of("hit_rates");
      rows.push([m, fmt(of("member_loads"), 0), fmt(of("running"), 0), fmt(of("waiting"), 0),
                 kv && kv.capacity ? fmt(100 * kv.used / kv.capacity, 1) + " %" : "–",
                 hits === undefined ? "–" : fmt(100 * hits, 1) + " %", on.join(", ")]);
    }
    fillTable(sec.querySelector("table.members"), rows);
  }
}

function fillTable(table, rows) {
  table.replaceChildren();
  rows.forEach((cells, r) => {
    const tr = document.createElement("tr");
    for (const c of cells) {
      const td = document.createElement(r === 0 ? "th" : "td");
      td.textContent = c;
      tr.appendChild(td);
    }
    table.appendChild(tr);
  });
}

function drawInstances(data) {
  const tbody = document.querySelector("#instances tbody");
  tbody.replaceChildren();
  for (const [stage, insts] of Object.entries(data.instances)) {
    for (const i of insts) {
      const tr = document.createElement("tr");
      tr.dataset.stage = stage;
      const h = health(i);
      const cells = [stage, `#${i.iid} ${i.host}:${i.pid}`, null, fmt(i.depth, 0), fmt(i.msgs_per_s),
                     ms(i.handler_p50), ms(i.handler_p99)];
      for (const c of cells) {
        const td = document.createElement("td");
        if (c === null) {
          const dot = document.createElement("span");
          dot.className = "dot " + h;
          const what = h === "stalled" ? `stalled ${fmt(i.stalled, 1)} s` : h;
          td.append(dot, " " + what + (i.bad ? ` · ${i.bad} bad frames` : ""));
        } else td.textContent = c;
        tr.appendChild(td);
      }
      tbody.appendChild(tr);
    }
  }
}

// ---- the loop -------------------------------------------------------------------------

function render(data) {
  const points = data.points;
  const last = points.length ? points[points.length - 1] : null;
  const now = last ? last.t : 0;
  const span = PLOT_SPAN;
  const g = data.gateway || {};
  const broker = document.getElementById("broker");
  broker.textContent = last && last.up ? "broker up" : "broker not answering";
  broker.className = "pill " + (last && last.up ? "up" : "down");
  setText("epoch", data.epoch === null || data.epoch === undefined ? "–" : data.epoch);
  setText("rate", last ? fmt(last.completed_per_s) : "–");
  setText("completed", fmt(g.completed, 0));
  setText("failed", fmt(g.failed, 0));
  setText("in-flight", fmt(g.in_flight, 0));
  setText("p50", last ? ms(last.p50) : "–");
  setText("p99", last ? ms(last.p99) : "–");
  for (const s of document.querySelectorAll(".span")) s.textContent = data.span;
  drawGraph(data);
  linePlot(document.getElementById("plot-rate"), [
    {name: "completed/s", color: PALETTE[0], values: series(points, now, p => p.completed_per_s ?? null)},
    {name: "failed/s", color: PALETTE[7], values: series(points, now, p => p.failed_per_s ?? null)},
  ], span);
  linePlot(document.getElementById("plot-latency"), [
    {name: "p50", color: PALETTE[0], values: series(points, now, p => p.p50 === null ? null : p.p50 * 1000)},
    {name: "p99", color: PALETTE[1], values: series(points, now, p => p.p99 === null ? null : p.p99 * 1000)},
  ], span);
  drawPools(data, now, span);
  drawInstances(data);
}

async function poll() {
  try {
    const last = kept.points.length ? kept.points[kept.points.length - 1].t : null;
    const r = await fetch("v1/dashboard" + (last === null ? "" : `?since=${last}`), {cache: "no-store"});
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const data = await r.json();
    if (data.series !== kept.series) kept = {series: data.series, points: []};  // a new front door
    const newest = data.points.length ? data.points[data.points.length - 1].t : null;
    kept.points = kept.points.concat(data.points).filter(p => newest === null || p.t >= newest - KEEP_SECONDS);
    data.points = kept.points;
    render(data);
    polls += 1;
    const p = document.getElementById("polls");
    p.textContent = polls;
    p.dataset.polls = polls;
    setText("updated", new Date().toLocaleTimeString());
  } catch (err) {
    const b = document.getElementById("broker");
    b.textContent = `front door not answering (${err.message})`;
    b.className = "pill down";
  }
  setTimeout(poll, 1000);
}

poll();
