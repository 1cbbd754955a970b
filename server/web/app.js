// The bark-stream try-it page: protocol v1 over /v1/stream (msgpack in binary frames), audio through an AudioWorklet.
//
// Three ways to send text: Speak (one `speak`), Stream like an LLM (`start`, then the text word by word as
// `text` messages, then `end`), and "speak as I type" (`start`, each typed addition as `text`, a newline adds
// a `flush`, Speak sends `end`). Stop sends `cancel` and silences what is queued. One request at a time.
//
// window.barkPage holds the state (what the tests read): `ready`, `current` and `finished` requests with the
// samples received against `done.samples`, TTFA and real-time factor as measured here and as the server saw them.

import { decode, encode } from "./msgpack.js";

const $ = (id) => document.getElementById(id);
const RATE = 24000; // the AudioContext runs at the model's rate: no resampling on the server, the browser converts
const RETRY_CODES = new Set([1001, 1006, 1011, 1012, 1013]); // closes worth reconnecting after

const page = { ready: null, connected: false, current: null, finished: [], played: 0, underruns: 0, level: -120, peakLevel: -120 };
window.barkPage = page;

let ws = null;
let connecting = null;
let reconnectDelay = 500;
let audio = null;
let counter = 0;
let live = null; // {req, sent}: the request "speak as I type" feeds

function log(text) { $("log").textContent = text; }
function setState(text) { $("state").textContent = text; }
function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

function setBadge(text, cls) {
  const el = $("connection");
  el.textContent = text;
  el.className = `badge ${cls || ""}`;
}

// --- connection -------------------------------------------------------------------------------------------

function socketUrl() {
  const key = $("key").value.trim();
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/v1/stream${key ? `?token=${encodeURIComponent(key)}` : ""}`;
}

function connect() {
  if (connecting) return connecting;
  connecting = new Promise((resolve, reject) => {
    let readySeen = false;
    const sock = new WebSocket(socketUrl());
    sock.binaryType = "arraybuffer";
    ws = sock;
    setBadge("connecting…");
    sock.onmessage = (event) => {
      if (!(event.data instanceof ArrayBuffer)) return;
      let msg;
      try {
        msg = decode(new Uint8Array(event.data));
      } catch (err) {
        log(`the server sent a frame this page cannot read: ${err.message}`);
        return;
      }
      if (msg.type === "ready") {
        readySeen = true;
        reconnectDelay = 500;
        onReady(msg);
        resolve(sock);
      } else {
        onMessage(msg);
      }
    };
    sock.onclose = (event) => {
      if (ws !== sock && ws !== null) return; // replaced (a new key): the new socket has the page now
      ws = null;
      connecting = null;
      page.connected = false;
      const why = `${event.code}${event.reason ? ` ${event.reason}` : ""}`;
      if (!readySeen) {
        setBadge("not connected", "bad");
        log("Cannot connect to /v1/stream. If the server needs an API key, open this page with ?token=KEY "
            + "or type the key under Settings.");
        reject(new Error(`connection failed (${why})`));
      } else {
        setBadge(`disconnected (${why})`, "bad");
      }
      if (page.current && !page.current.done) finish(page.current, null, `connection closed (${why})`);
      if (readySeen && RETRY_CODES.has(event.code)) {
        const delay = reconnectDelay;
        reconnectDelay = Math.min(reconnectDelay * 2, 10000);
        setTimeout(() => { if (!ws) connect().catch(() => {}); }, delay);
      }
    };
  });
  return connecting;
}

async function send(msg) {
  const sock = await connect();
  sock.send(encode(msg));
}

function onReady(msg) {
  page.ready = msg;
  page.connected = true;
  setBadge("connected", "ok");
  $("model").textContent = `${msg.model} · ${msg.sample_rate} Hz`;
  const select = $("voice");
  const chosen = select.value;
  select.replaceChildren(new Option("server default", ""));
  for (const name of msg.voices || []) select.add(new Option(name, name));
  const aliases = Object.keys(msg.voice_aliases || {});
  if (aliases.length) {
    const group = document.createElement("optgroup");
    group.label = "aliases";
    for (const name of aliases) group.append(new Option(`${name} (${msg.voice_aliases[name]})`, name));
    select.add(group);
  }
  select.value = [...select.options].some((o) => o.value === chosen) ? chosen : "";
}

// --- audio ------------------------------------------------------------------------------------------------

function prebufferSamples() {
  const ms = Number($("prebuffer").value);
  return Math.round((Number.isFinite(ms) && ms >= 0 ? ms : 200) * RATE / 1000);
}

function ensureAudio() {
  // Called from a click or key handler: the AudioContext is created (and resumed) inside the user gesture.
  if (!audio) {
    const ctx = new AudioContext({ sampleRate: RATE, latencyHint: "interactive" });
    audio = { ctx, node: null, ready: null };
    audio.ready = (async () => {
      await ctx.audioWorklet.addModule("/web/player-worklet.js");
      const node = new AudioWorkletNode(ctx, "pcm-player", {
        numberOfInputs: 0, numberOfOutputs: 1, outputChannelCount: [1],
        processorOptions: { prebuffer: prebufferSamples() },
      });
      node.connect(ctx.destination);
      node.port.onmessage = (event) => onPlayer(event.data);
      audio.node = node;
      return audio;
    })();
  }
  audio.ctx.resume();
  return audio.ready;
}

function onPlayer(msg) {
  if (msg.type === "stats") {
    page.played = msg.played;
    page.underruns = msg.underruns;
    // The meter shows what the player output (measured in the worklet, so it needs no analyser or animation
    // frame); peakLevel is the loudest reading since the current request began.
    page.level = msg.level;
    page.peakLevel = Math.max(page.peakLevel, msg.level);
    $("level").style.width = `${Math.max(0, Math.min(1, (msg.level + 60) / 60)) * 100}%`;
    $("buffer").textContent = `${Math.round(msg.buffered / RATE * 1000)} ms queued · ${msg.underruns} underrun`
      + `${msg.underruns === 1 ? "" : "s"}`;
    if (page.current && !page.current.done && msg.playing) setState("playing");
  } else if (msg.type === "drained" && !page.current) {
    setState(page.finished.length ? `done (${page.finished[page.finished.length - 1].reason})` : "idle");
  }
}

// --- requests ---------------------------------------------------------------------------------------------

function requestFields() {
  const fields = { encoding: "pcm_s16le" };
  if (page.ready && page.ready.sample_rate !== RATE) fields.sample_rate = RATE;
  const voice = $("voice").value;
  if (voice) fields.voice = voice;
  const raw = $("params").value.trim();
  if (raw && raw !== "{}") {
    let params;
    try {
      params = JSON.parse(raw);
    } catch (err) {
      throw new Error(`Settings › params is not valid JSON: ${err.message}`);
    }
    if (params === null || typeof params !== "object" || Array.isArray(params)) {
      throw new Error("Settings › params must be a JSON object, e.g. {\"seed\": 42}");
    }
    fields.params = params;
  }
  return fields;
}

async function begin(kind) {
  // Audio first (inside the gesture), then a clean slate: whatever was playing stops.
  const ready = ensureAudio();
  await stopCurrent();
  const fields = requestFields();
  await ready;
  await connect();
  audio.node.port.postMessage({ type: "reset" });
  audio.node.port.postMessage({ type: "prebuffer", samples: prebufferSamples() });
  const req = {
    id: `p${++counter}`, kind, t0: performance.now(), firstAudio: null, received: 0, seq: 0, segments: [],
    done: null, error: null, stopping: false,
  };
  req.finished = new Promise((resolve) => { req.resolve = resolve; });
  page.current = req;
  page.peakLevel = -120;
  log("");
  setState("waiting for audio");
  for (const id of ["ttfa", "ttfa-server", "rtf", "rtf-server", "audio", "samples"]) $(id).textContent = id.endsWith("server") ? "" : "–";
  $("stop").disabled = false;
  return { req, fields };
}

async function speak() {
  if (live) { // "speak as I type": Speak ends the typed request
    const { req } = live;
    live = null;
    if (req && !req.done) await send({ type: "end", id: req.id });
    return;
  }
  const text = $("text").value;
  if (!text.trim()) { log("Type some text first."); return; }
  const { req, fields } = await begin("speak");
  await send({ type: "speak", id: req.id, text, ...fields });
}

async function streamLikeLlm() {
  const text = $("text").value;
  if (!text.trim()) { log("Type some text first."); return; }
  const { req, fields } = await begin("stream");
  await send({ type: "start", id: req.id, ...fields });
  for (const piece of text.match(/\s*\S+\s*/g) || []) {
    if (page.current !== req || req.done || req.stopping) return;
    await send({ type: "text", id: req.id, text: piece });
    await sleep(60); // roughly an LLM's token rate
  }
  if (page.current === req && !req.done && !req.stopping) await send({ type: "end", id: req.id });
}

async function typed() {
  if (!$("live").checked) return;
  const value = $("text").value;
  if (!live) {
    if (!value.trim()) return;
    const pending = { req: null, sent: "" };
    live = pending;
    const { req, fields } = await begin("live");
    pending.req = req;
    await send({ type: "start", id: req.id, ...fields });
  }
  if (!live || !live.req) return;
  const { req } = live;
  let addition;
  if (value.startsWith(live.sent)) {
    addition = value.slice(live.sent.length);
  } else {
    log("Text already sent cannot be taken back; only what you add is spoken.");
    addition = value.length > live.sent.length ? value.slice(live.sent.length) : "";
  }
  live.sent = value;
  if (!addition) return;
  await send({ type: "text", id: req.id, text: addition });
  if (addition.includes("\n")) await send({ type: "flush", id: req.id });
}

async function stopCurrent() {
  const req = page.current;
  if (audio && audio.node) audio.node.port.postMessage({ type: "flush" });
  if (live && live.req && live.req === req) live = null;
  if (!req || req.done) return;
  req.stopping = true;
  setState("stopping");
  try {
    await send({ type: "cancel", id: req.id });
  } catch (err) {
    finish(req, null, err.message);
  }
  await Promise.race([req.finished, sleep(5000)]);
}

function onMessage(msg) {
  if (msg.type === "error" && msg.id === undefined) {
    log(`server: ${msg.code}: ${msg.message}`);
    return;
  }
  const req = page.current;
  if (!req || msg.id !== req.id) return; // a request this page already left
  if (msg.type === "audio") {
    const pcm = msg.pcm;
    const n = pcm.length >> 1;
    if (msg.seq !== req.seq || msg.sample !== req.received) {
      log(`audio out of order: seq ${msg.seq} at sample ${msg.sample}, expected ${req.seq} at ${req.received}`);
    }
    const view = new DataView(pcm.buffer, pcm.byteOffset, pcm.byteLength);
    const samples = new Float32Array(n);
    for (let i = 0; i < n; i++) samples[i] = view.getInt16(2 * i, true) / 32767;
    req.seq += 1;
    req.received += n;
    if (req.firstAudio === null) {
      req.firstAudio = performance.now();
      $("ttfa").textContent = `${Math.round(req.firstAudio - req.t0)} ms`;
    }
    if (!req.stopping) audio.node.port.postMessage({ type: "audio", samples }, [samples.buffer]);
    $("samples").textContent = `${req.received} received`;
    $("audio").textContent = `${(req.received / RATE).toFixed(2)} s`;
  } else if (msg.type === "segment") {
    req.segments.push(msg.text);
  } else if (msg.type === "error") {
    req.error = `${msg.code}: ${msg.message}`;
    log(`server: ${req.error}`);
  } else if (msg.type === "done") {
    finish(req, msg, null);
  }
}

function finish(req, done, failure) {
  req.done = done || { reason: "error", samples: req.received, stats: {} };
  if (failure) req.error = req.error || failure;
  const now = performance.now();
  const audioS = req.done.samples / RATE;
  const record = {
    id: req.id, kind: req.kind, reason: req.done.reason, received: req.received, samples: req.done.samples,
    ttfaMs: req.firstAudio === null ? null : req.firstAudio - req.t0,
    rtf: audioS > 0 ? (now - req.t0) / 1000 / audioS : null,
    serverTtfaMs: req.done.stats.ttfa_ms ?? null, serverRtf: req.done.stats.rtf ?? null,
    segments: req.segments, error: req.error,
  };
  page.finished.push(record);
  if (page.current === req) page.current = null;
  if (live && live.req === req) live = null;
  if (audio && audio.node) audio.node.port.postMessage({ type: "end" });
  $("stop").disabled = true;
  $("samples").textContent = `${record.received} received / ${record.samples} in done`
    + (record.received === record.samples ? " ✓" : " ✗");
  $("audio").textContent = `${audioS.toFixed(2)} s`;
  if (record.rtf !== null) $("rtf").textContent = record.rtf.toFixed(2);
  if (record.serverRtf !== null) $("rtf-server").textContent = `(server ${record.serverRtf.toFixed(2)})`;
  if (record.serverTtfaMs !== null) $("ttfa-server").textContent = `(server ${Math.round(record.serverTtfaMs)} ms)`;
  if (record.reason !== "end" || !req.stopping) setState(record.reason === "end" ? "playing out" : record.reason);
  if (failure) log(failure);
  req.resolve(record);
}

// --- wiring -------------------------------------------------------------------------------------------------

function guard(fn) {
  return (...args) => fn(...args).catch((err) => { log(err.message); setState("idle"); });
}

$("speak").addEventListener("click", guard(speak));
$("stream").addEventListener("click", guard(streamLikeLlm));
$("stop").addEventListener("click", guard(stopCurrent));
$("text").addEventListener("input", guard(typed));
$("live").addEventListener("change", guard(async () => {
  if ($("live").checked) {
    $("text").value = "";
    $("text").placeholder = "Type: each addition is spoken as it comes; Enter speaks what is pending, Speak ends.";
    $("text").focus();
  } else if (live) {
    await speak();
  }
}));
$("prebuffer").addEventListener("change", () => {
  if (audio && audio.node) audio.node.port.postMessage({ type: "prebuffer", samples: prebufferSamples() });
});
$("key").addEventListener("change", () => {
  const old = ws;
  ws = null;
  connecting = null;
  if (old) old.close(1000, "new key");
  connect().catch(() => {});
});

const token = new URLSearchParams(location.search).get("token");
if (token) $("key").value = token;
connect().catch(() => {});
