// Prismn dashboard: draws what the coordinator computed (no cost or carbon formula lives here).
"use strict";

const S = { snap: null, preview: null, selected: null, admin: "", apiKey: "", models: [], world: null,
  fitKey: "", previewSeq: 0, peersKey: "", chat: [] };
const $ = (id) => document.getElementById(id);
let W = 960, H = 520;  // the map's viewBox follows its on-screen size, so labels stay readable on a phone

// ---- formatting -------------------------------------------------------------------------------
const num = (x, d = 1) => (x == null || !isFinite(x) ? "–" : Number(x).toFixed(d));
const grams = (x) => (x == null || !isFinite(x) ? "–" : (Math.abs(x) >= 0.01 ? Number(x).toPrecision(3)
  : Number(x).toExponential(2)));
const layers = (l) => `L${l[0]}–${l[1] - 1}`;
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;",
  '"': "&quot;", "'": "&#39;" })[c]);
const routeOf = (hops) => (hops && hops.length ? [hops[0].from, ...hops.map((h) => h.to)].join(">") : "");

// colour-blind-safe sequential scale: viridis, bright = clean grid, dark = carbon-heavy grid
const intensityColour = d3.scaleSequential((t) => d3.interpolateViridis(1 - t)).domain([0, 700]).clamp(true);

// ---- map --------------------------------------------------------------------------------------
const mapSvg = d3.select("#map");

function sizeMap() {
  W = Math.round(document.getElementById("map").clientWidth) || 960;
  H = Math.max(300, Math.min(560, Math.round(W * (W < 600 ? 0.9 : 0.55))));
  mapSvg.attr("viewBox", `0 0 ${W} ${H}`);
  S.fitKey = "";
  if (S.snap) drawMap();
}
const projection = d3.geoNaturalEarth1();
const geoPath = d3.geoPath(projection);
const gBase = mapSvg.append("g"), gRoutes = mapSvg.append("g"), gPreview = mapSvg.append("g").attr("id",
  "preview-route"), gPeers = mapSvg.append("g"), gClient = mapSvg.append("g");
mapSvg.append("defs").html(
  `<marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" orient="auto">
     <path d="M0,0 L10,5 L0,10 z" fill="context-stroke"/></marker>`);

async function loadWorld() {
  const topo = await (await fetch("/dashboard/vendor/world-atlas/countries-110m.json")).json();
  S.world = topojson.feature(topo, topo.objects.countries);
}

function fitTo(points) {
  // zoom to the swarm (at least ~10 degrees around each point) so a continental swarm is readable
  const key = `${W}x${H}:` + points.map((p) => p.join(",")).join(";");
  if (key === S.fitKey) return false;
  S.fitKey = key;
  const pad = [];
  for (const [lon, lat] of points) pad.push([lon - 6, lat - 5], [lon + 6, lat + 5]);
  if (!pad.length) projection.fitSize([W, H], { type: "Sphere" });
  else projection.fitExtent([[30, 30], [W - 30, H - 30]], { type: "MultiPoint", coordinates: pad });
  gBase.selectAll("*").remove();
  gBase.append("path").attr("class", "sphere").attr("d", geoPath({ type: "Sphere" }));
  if (S.world) gBase.selectAll("path.country").data(S.world.features).join("path").attr("class", "country")
    .attr("d", geoPath);
  return true;
}

function xy(id) {
  const s = S.snap;
  if (id === "client") return projection([s.coordinator.lon, s.coordinator.lat]);
  const p = s.peers.find((q) => q.id === id);
  return p ? projection([p.lon, p.lat]) : null;
}

function arc(a, b, bend) {
  const [x1, y1] = a, [x2, y2] = b, dx = x2 - x1, dy = y2 - y1;
  const mx = (x1 + x2) / 2 - dy * bend, my = (y1 + y2) / 2 + dx * bend;
  return { d: `M${x1},${y1} Q${mx},${my} ${x2},${y2}`, mid: [(x1 + 2 * mx + x2) / 4, (y1 + 2 * my + y2) / 4] };
}

// one route: hops client -> peers -> client as arcs, each stage's peer labelled with its layer range
function drawRoute(g, plan, colour, bend) {
  const hops = plan.hops || [];
  g.selectAll("path.hop").data(hops).join("path").attr("class", "hop")
    .attr("data-from", (h) => h.from).attr("data-to", (h) => h.to)
    .attr("stroke", colour).attr("marker-end", "url(#arrow)")
    .attr("d", (h) => { const a = xy(h.from), b = xy(h.to); return a && b ? arc(a, b, bend).d : null; });
  const labels = (plan.stages || []).filter((s) => s.layers[1] > s.layers[0]);
  g.selectAll("text").data(labels).join("text").attr("fill", colour)
    .attr("x", (s) => (xy(s.peer) || [0, 0])[0] + 9).attr("y", (s) => (xy(s.peer) || [0, 0])[1] + 16)
    .attr("data-peer", (s) => s.peer).text((s, i) => `${i + 1}: ${layers(s.layers)}`);
  g.attr("data-route", routeOf(hops));
}

function drawMap() {
  const s = S.snap;
  const pts = [[s.coordinator.lon, s.coordinator.lat], ...s.peers.map((p) => [p.lon, p.lat])];
  fitTo(pts);
  const live = s.deployments.filter((d) => ["ready", "loading", "replanning", "restoring", "degraded"].includes(d.state)
    && d.plan && d.plan.hops);
  const colours = ["#0b5fa5", "#6a3d9a", "#1b7f3b", "#8c510a"];
  gRoutes.selectAll("g.route").data(live, (d) => d.id).join("g").attr("class", "route")
    .attr("data-dep", (d) => d.id).attr("data-state", (d) => d.state)
    .each(function (d, i) { drawRoute(d3.select(this), d.plan, colours[i % colours.length], 0.18 + 0.08 * i); });
  if (S.selected && S.selected.hops) drawRoute(gPreview, S.selected, null, -0.22);
  else { gPreview.selectAll("*").remove(); gPreview.attr("data-route", ""); }

  const maxV = d3.max(s.peers, (p) => p.free_vram_gb) || 1;
  const r = d3.scaleSqrt().domain([0, maxV]).range([4, 15]);
  const peers = gPeers.selectAll("g.peer-g").data(s.peers, (p) => p.id).join((enter) => {
    const g = enter.append("g").attr("class", "peer-g");
    g.append("circle").attr("class", "peer");
    g.append("text").attr("class", "peer-label");
    return g;
  });
  peers.attr("transform", (p) => `translate(${projection([p.lon, p.lat])})`);
  peers.select("circle").attr("data-peer", (p) => p.id).attr("data-status", (p) => p.status)
    .attr("r", (p) => r(p.free_vram_gb))
    .attr("fill", (p) => (p.status === "online" && p.intensity ? intensityColour(p.intensity.g_per_kwh)
      : "#9e9e9e"))
    .on("mouseenter click", (ev, p) => showTip(ev, p)).on("mouseleave", hideTip);
  peers.select("text").attr("x", 8).attr("y", -8).text((p) => p.id);
  const c = projection([s.coordinator.lon, s.coordinator.lat]);
  gClient.selectAll("rect").data([c]).join("rect").attr("class", "client").attr("width", 10).attr("height", 10)
    .attr("x", (d) => d[0] - 5).attr("y", (d) => d[1] - 5);
  gClient.selectAll("text").data([c]).join("text").attr("class", "peer-label").attr("x", (d) => d[0] + 8)
    .attr("y", (d) => d[1] + 4).text("coordinator (client)");
  const online = s.peers.filter((p) => p.status === "online").length;
  $("peer-count").textContent = `${online} online · ${s.peers.length - online} offline · ${live.length} live deployment(s)`;
}

function showTip(ev, p) {
  const t = $("tooltip"), i = p.intensity;
  const rtts = (p.rtt || []).map((x) => `${esc(x.to)} ${num(x.ms)} ms (${esc(x.source)})`).join("<br>");
  const st = p.serving ? `stage ${p.serving.index} of ${esc(p.serving.deployment)} (${esc(p.serving.model)}), `
    + layers(p.serving.layers) : "none";
  t.innerHTML = `<b>${esc(p.id)}</b> · ${esc(p.status)}${p.city ? " · " + esc(p.city) : ""}<br>
    GPU ${esc(p.gpu_model || p.gpu)} · ${num(p.free_vram_gb, 2)} GiB free<br>
    Zone ${esc(p.zone || (i && i.zone) || "?")}: ${i ? `${num(i.g_per_kwh, 0)} gCO₂e/kWh (${esc(i.signal)},
    ${esc(i.basis)}, ${esc(i.year ?? "")})<br><span class="muted">${esc(i.source)}</span>` : "intensity unknown (offline)"}<br>
    Lease: ${esc(p.status)}, last seen ${esc(p.last_seen)}<br>Stage: ${st}<br>${rtts ? "RTT:<br>" + rtts : ""}`;
  const box = t.parentElement.getBoundingClientRect();
  t.style.left = `${Math.min(ev.clientX - box.left + 12, box.width - 240)}px`;
  t.style.top = `${ev.clientY - box.top + 12}px`;
  t.hidden = false;
}
function hideTip() { $("tooltip").hidden = true; }

function drawLegend() {
  const stops = d3.range(0, 701, 100);
  $("legend").innerHTML = "<span>Grid intensity (gCO₂e/kWh):</span>" + stops.map((v) =>
    `<span><svg width="12" height="12"><rect width="12" height="12" fill="${intensityColour(v)}"/></svg> ${v}${v === 700 ? "+" : ""}</span>`).join("")
    + `<span><svg width="12" height="12"><circle cx="6" cy="6" r="5" fill="#9e9e9e"/></svg> offline</span>`
    + "<span>size: free VRAM</span><span>solid arcs: live routes · dashed: selected plan</span>";
}

// ---- live numbers, receipts, events --------------------------------------------------------------
function drawNumbers() {
  const rows = S.snap.numbers;
  $("numbers").innerHTML = `<tr><th>Model</th><th>State</th><th>Requests</th><th>Tokens/s</th><th>Mean batch</th>
    <th>ms/token measured · predicted</th><th>gCO₂e/token measured · predicted</th><th>gCO₂e total</th>
    <th>saved vs seed's plan</th></tr>` + rows.map((r) => {
    const p = r.predicted || {}, seed = r.seed || {};
    const saved = seed.saved_g != null ? `${grams(seed.saved_g)} g (${grams(seed.saved_g_per_token)} g/token, ${esc(seed.note)})`
      : esc(seed.note || "–");
    return `<tr data-model="${esc(r.model)}"><td>${esc(r.model)}</td><td>${esc(r.state)}</td>
      <td>${r.requests}${r.errors ? ` (+${r.errors} failed)` : ""}</td><td>${num(r.tokens_per_s)}</td>
      <td>${num(r.mean_batch)}</td><td>${num(r.latency_ms_per_token)} · ${num(p.latency_ms_per_token)}</td>
      <td>${grams(r.gco2e_per_token)} · ${grams(p.gco2e_per_token)}</td><td>${grams(r.gco2e_total)}</td>
      <td class="saved" data-saved-g="${seed.saved_g ?? ""}">${saved}</td></tr>`;
  }).join("");
  $("receipts").innerHTML = `<tr><th>Time</th><th>Deployment</th><th>Tokens</th><th>ms/token measured · predicted</th>
    <th>gCO₂e</th><th>decode gCO₂e/token measured · predicted</th></tr>` + S.snap.receipts.map((r) => {
    const c = r.receipt || {}, m = c.measured || {}, p = c.predicted || {};
    return `<tr><td>${esc(r.created.slice(11, 19))}</td><td>${esc(r.deployment)}</td>
      <td>${r.prompt_tokens}+${r.completion_tokens}</td><td>${num(m.latency_ms_per_token)} · ${num(p.latency_ms_per_token)}</td>
      <td>${grams(r.gco2e)}</td><td>${grams(c.decode_gco2e_per_token)} · ${grams(p.gco2e_per_token)}</td></tr>`;
  }).join("");
  $("events").innerHTML = [...S.snap.events].reverse().map((e) =>
    `<li data-kind="${esc(e.kind)}"><span class="muted">${esc(e.time.slice(11, 19))}</span> ${esc(e.text)}</li>`).join("");
  const ready = [...new Set(S.snap.deployments.filter((d) => d.state === "ready").map((d) => d.model))];
  syncOptions($("chat-model"), ready.map((m) => [m, m]));
  $("clock").textContent = `updated ${S.snap.time.slice(11, 19)} UTC`;
}

function syncOptions(sel, pairs) {
  const want = pairs.map((p) => p[0]).join("\n");
  if (sel.dataset.keys === want) return false;
  const keep = sel.value;
  sel.innerHTML = pairs.map(([v, label]) => `<option value="${esc(v)}">${esc(label)}</option>`).join("");
  sel.dataset.keys = want;
  if (pairs.some((p) => p[0] === keep)) sel.value = keep;
  return true;
}

// ---- plan preview: prismn, the baselines and the Pareto front ------------------------------------
async function refreshModels() {
  const r = await fetch("/dashboard/api/models");
  S.models = (await r.json()).data;
  const changed = syncOptions($("model"), S.models.map((m) => [m.id, `${m.id}${m.source === "deployed" ? " (deployed)" : ""}`]));
  if (changed) requestPreview();
}

let previewTimer = null;
function requestPreview() { clearTimeout(previewTimer); previewTimer = setTimeout(runPreview, 250); }

async function runPreview() {
  const model = $("model").value;
  if (!model) return;
  const seq = ++S.previewSeq;
  const body = { model, strategy: $("strategy").value, weight: +$("weight").value / 100 };
  const ml = parseFloat($("max-latency").value), mg = parseFloat($("max-gco2e").value);
  if (ml > 0) body.max_latency_ms = ml;
  if (mg > 0) body.max_gco2e = mg;
  $("plan-summary").textContent = "planning…";
  $("plan-summary").dataset.state = "planning";
  const r = await fetch("/dashboard/api/plan", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body) });
  const out = await r.json();
  if (seq !== S.previewSeq) return;  // a newer request was made meanwhile
  if (!r.ok) {
    S.preview = null; S.selected = null;
    $("plan-summary").textContent = out.error ? out.error.message : `planning failed (${r.status})`;
    $("plan-summary").dataset.state = "error";
    drawPareto(); drawCompare(); if (S.snap) drawMap();
    return;
  }
  S.preview = out;
  select(out.chosen);
  const c = out.chosen, m = c.metrics || {};
  const path = (c.stages || []).map((s) => `${s.peer} [${layers(s.layers)}]`).join(" → ");
  const summary = $("plan-summary");
  summary.dataset.route = routeOf(c.hops);
  summary.dataset.state = "done";
  summary.dataset.weight = body.weight;
  summary.innerHTML = c.feasible ? `<b>${esc(c.label)}</b> (carbon weight ${num(body.weight, 2)}): client → ${esc(path)} → client ·
    ${num(m.latency_ms_per_token)} ms/token · ${grams(m.gco2e_per_token)} gCO₂e/token on ${out.peers} online peer(s)`
    : `<b>${esc(c.label)}</b>: no feasible plan (${esc((c.problems || []).slice(0, 2).join("; "))})`;
  drawPareto(); drawCompare();
}

function allPlans() {
  if (!S.preview) return [];
  return [S.preview.chosen, ...S.preview.baselines, ...S.preview.front];
}

function select(plan) {
  S.selected = plan && plan.feasible ? plan : null;
  const el = $("selected");
  if (!S.selected) { el.textContent = ""; el.dataset.route = ""; }
  else {
    const m = plan.metrics;
    el.dataset.route = routeOf(plan.hops);
    el.innerHTML = `Selected: <b>${esc(plan.label)}</b> · ${num(m.latency_ms_per_token)} ms/token ·
      ${grams(m.gco2e_per_token)} gCO₂e/token (dashed on the map)` + (plan.feasible ? ""
      : `<br><span class="muted">Infeasible: ${esc((plan.problems || []).slice(0, 2).join("; "))}</span>`);
  }
  updateDeployButton();
  if (S.snap) drawMap();
  drawPareto(); drawCompare();
}

function drawPareto() {
  const svg = d3.select("#pareto").attr("viewBox", "0 0 460 270");
  svg.selectAll("*").remove();
  const off = S.preview ? S.preview.baselines.filter((p) => !p.feasible) : [];
  $("pareto-note").innerHTML = off.length ? "Not on the chart, infeasible on this swarm: " + off.map((p) =>
    `<b>${esc(p.label)}</b> (${esc((p.problems || [])[0] || "")})`).join("; ") : "";
  const plans = allPlans().filter((p) => p.feasible && p.metrics && p.metrics.latency_ms_per_token != null);
  if (!plans.length) return;
  const M = { l: 62, r: 12, t: 12, b: 38 };
  const xs = plans.map((p) => p.metrics.latency_ms_per_token), ys = plans.map((p) => p.metrics.gco2e_per_token);
  const padX = (d3.max(xs) - d3.min(xs)) * 0.08 || d3.max(xs) * 0.05 || 1;
  const padY = (d3.max(ys) - d3.min(ys)) * 0.1 || d3.max(ys) * 0.05 || 1e-6;
  const x = d3.scaleLinear().domain([d3.min(xs) - padX, d3.max(xs) + padX]).range([M.l, 460 - M.r]).nice();
  const y = d3.scaleLinear().domain([Math.max(0, d3.min(ys) - padY), d3.max(ys) + padY]).range([270 - M.b, M.t]).nice();
  svg.append("g").attr("transform", `translate(0,${270 - M.b})`).call(d3.axisBottom(x).ticks(6));
  svg.append("g").attr("transform", `translate(${M.l},0)`).call(d3.axisLeft(y).ticks(5).tickFormat(d3.format(".2~g")));
  svg.append("text").attr("x", 460 - M.r).attr("y", 266).attr("text-anchor", "end").text("latency (ms/token)");
  svg.append("text").attr("transform", "rotate(-90)").attr("x", -M.t).attr("y", 11).attr("text-anchor", "end")
    .text(`${S.preview.carbon_metric} (g)`);
  const at = (p) => [x(p.metrics.latency_ms_per_token), y(p.metrics.gco2e_per_token)];
  const front = S.preview.front.filter((p) => p.feasible);
  svg.append("path").attr("class", "front-line").attr("d", d3.line()(front.map(at)));
  svg.selectAll("circle.front-point").data(front).join("circle").attr("class", "front-point").attr("r", 5)
    .attr("cx", (p) => at(p)[0]).attr("cy", (p) => at(p)[1]).attr("data-label", (p) => p.label)
    .on("click", (ev, p) => select(p)).append("title").text((p) => `${p.label}: ${routeOf(p.hops)}`);
  // feasible baselines are marked where the evaluator puts them; the others are named under the chart.
  // Baselines on the same point are drawn side by side (10 px apart) so each stays clickable.
  const shapes = [d3.symbolSquare, d3.symbolTriangle, d3.symbolDiamond, d3.symbolWye];
  const base = S.preview.baselines.filter((p) => p.feasible);
  const groups = d3.groups(base, (p) => at(p).map((v) => Math.round(v / 4)).join(","));
  const nudge = new Map();
  for (const [, ps] of groups) ps.forEach((p, k) => nudge.set(p, (k - (ps.length - 1) / 2) * 10));
  svg.selectAll("path.baseline-point").data(base).join("path").attr("class", "baseline-point")
    .attr("data-strategy", (p) => p.label)
    .attr("d", (p) => d3.symbol(shapes[S.preview.baselines.indexOf(p) % shapes.length], 70)())
    .attr("transform", (p) => `translate(${at(p)[0] + nudge.get(p)},${at(p)[1]})`).on("click", (ev, p) => select(p))
    .append("title").text((p) => `${p.label}: ${routeOf(p.hops)}`);
  // one label per point; near the right edge it grows leftwards
  svg.selectAll("text.base-label").data(groups).join("text").attr("class", "base-label")
    .attr("text-anchor", ([, ps]) => (at(ps[0])[0] > 300 ? "end" : "start"))
    .attr("x", ([, ps]) => at(ps[0])[0] + (at(ps[0])[0] > 300 ? -8 : 8) * ps.length)
    .attr("y", ([, ps]) => at(ps[0])[1] - 8 - 11 * (ps.length - 1))
    .each(function ([, ps]) {  // one line per baseline on this point
      const right = at(ps[0])[0] > 300, x = at(ps[0])[0] + (right ? -8 : 8) * ps.length;
      d3.select(this).selectAll("tspan").data(ps).join("tspan").attr("x", x).attr("dy", (p, i) => (i ? 11 : 0))
        .text((p) => p.label);
    });
  const c = S.preview.chosen;
  if (c.feasible) svg.append("circle").attr("class", "chosen-point").attr("r", 9).attr("cx", at(c)[0]).attr("cy", at(c)[1]);
  if (S.selected && S.selected.metrics) svg.append("circle").attr("class", "selected-ring").attr("r", 13)
    .attr("cx", at(S.selected)[0]).attr("cy", at(S.selected)[1]);
}

function drawCompare() {
  const t = $("compare");
  if (!S.preview) { t.innerHTML = ""; return; }
  const rows = [S.preview.chosen, ...S.preview.baselines];
  t.innerHTML = `<tr><th>Plan</th><th>Route</th><th>ms/token</th><th>TTFT ms</th><th>gCO₂e/token</th>
    <th>incl. network + embodied</th><th>Peers</th></tr>` + rows.map((p, i) => {
    const m = p.metrics || {};
    const route = p.feasible ? (p.stages || []).map((s) => `${s.peer} ${layers(s.layers)}`).join(" → ")
      : `infeasible: ${(p.problems || []).slice(0, 1).join("")}`;
    return `<tr class="clickable${p.feasible ? "" : " infeasible"}${p === S.selected ? " is-selected" : ""}"
      data-i="${i}" data-label="${esc(p.label)}"><td>${esc(p.label)}</td><td>${esc(route)}</td>
      <td>${num(m.latency_ms_per_token)}</td><td>${num(m.ttft_ms)}</td><td>${grams(m.gco2e_per_token)}</td>
      <td>${grams(m.gco2e_total_per_token)}</td><td>${m.peers_used ?? "–"}</td></tr>`;
  }).join("");
  t.querySelectorAll("tr.clickable").forEach((tr) => tr.addEventListener("click", () => select(rows[+tr.dataset.i])));
}

function updateDeployButton() {
  const b = $("deploy");
  b.disabled = !(S.selected && S.selected.feasible && S.admin);
  if (!S.admin) $("deploy-msg").textContent = "Enter the admin key to deploy.";
  else if (!S.selected || !S.selected.feasible) $("deploy-msg").textContent = "Select a feasible plan.";
  else if ($("deploy-msg").dataset.sticky !== "1") $("deploy-msg").textContent = "";
}

async function deploySelected() {
  const p = S.selected;
  if (!p || !S.admin) return;
  const body = Object.fromEntries(Object.entries(p.deploy).filter(([, v]) => v != null));
  const msg = $("deploy-msg");
  msg.dataset.sticky = "1";
  msg.textContent = "deploying… (the coordinator re-plans on its free peers)";
  const r = await fetch("/v1/deployments", { method: "POST", body: JSON.stringify(body),
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${S.admin}` } });
  const out = await r.json().catch(() => ({}));
  msg.textContent = out.error ? out.error.message : `${out.id}: ${out.state}${out.error ? " – " + out.error : ""}`;
  refreshModels();
}

// ---- chat through the OpenAI-compatible API ----------------------------------------------------
function bubble(kind, text) {
  const d = document.createElement("div");
  d.className = `msg ${kind}`;
  d.textContent = text;
  $("chat-log").append(d);
  $("chat-log").scrollTop = $("chat-log").scrollHeight;
  return d;
}

function receiptText(c, usage) {
  const m = c.measured || {}, p = c.predicted || {};
  const stages = (c.stages || []).map((s) => `${s.peer} ${layers(s.layers)} @ ${num(s.intensity_g_per_kwh, 0)} g/kWh `
    + `(${s.zone}, ${s.intensity_source}${s.intensity_year ? " " + s.intensity_year : ""})`).join("; ");
  return `Receipt: ${grams(c.gco2e)} gCO₂e for ${usage.completion_tokens} tokens (${grams(c.gco2e_per_token)} g/token; `
    + `decode ${grams(c.decode_gco2e_per_token)} vs predicted ${grams(p.gco2e_per_token)}) · `
    + `${num(m.latency_ms_per_token)} ms/token measured vs ${num(p.latency_ms_per_token)} predicted · `
    + `${num(c.joules, 3)} J · ${stages}`;
}

async function sendChat(ev) {
  ev.preventDefault();
  const text = $("chat-input").value.trim(), model = $("chat-model").value;
  if (!text) return;
  if (!model) { bubble("error", "No model is deployed and ready yet."); return; }
  $("chat-input").value = "";
  S.chat.push({ role: "user", content: text });
  bubble("user", text);
  const out = bubble("assistant", "");
  out.dataset.state = "streaming";
  const headers = { "Content-Type": "application/json" };
  if (S.apiKey) headers.Authorization = `Bearer ${S.apiKey}`;
  $("chat-send").disabled = true;
  try {
    const r = await fetch("/v1/chat/completions", { method: "POST", headers,
      body: JSON.stringify({ model, messages: S.chat, stream: true, max_tokens: 48 }) });
    if (!r.ok) {
      const e = await r.json().catch(() => ({}));
      throw new Error(e.error ? e.error.message : `HTTP ${r.status}`);
    }
    const reader = r.body.getReader(), dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const ev = buf.slice(0, cut); buf = buf.slice(cut + 2);
        const data = ev.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("");
        if (!data || data === "[DONE]") continue;
        const obj = JSON.parse(data);
        if (obj.error) throw new Error(obj.error.message);
        const delta = obj.choices && obj.choices[0] && obj.choices[0].delta;
        if (delta && delta.content) out.textContent += delta.content;
        if (obj.usage && obj.usage.carbon) {
          const rc = document.createElement("div");
          rc.className = "receipt";
          rc.textContent = receiptText(obj.usage.carbon, obj.usage);
          $("chat-log").append(rc);
        }
      }
    }
    S.chat.push({ role: "assistant", content: out.textContent });
    out.dataset.state = "done";
  } catch (e) {
    out.dataset.state = "error";
    bubble("error", String(e.message || e));
    S.chat.pop();
  } finally {
    $("chat-send").disabled = false;
  }
}

// ---- wiring --------------------------------------------------------------------------------------
function onSnapshot(snap) {
  S.snap = snap;
  drawMap();
  drawNumbers();
  // a plan depends on who is online: re-plan the preview when that changes
  const key = snap.peers.filter((p) => p.status === "online").map((p) => p.id).sort().join(",");
  const deps = snap.deployments.map((d) => d.model).sort().join(",");
  if (key !== S.peersKey) { S.peersKey = key; requestPreview(); }
  if (deps !== S.depsKey) { S.depsKey = deps; refreshModels(); }
}

function connect() {
  const es = new EventSource("/dashboard/api/stream");
  es.addEventListener("snapshot", (e) => {
    $("conn").textContent = "live"; $("conn").dataset.state = "live";
    onSnapshot(JSON.parse(e.data));
  });
  es.onerror = () => { $("conn").textContent = "reconnecting…"; $("conn").dataset.state = "reconnecting"; };
}

$("weight").addEventListener("input", () => { $("weight-out").textContent = num($("weight").value / 100, 2); requestPreview(); });
for (const id of ["model", "strategy", "max-latency", "max-gco2e"]) $(id).addEventListener("change", requestPreview);
$("admin-token").addEventListener("input", (e) => { S.admin = e.target.value.trim(); updateDeployButton(); });
$("api-key").addEventListener("input", (e) => { S.apiKey = e.target.value.trim(); });
$("deploy").addEventListener("click", deploySelected);
$("chat-form").addEventListener("submit", sendChat);
$("chat-input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("chat-form").requestSubmit(); }
});
drawLegend();
sizeMap();
let resizeTimer = null;
window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(sizeMap, 150); });
loadWorld().then(() => { S.fitKey = ""; if (S.snap) drawMap(); }).finally(connect);
