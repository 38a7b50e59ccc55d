// The gateway's console: playground, live dashboard, router reports, config. No build step, no dependency;
// every value from the server is inserted as text (never as HTML).
"use strict";

const KEY_STORAGE = "llm-gateway-key";
const POLL_MS = 2000;
const HISTORY_S = 600;
const $ = (id) => document.getElementById(id);

const state = { page: "playground", history: [], conversation: [], prices: {}, controller: null, poller: null,
  recorder: null, recorded: null, chainModels: new Set() };

// ---- HTTP ----------------------------------------------------------------------------------------------

class Unauthorized extends Error {}

function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { authorization: `Bearer ${key}` } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (response.status === 401) {
    showKeyPrompt("The key was not accepted.");
    throw new Unauthorized();
  }
  return response;
}

async function getJSON(path) {
  const response = await api(path);
  if (!response.ok) throw new Error(`${path}: ${response.status} ${await response.text()}`);
  return response.json();
}

// ---- DOM helpers ---------------------------------------------------------------------------------------

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function table(target, headers, rows) {
  target.replaceChildren(
    el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", { text: h, class: h.endsWith("%") || h === "#" ? "num" : "" })))),
    el("tbody", {}, ...rows.map((row) => el("tr", {}, ...row.map((cell) => (cell instanceof Node ? el("td", {}, cell)
      : el("td", { text: cell === null || cell === undefined ? "–" : String(cell), class: typeof cell === "number" ? "num" : "" })))))));
}

function badge(text) {
  return el("span", { class: `badge ${String(text).replace(/[^a-z_]/gi, "")}`, text });
}

function fmt(value, digits = 0) {
  return value === null || value === undefined ? "–" : Number(value).toLocaleString(undefined, { maximumFractionDigits: digits });
}

function shares(target, counts) {
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  const entries = Object.entries(counts).sort((a, b) => b[1] - a[1]);
  if (!entries.length || !total) { target.replaceChildren(el("p", { class: "muted", text: "no traffic yet" })); return; }
  target.replaceChildren(...entries.map(([name, count]) => el("div", { class: "share-row" },
    el("span", { text: name }), el("div", { class: "bar", style: `width:${(100 * count / total).toFixed(1)}%` }),
    el("span", { class: "num", text: `${(100 * count / total).toFixed(1)}%` }))));
}

// ---- key prompt and tabs -------------------------------------------------------------------------------

function showKeyPrompt(error = "") {
  $("pages").hidden = true;
  $("key-prompt").hidden = false;
  $("key-error").textContent = sessionStorage.getItem(KEY_STORAGE) ? error : "";
  stopPolling();
  $("key-input").focus();
}

async function start() {
  try {
    await getJSON("/ui/api/stats");
  } catch (error) {
    if (error instanceof Unauthorized) return;
    throw error;
  }
  $("key-prompt").hidden = true;
  $("pages").hidden = false;
  $("forget-key").hidden = !sessionStorage.getItem(KEY_STORAGE);
  await loadModels();
  show(state.page);
}

function show(page) {
  state.page = page;
  for (const tab of document.querySelectorAll("[role=tab]")) {
    const selected = tab.dataset.page === page;
    tab.setAttribute("aria-selected", String(selected));
    tab.tabIndex = selected ? 0 : -1;
    $(`page-${tab.dataset.page}`).hidden = !selected;
  }
  stopPolling();
  if (page === "dashboard") { refreshStats(); state.poller = setInterval(refreshStats, POLL_MS); }
  if (page === "router") loadRouter();
  if (page === "config") loadConfig();
}

function stopPolling() {
  if (state.poller) clearInterval(state.poller);
  state.poller = null;
}

// ---- playground ----------------------------------------------------------------------------------------

async function loadModels() {
  const [models, config] = await Promise.all([getJSON("/v1/models"), getJSON("/ui/api/config")]);
  state.prices = Object.fromEntries(config.models.filter((m) => m.price).map((m) => [m.name, m.price]));
  const chatModels = new Set(config.models.filter((m) => m.task === "generate").map((m) => m.name));
  if (config.router) chatModels.add(config.router.model_name);
  const select = $("model");
  select.replaceChildren(...models.data.filter((m) => chatModels.has(m.id) || !config.models.some((c) => c.name === m.id))
    .map((m) => el("option", { value: m.id, text: m.id })));
  if (config.router) select.value = config.router.model_name;
  state.chainModels = new Set(config.models.filter((m) => (m.stages || []).includes("aligncot")).map((m) => m.name));
  const sync = () => {
    $("preference-row").hidden = !config.router || select.value !== config.router.model_name;
    $("chain-row").hidden = !state.chainModels.has(select.value);
  };
  select.onchange = sync;
  sync();
}

function readFile(input) {
  const file = input.files && input.files[0];
  if (!file) return Promise.resolve(null);
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve({ name: file.name, type: file.type, url: reader.result });
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function userContent(text) {
  const [image, audio] = await Promise.all([readFile($("image")), readFile($("audio"))]);
  const recorded = state.recorded;
  if (!image && !audio && !recorded) return text;
  const parts = [];
  if (image) parts.push({ type: "image_url", image_url: { url: image.url } });
  if (audio) {
    const format = /mp3|mpeg/.test(audio.type + audio.name) ? "mp3" : "wav";
    parts.push({ type: "input_audio", input_audio: { data: audio.url.split(",", 2)[1], format } });
  }
  if (recorded) parts.push({ type: "input_audio", input_audio: { data: recorded, format: "wav" } });
  if (text) parts.push({ type: "text", text });
  return parts;
}

function addMessage(role, text) {
  const item = el("li", { class: `msg ${role}` }, el("div", { class: "text", text }));
  $("messages").append(item);
  return item;
}

async function send(event) {
  event.preventDefault();
  const text = $("message").value.trim();
  if (!text && !$("image").files.length && !$("audio").files.length && !state.recorded) return;
  const content = await userContent(text);
  state.conversation.push({ role: "user", content });
  addMessage("user", text + ($("image").files.length ? "  [image]" : "")
    + ($("audio").files.length || state.recorded ? "  [audio]" : ""));
  $("message").value = "";
  $("image").value = ""; $("audio").value = "";  // attachments go with this message only
  state.recorded = null; $("record-status").textContent = "";
  const model = $("model").value;
  const body = { model, stream: true, stream_options: { include_usage: true },
    temperature: Number($("temperature").value), max_tokens: Number($("max-tokens").value),
    messages: [...($("system").value.trim() ? [{ role: "system", content: $("system").value.trim() }] : []), ...state.conversation] };
  if (!$("chain-row").hidden && $("show-chain").checked) body.aligncot = { return_chain: true };
  if (!$("preference-row").hidden) {
    const quality = Number($("preference").value) / 100;
    body.routing = { preference: { quality: +quality.toFixed(2), cost: +(1 - quality).toFixed(2) } };
  }
  const answer = addMessage("assistant", "");
  answer.setAttribute("data-state", "streaming");
  const textNode = answer.querySelector(".text");
  state.controller = new AbortController();
  $("send").disabled = true; $("stop").disabled = false;
  const started = performance.now();
  let firstByte = null, usage = null, reply = "", stageVerdicts = {}, failed = null, headers = new Headers(), chain = null;
  try {
    const response = await api("/v1/chat/completions", { method: "POST", body: JSON.stringify(body),
      headers: { "content-type": "application/json" }, signal: state.controller.signal });
    headers = response.headers;
    if (!response.ok) {
      const error = await response.json().catch(() => ({ error: { message: response.statusText } }));
      failed = `${response.status}: ${error.error ? error.error.message : response.statusText}`;
    } else {
      const stages = (headers.get("x-gateway-stages") || "").split(",").filter(Boolean);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        if (firstByte === null) firstByte = performance.now() - started;
        buffer += value;
        const events = buffer.split("\n\n");
        buffer = events.pop();
        for (const event of events) {
          const data = event.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (!data || data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) { failed = chunk.error.message; continue; }
          for (const stage of stages) if (chunk[stage]) stageVerdicts[stage] = chunk[stage];
          if (chunk.usage) usage = chunk.usage;
          if (chunk.aligncot_chain) chain = chunk.aligncot_chain;
          for (const choice of chunk.choices || []) {
            const delta = choice.delta || {};
            if (delta.content) { reply += delta.content; textNode.textContent = reply; }
          }
        }
      }
    }
  } catch (error) {
    if (error instanceof Unauthorized) return;
    failed = error.name === "AbortError" ? "stopped" : String(error);
  } finally {
    $("send").disabled = false; $("stop").disabled = true; state.controller = null;
  }
  const total = performance.now() - started;
  if (reply) state.conversation.push({ role: "assistant", content: reply });
  else state.conversation.pop();
  answer.setAttribute("data-state", failed ? "failed" : "done");
  if (failed) answer.append(el("p", { class: "error", text: failed }));
  answer.append(decision(headers, usage, stageVerdicts, firstByte, total));
  if (chain) {
    answer.append(el("details", { class: "aligncot-chain", open: "" }, el("summary", { text: "AlignCoT chain" }),
      el("dl", {}, ...chain.flatMap((step) => [el("dt", { text: step.step }), el("dd", { text: step.text })]))));
  }
}

function decision(headers, usage, stageVerdicts, firstByte, total) {
  const routed = headers.get("x-gateway-routed-model");
  const box = el("div", { class: "decision" });
  if (routed) box.append(el("span", {}, "routed to ", el("strong", { class: "routed-model", text: routed })));
  const scores = headers.get("x-gateway-route-scores");
  if (scores) {
    const candidates = JSON.parse(scores);
    if (candidates.length && candidates[0].model !== routed) {
      box.append(el("span", { class: "failover", text: `failed over from ${candidates[0].model}` }));
    }
    const scoreTable = el("table", { class: "route-scores" });
    table(scoreTable, ["#", "candidate", "score", "quality", "cost $"], candidates.map((c, i) =>
      [i + 1, c.model, c.score, c.quality ?? null, c.cost_usd ?? null]));
    box.append(scoreTable);
  }
  for (const [stage, verdict] of Object.entries(stageVerdicts)) {
    box.append(el("span", { class: "stage-verdict" }, `${stage}: `, badge(verdict)));
  }
  for (const [name, value] of headers) {
    if (name.startsWith("x-gateway-") && !["x-gateway-routed-model", "x-gateway-route-scores", "x-gateway-stages"].includes(name)) {
      const stage = name.slice("x-gateway-".length);
      if (!stageVerdicts[stage]) box.append(el("span", { class: "stage-verdict" }, `${stage}: `, badge(value)));
    }
  }
  if (usage) {
    box.append(el("span", { class: "tokens", text: `${usage.prompt_tokens} + ${usage.completion_tokens} tokens` }));
    const price = state.prices[routed];
    if (price) {
      const cost = (usage.prompt_tokens * price.input_per_1m + usage.completion_tokens * price.output_per_1m) / 1e6;
      box.append(el("span", { class: "cost", text: `$${cost.toPrecision(3)}` }));
    }
  }
  box.append(el("span", { class: "latency", text: `first byte ${firstByte === null ? "–" : Math.round(firstByte)} ms · total ${Math.round(total)} ms` }));
  return box;
}

// Recording: the microphone through MediaRecorder, decoded and written as 16-bit mono WAV (the input_audio
// formats are wav and mp3; browsers record webm/ogg).
async function toggleRecording() {
  if (state.recorder) { state.recorder.stop(); return; }
  let stream;
  try { stream = await navigator.mediaDevices.getUserMedia({ audio: true }); } catch (error) {
    $("record-status").textContent = `no microphone: ${error.message}`; return;
  }
  const chunks = [];
  const recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (event) => chunks.push(event.data);
  recorder.onstop = async () => {
    stream.getTracks().forEach((track) => track.stop());
    state.recorder = null;
    $("record").textContent = "Record";
    const context = new AudioContext();
    const audio = await context.decodeAudioData(await new Blob(chunks).arrayBuffer());
    context.close();
    state.recorded = wavBase64(audio);
    $("record-status").textContent = `recorded ${audio.duration.toFixed(1)} s (goes with the next message)`;
  };
  recorder.start();
  state.recorder = recorder;
  $("record").textContent = "Stop recording";
  $("record-status").textContent = "recording…";
}

function wavBase64(audio) {
  const samples = audio.getChannelData(0);
  const bytes = new DataView(new ArrayBuffer(44 + 2 * samples.length));
  const text = (offset, value) => [...value].forEach((c, i) => bytes.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF"); bytes.setUint32(4, 36 + 2 * samples.length, true); text(8, "WAVE"); text(12, "fmt ");
  bytes.setUint32(16, 16, true); bytes.setUint16(20, 1, true); bytes.setUint16(22, 1, true);
  bytes.setUint32(24, audio.sampleRate, true); bytes.setUint32(28, 2 * audio.sampleRate, true);
  bytes.setUint16(32, 2, true); bytes.setUint16(34, 16, true); text(36, "data");
  bytes.setUint32(40, 2 * samples.length, true);
  samples.forEach((s, i) => bytes.setInt16(44 + 2 * i, Math.max(-1, Math.min(1, s)) * 0x7fff, true));
  let binary = "";
  const raw = new Uint8Array(bytes.buffer);
  for (let i = 0; i < raw.length; i += 0x8000) binary += String.fromCharCode(...raw.subarray(i, i + 0x8000));
  return btoa(binary);
}

// ---- dashboard -----------------------------------------------------------------------------------------

async function refreshStats() {
  let stats;
  try { stats = await getJSON("/ui/api/stats"); } catch (error) { return; }
  const now = Date.now() / 1000;
  state.history.push({ t: now, stats });
  while (state.history.length && now - state.history[0].t > HISTORY_S) state.history.shift();
  const previous = state.history.length > 1 ? state.history[state.history.length - 2] : null;
  const rate = previous ? (stats.total_requests - previous.stats.total_requests) / (now - previous.t) : 0;
  $("stat-total").textContent = fmt(stats.total_requests);
  $("stat-rate").textContent = `${rate.toFixed(2)} req/s`;
  $("stat-p50").textContent = stats.latency_ms.p50 === null ? "–" : `${fmt(stats.latency_ms.p50, 1)} ms`;
  $("stat-p90p99").textContent = `p90 ${fmt(stats.latency_ms.p90, 1)} · p99 ${fmt(stats.latency_ms.p99, 1)} ms`;
  const errors = Object.values(stats.errors).reduce((a, b) => a + b, 0);
  $("stat-errors").textContent = fmt(errors);
  $("errors-by-type").replaceChildren(...Object.entries(stats.errors).map(([code, n]) => el("li", { text: `${code}: ${fmt(n)}` })));
  $("stat-in-flight").textContent = fmt(Object.values(stats.in_flight).reduce((a, b) => a + b, 0));
  shares($("model-share"), Object.fromEntries(Object.entries(stats.requests).map(([m, s]) => [m, Object.values(s).reduce((a, b) => a + b, 0)])));
  shares($("routed-share"), stats.routed);
  $("failovers").replaceChildren(...Object.entries(stats.failovers).flatMap(([model, reasons]) =>
    Object.entries(reasons).map(([reason, n]) => el("li", { text: `${model} (${reason}): ${fmt(n)}` }))));
  if (!$("failovers").children.length) $("failovers").append(el("li", { class: "muted", text: "none" }));
  $("circuits").replaceChildren(...Object.entries(stats.circuits).map(([model, s]) => el("li", {}, `${model} `, badge(s))));
  if (!$("circuits").children.length) $("circuits").append(el("li", { class: "muted", text: "no routing" }));
  const outcomes = [...new Set(Object.values(stats.stages).flatMap((o) => Object.keys(o)))];
  table($("stages"), ["stage", ...outcomes], Object.entries(stats.stages).map(([stage, o]) => [stage, ...outcomes.map((k) => o[k] || 0)]));
  const minuteAgo = state.history.find((h) => now - h.t <= 60) || state.history[0];
  table($("keys"), ["key", "requests", "tokens", "429s"], Object.entries(stats.key_limits).map(([name, limits]) => {
    const used = stats.keys[name] || {}, before = (minuteAgo.stats.keys || {})[name] || {};
    const requests = (used.requests || 0) - (minuteAgo === state.history[state.history.length - 1] ? 0 : before.requests || 0);
    const tokens = (used.tokens || 0) - (minuteAgo === state.history[state.history.length - 1] ? 0 : before.tokens || 0);
    return [name, `${fmt(requests)} / ${limits.requests_per_minute ? fmt(limits.requests_per_minute) : "∞"}`,
      `${fmt(tokens)} / ${limits.tokens_per_minute ? fmt(limits.tokens_per_minute) : "∞"}`, stats.rate_limited[name] || 0];
  }));
  drawRate();
  if (!state.usageAt || now - state.usageAt > 10) { state.usageAt = now; refreshUsage(); }
}

async function refreshUsage() {
  let usage;
  try { usage = await getJSON("/ui/api/usage"); } catch (error) { $("spend-note").textContent = String(error.message || error); return; }
  if (!usage.store) { $("spend-note").textContent = "no usage store (usage_store: false)"; return; }
  table($("budgets"), ["key", "budget", "period", "spent", "resets"], Object.entries(usage.budgets).map(([name, b]) =>
    [name, b.budget_usd.toFixed(2), b.period, usd(b.spent_usd), b.resets_at || "never"]));
  table($("spend"), ["day", "key", "model", "requests", "tokens", "USD"], usage.lines.slice(-50).reverse().map((line) =>
    [line.day, line.key, line.model, fmt(line.requests), fmt(line.prompt_tokens + line.completion_tokens), usd(line.cost_usd)]));
  const total = usage.lines.reduce((sum, line) => sum + line.cost_usd, 0);
  $("spend-note").textContent = `${usage.store}: ${usd(total)} USD over the last 31 days`;
}

// Dollars to the cent; amounts under a dollar to a hundredth of a cent (cheap models cost fractions of one).
function usd(value) { return value.toFixed(value < 1 ? 4 : 2); }

function drawRate() {
  const svg = $("rate-chart");
  const points = [];
  for (let i = 1; i < state.history.length; i++) {
    const a = state.history[i - 1], b = state.history[i];
    points.push([b.t, (b.stats.total_requests - a.stats.total_requests) / (b.t - a.t)]);
  }
  if (points.length < 2) { svg.replaceChildren(); return; }
  const t0 = points[0][0], t1 = points[points.length - 1][0], top = Math.max(1, ...points.map((p) => p[1]));
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points.map(([t, r]) => `${(600 * (t - t0) / Math.max(t1 - t0, 1)).toFixed(1)},${(115 - 105 * r / top).toFixed(1)}`).join(" "));
  const label = document.createElementNS("http://www.w3.org/2000/svg", "text");
  label.setAttribute("x", "4"); label.setAttribute("y", "12");
  label.textContent = `max ${top.toFixed(1)} req/s`;
  svg.replaceChildren(line, label);
}

// ---- router --------------------------------------------------------------------------------------------

async function loadRouter() {
  let router;
  try { router = await getJSON("/ui/api/router"); } catch (error) { return; }
  const summary = $("router-summary");
  if (!router.configured) {
    summary.replaceChildren(el("h3", { text: "Router" }), el("p", { text: "No router configured (model: auto is off)." }));
    $("router-reports").replaceChildren();
    return;
  }
  const mapTable = el("table");
  table(mapTable, ["router LLM", "served by"], Object.entries(router.model_map));
  summary.replaceChildren(el("h3", { text: `${router.model_name}: ${router.kind} checkpoint` }),
    el("p", { class: "muted", text: router.checkpoint }), mapTable);
  const reports = router.reports.map((report) => reportCard(report, router.model_map));
  if (!reports.length) reports.push(el("p", { class: "muted", text: "No reports next to the checkpoint: write them with `llm-gateway router eval --json CHECKPOINT/reports/eval.json` and `router front --json CHECKPOINT/reports/front.json`." }));
  $("router-reports").replaceChildren(...reports);
}

function reportCard(report, modelMap) {
  const card = el("div", { class: "card wide report" }, el("h3", { text: report.name }));
  const data = report.data;
  if (data.tasks) {
    const t = el("table");
    const columns = ["router", "best_single", "oracle", "random"];
    table(t, ["task", ...columns.map((c) => `${c} %`)], [...Object.entries(data.tasks), ["AVERAGE", data.average]]
      .map(([task, row]) => [task, ...columns.map((c) => +row[c].toFixed(2))]));
    card.append(el("p", { text: `router ${data.router} · best single LLM ${data.best_single_llm}` }), t);
  }
  if (data.shares) {
    const models = [...new Set(Object.values(data.shares).flatMap((s) => Object.keys(s)))];
    const t = el("table", { class: "shares" });
    table(t, ["task: share routed to", ...models.map((m) => `${modelMap[m] || m} %`)], Object.entries(data.shares)
      .map(([task, s]) => [task, ...models.map((m) => +(100 * (s[m] || 0)).toFixed(1))]));
    card.append(el("h3", { text: "What each model is good at: its share of each task" }), t);
  }
  if (data.points) {
    const t = el("table");
    table(t, ["quality / cost", "accuracy %", "cost $"], data.points.map((p) =>
      [`${p.preference.quality.toFixed(2)} / ${p.preference.cost.toFixed(2)}`, +p.accuracy.toFixed(2), +p.cost_usd.toFixed(4)]));
    card.append(el("p", { text: `hypervolume ${data.hypervolume.toFixed(4)}` }), frontPlot(data), t);
  }
  if (report.image) {
    const image = el("img", { class: "report", alt: `${report.name} chart` });
    api(`/ui/api/router/files/${encodeURIComponent(report.image)}`).then((r) => r.blob())
      .then((blob) => { image.src = URL.createObjectURL(blob); }).catch(() => {});
    card.append(image);
  }
  return card;
}

function frontPlot(data) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 600 200");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "accuracy against cost");
  const all = [...data.points.map((p) => [p.cost_usd, p.accuracy]), ...Object.values(data.models || {}).map((m) => [m.cost_usd, m.accuracy])];
  const maxCost = Math.max(...all.map((p) => p[0]), 1e-9), minAcc = Math.min(...all.map((p) => p[1])), maxAcc = Math.max(...all.map((p) => p[1]));
  const xy = ([c, a]) => [10 + 580 * c / maxCost, 190 - 170 * (a - minAcc) / Math.max(maxAcc - minAcc, 1e-9)];
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", [...data.points].sort((a, b) => a.cost_usd - b.cost_usd).map((p) => xy([p.cost_usd, p.accuracy]).map((v) => v.toFixed(1)).join(",")).join(" "));
  svg.append(line);
  for (const [name, m] of Object.entries(data.models || {})) {
    const [x, y] = xy([m.cost_usd, m.accuracy]);
    const dot = document.createElementNS(ns, "circle");
    dot.setAttribute("cx", x.toFixed(1)); dot.setAttribute("cy", y.toFixed(1)); dot.setAttribute("r", "3");
    dot.setAttribute("fill", "currentColor");
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", (x + 4).toFixed(1)); label.setAttribute("y", (y - 4).toFixed(1));
    label.textContent = name;
    svg.append(dot, label);
  }
  return svg;
}

// ---- config --------------------------------------------------------------------------------------------

async function loadConfig() {
  let config;
  try { config = await getJSON("/ui/api/config"); } catch (error) { return; }
  table($("readiness"), ["model", "ready", "detail"], Object.entries(config.readiness.models).map(([name, r]) =>
    [name, badge(r.ready ? "ready" : "not_ready"), r.detail]));
  table($("config-models"), ["name", "backend", "task", "where", "stages", "price $/1M in/out"], config.models.map((m) =>
    [m.name, m.backend, m.task, m.base_url || m.path || m.encoder || "embedded", (m.stages || []).join(", "),
      m.price ? `${m.price.input_per_1m} / ${m.price.output_per_1m}` : null]));
  $("config-json").textContent = JSON.stringify(config.settings, null, 2);
}

// ---- wiring --------------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, $("key-input").value.trim());
    $("key-input").value = "";
    start();
  });
  $("forget-key").addEventListener("click", () => { sessionStorage.removeItem(KEY_STORAGE); location.reload(); });
  for (const tab of document.querySelectorAll("[role=tab]")) tab.addEventListener("click", () => show(tab.dataset.page));
  document.querySelector("[role=tablist]").addEventListener("keydown", (event) => {
    const tabs = [...document.querySelectorAll("[role=tab]")];
    const index = tabs.findIndex((t) => t.dataset.page === state.page);
    const next = event.key === "ArrowRight" ? index + 1 : event.key === "ArrowLeft" ? index - 1 : null;
    if (next === null) return;
    const tab = tabs[(next + tabs.length) % tabs.length];
    show(tab.dataset.page); tab.focus();
  });
  document.addEventListener("keydown", (event) => {
    const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName);
    if (!typing && !event.ctrlKey && !event.metaKey && !event.altKey && "1234".includes(event.key) && !$("pages").hidden) {
      show(["playground", "dashboard", "router", "config"][Number(event.key) - 1]);
    }
  });
  $("chat-form").addEventListener("submit", send);
  $("message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("chat-form").requestSubmit();
  });
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("record").addEventListener("click", toggleRecording);
  $("clear").addEventListener("click", () => { state.conversation = []; $("messages").replaceChildren(); });
  $("preference").addEventListener("input", () => {
    const cost = 1 - Number($("preference").value) / 100;
    $("preference-value").textContent = `quality ${(1 - cost).toFixed(2)} / cost ${cost.toFixed(2)}`;
  });
  start();
});
