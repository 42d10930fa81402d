// Fan-out load generator: ONE node process, 'ws' client library.
// Copy of ../shared/bench/fanout/gen.js (team bench code) with one addition: --proto centrifuge
// (Centrifuge client protocol v2, JSON: connect + subscribe commands, publications pushed as
// {"push":{"channel":..,"pub":{"data":..,"offset":N}}}, server pings `{}` answered with `{}`,
// publishes sent as client `publish` commands from the publisher connection, offsets checked
// per subscriber), and --idle-only S (connect, hold S seconds, report RSS; no traffic).
// The 'ws' and 'sio' paths are unchanged.
// Opens N subscriber connections (+1 publisher), then:
//   warm-up burst (discarded), T "burst" trials (publisher sends M messages back-to-back,
//   as fast as its socket accepts), and one "lockstep" trial (publisher sends message i+1
//   only after all N clients got message i => latency without cross-message queueing).
// Every loop is bounded in count and time (per-trial timeout + global deadline).
// Usage: node gen.js --url ws://127.0.0.1:9001/ --proto ws|sio|centrifuge --n 1000 --m 200 --pid <serverpid>
//        [--token JWT] [--channel bench] [--idle-only SECONDS]
'use strict';
const WebSocket = require('ws');
const fs = require('fs');
const { performance } = require('perf_hooks');

const A = {};
for (let i = 2; i < process.argv.length; i += 2) A[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
const URL = A.url;
const PROTO = A.proto || 'ws';            // 'ws' = plain JSON protocol, 'sio' = socket.io/engine.io v4 over raw ws
const N = +(A.n || 1000);
const M = +(A.m || 200);
const TRIALS = +(A.trials || 3);
const WARM = +(A.warm || 20);
const LOCK = +(A.lock || 50);
const PID = +(A.pid || 0);
const CONC = +(A.conc || 100);             // max handshakes in flight
const TRIAL_TIMEOUT = +(A['trial-timeout'] || 180) * 1000;
const DEADLINE = +(A.deadline || 900) * 1000;
const CLK_TCK = +(A.clktck || 100);
const TOPIC = A.channel || 'bench';
const TOKEN = A.token || '';               // centrifuge: connection JWT ('' = anonymous connect)
// --parse fast (centrifuge only, cross-check of generator cost): read "ts" and the push's
// "offset" by byte search instead of JSON.parse (valid for this bench's fixed payload shape)
const FAST = A.parse === 'fast';
const PUB_MARK = Buffer.from('"pub":{"data":{');
const TS_KEY = Buffer.from('"ts":');
const OFF_KEY = Buffer.from('"offset":');
function numAfter(buf, key) {
  let i = buf.lastIndexOf(key);
  if (i < 0) return 0;
  i += key.length;
  let j = i;
  while (j < buf.length && buf[j] !== 0x2c && buf[j] !== 0x7d) j++;
  return +buf.latin1Slice(i, j);
}
const IDLE_ONLY = +(A['idle-only'] || 0);  // >0: connect, hold this many seconds sampling RSS, exit

const result = { url: URL, proto: PROTO, n: N, m: M, pid: PID, trials: [], errors: [] };
// centrifuge protocol bookkeeping (reported in result.centrifuge)
const cf = { pings: 0, pub_acks: 0, pub_errors: 0, pub_error_sample: null, reply_errors: 0,
             offset_gaps: 0, offset_dups: 0, other_pushes: 0, close_codes: {},
             push_frame_bytes: 0, sub_reply_sample: null, connect_reply_sample: null };
if (PROTO === 'centrifuge') result.centrifuge = cf;   // live object: also in a deadline dump
const dump = () => process.stdout.write(JSON.stringify(result) + '\n');
setTimeout(() => { result.errors.push('global deadline hit'); dump(); process.exit(3); }, DEADLINE);

function rssKB(pid) {
  try { return +/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]; } catch { return null; }
}
function cpuTicks(pid) {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return [+f[11], +f[12]];             // [utime, stime]
  } catch { return null; }
}
// per-core jiffies from /proc/stat: [user, nice, system, idle, iowait, irq, softirq, steal]
function coreTicks() {
  try {
    const o = {};
    for (const l of fs.readFileSync('/proc/stat', 'utf8').split('\n')) {
      const m = /^(cpu\d+) (.*)/.exec(l);
      if (m) o[m[1]] = m[2].trim().split(/\s+/).slice(0, 8).map(Number);
    }
    return o;
  } catch { return null; }
}
// CPU ticks of every other process (the machine may be shared): {pid: [ticks, comm]}
function otherTicks() {
  const o = {};
  let names;
  try { names = fs.readdirSync('/proc'); } catch { return null; }
  for (const d of names) {
    if (d.charCodeAt(0) > 57 || +d === PID || +d === process.pid) continue;
    try {
      const s = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
      o[d] = [+f[11] + +f[12], s.slice(s.indexOf('(') + 1, s.lastIndexOf(')'))];
    } catch { /* gone */ }
  }
  return o;
}
function foreign(a, b, wall) {   // other processes' CPU (cores) over the trial, top 3 by use
  if (!a || !b) return null;
  let tot = 0, kern = 0; const per = [];
  for (const [pid, [t, comm]] of Object.entries(b)) {
    const d = t - (a[pid] ? a[pid][0] : 0);   // new processes: all their ticks (approx.)
    if (d <= 0) continue;
    if (/^(ksoftirqd|kworker|rcu|migration|kcompactd|kswapd)/.test(comm)) kern += d;   // kernel threads (softirq work of the bench itself)
    else tot += d;
    per.push([d, comm]);
  }
  per.sort((x, y) => y[0] - x[0]);
  const f = (t) => +((t / CLK_TCK) / wall).toFixed(2);
  return { cpu: f(tot), kernel_threads: f(kern), top: per.slice(0, 3).map(([d, c]) => `${c}:${(d / CLK_TCK / wall).toFixed(2)}`) };
}
function coreShares(a, b) {   // fractions of each core's time over the trial
  if (!a || !b) return null;
  const out = {};
  for (const k of Object.keys(b)) {
    const d = b[k].map((v, i) => v - a[k][i]);
    const tot = Math.max(1, d.reduce((x, y) => x + y, 0));
    const f = (v) => +(v / tot).toFixed(2);
    out[k] = { user: f(d[0] + d[1]), sys: f(d[2]), idle: f(d[3] + d[4]), irq: f(d[5]), softirq: f(d[6]), steal: f(d[7]) };
  }
  return out;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// --phases 1: announce phases on stderr so an orchestrator can attach a profiler to one of them
const phase = (name) => { if (A.phases) process.stderr.write(`phase:${name}\n`); };

// ---------------- measurement state ----------------
let st = null;   // current trial: {lat: Float64Array, cnt, tLast, waitTarget, waitResolve}
let strays = 0;
function onPayload(ts, c) {
  const now = performance.now();
  c.recv++;
  if (!st) { strays++; return; }
  if (st.cnt < st.lat.length) st.lat[st.cnt] = now - ts;
  st.cnt++;
  st.tLast = now;
  if (st.waitResolve && st.cnt >= st.waitTarget) { const r = st.waitResolve; st.waitResolve = null; r(); }
}
function waitCount(target, timeoutMs) {
  if (st.cnt >= target) return Promise.resolve(true);
  return new Promise((res) => {
    const t = setTimeout(() => { st.waitResolve = null; res(false); }, timeoutMs);
    st.waitTarget = target;
    st.waitResolve = () => { clearTimeout(t); res(true); };
  });
}

// ---------------- clients ----------------
const clients = [];
let disconnects = 0;
function openClient(isPub) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(URL, { perMessageDeflate: false, skipUTF8Validation: true, handshakeTimeout: 30000 });
    const c = { ws, recv: 0, ready: false };
    const to = setTimeout(() => { ws.terminate(); reject(new Error('subscribe timeout')); }, 60000);
    const ready = () => { c.ready = true; clearTimeout(to); resolve(c); };
    ws.on('error', (e) => { if (!c.ready) { clearTimeout(to); reject(e); } });
    ws.on('close', (code) => { if (c.ready) disconnects++; cf.close_codes[code] = (cf.close_codes[code] || 0) + 1; });
    if (PROTO === 'ws') {
      ws.on('open', () => { if (isPub) ready(); else ws.send(`{"op":"sub","topic":"${TOPIC}"}`); });
      ws.on('message', (data) => {
        if (data[2] === 0x6f /* {"op":... control */) { if (!c.ready) ready(); return; }
        onPayload(JSON.parse(data).ts, c);
      });
    } else if (PROTO === 'centrifuge') {
      c.lastOff = 0;
      ws.on('open', () => ws.send(TOKEN ? `{"id":1,"connect":{"token":"${TOKEN}"}}` : '{"id":1,"connect":{}}'));
      const one = (buf) => {
        if (buf.length === 2 && buf[0] === 0x7b && buf[1] === 0x7d) { ws.send('{}'); cf.pings++; return; }  // ping -> pong
        if (FAST && buf[2] === 0x70 /* {"p... */ && buf.indexOf(PUB_MARK) > 0) {   // --parse fast: no JSON.parse of pushes
          const ts = numAfter(buf, TS_KEY), off = numAfter(buf, OFF_KEY);
          if (c.lastOff) {
            if (off === c.lastOff + 1) c.lastOff = off;
            else if (off <= c.lastOff) { cf.offset_dups++; return; }
            else { cf.offset_gaps++; c.lastOff = off; }
          } else c.lastOff = off;
          if (!cf.push_frame_bytes) cf.push_frame_bytes = buf.length;
          onPayload(ts, c);
          return;
        }
        const msg = JSON.parse(buf);
        const push = msg.push;
        if (push !== undefined) {
          const p = push.pub;
          if (p === undefined) { cf.other_pushes++; return; }
          const off = p.offset;
          if (c.lastOff) {
            if (off === c.lastOff + 1) c.lastOff = off;
            else if (off <= c.lastOff) { cf.offset_dups++; return; }
            else { cf.offset_gaps++; c.lastOff = off; }
          } else c.lastOff = off;
          if (!cf.push_frame_bytes) cf.push_frame_bytes = buf.length;
          onPayload(p.data.ts, c);
          return;
        }
        if (msg.error !== undefined) {
          if (msg.id >= 3) { cf.pub_errors++; if (!cf.pub_error_sample) cf.pub_error_sample = msg; }
          else { cf.reply_errors++; if (!c.ready) { clearTimeout(to); ws.terminate(); reject(new Error('reply error ' + JSON.stringify(msg))); } }
          return;
        }
        if (msg.id === 1) {                      // connect reply
          if (!cf.connect_reply_sample) cf.connect_reply_sample = msg;
          if (isPub) ready(); else ws.send(`{"id":2,"subscribe":{"channel":"${TOPIC}"}}`);
        } else if (msg.id === 2) {               // subscribe reply: stream position
          if (!cf.sub_reply_sample) cf.sub_reply_sample = msg;
          c.lastOff = msg.subscribe.offset || 0;
          ready();
        } else if (msg.id >= 3) cf.pub_acks++;   // publish reply {"id":k,"publish":{}}
      };
      ws.on('message', (data) => {
        if (data.indexOf(10) < 0) { one(data); return; }
        let start = 0;
        for (;;) {                               // newline-delimited replies/pushes in one frame
          const nl = data.indexOf(10, start);
          const part = data.subarray(start, nl < 0 ? data.length : nl);
          if (part.length) one(part);
          if (nl < 0) break;
          start = nl + 1;
        }
      });
    } else {
      ws.on('message', (data) => {
        const s = data.toString();
        const c0 = s.charCodeAt(0);
        if (c0 === 0x34 /* '4' socket.io message */) {
          const c1 = s.charCodeAt(1);
          if (c1 === 0x32 /* '2' EVENT */) { onPayload(JSON.parse(s.slice(2))[1].ts, c); }
          else if (c1 === 0x30 /* '0' CONNECT ok */) { if (isPub) ready(); else ws.send(`420["join","${TOPIC}"]`); }
          else if (c1 === 0x33 /* '3' ACK of join */) { ready(); }
        } else if (c0 === 0x32 /* '2' engine.io ping */) { ws.send('3'); }
        else if (c0 === 0x30 /* '0' engine.io open */) { ws.send('40'); }
      });
    }
  });
}

async function connectAll() {
  let next = 0, failed = 0;
  async function worker() {
    while (next < N) {
      next++;
      let ok = false;
      for (let attempt = 0; attempt < 3 && !ok; attempt++) {
        try { clients.push(await openClient(false)); ok = true; } catch (e) { if (attempt === 2) { failed++; result.errors.push('connect: ' + e.message); } }
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(CONC, N) }, worker));
  return failed;
}

// ---------------- publisher ----------------
let pub;
let pubId = 3;
const PAD = 'x'.repeat(56);   // payload {"seq":123,"ts":12345.678901234,"pad":"x..."} ~= 100 bytes
function sendPub(seq) {
  const data = { seq, ts: performance.now(), pad: PAD };
  if (PROTO === 'centrifuge') { pub.ws.send(`{"id":${pubId++},"publish":{"channel":"${TOPIC}","data":${JSON.stringify(data)}}}`); return; }
  pub.ws.send(PROTO === 'ws' ? JSON.stringify({ op: 'pub', topic: TOPIC, data }) : '42' + JSON.stringify(['pub', data]));
}

function pct(lat, n, ps) {
  const a = lat.subarray(0, n).sort();
  return ps.map((p) => +a[Math.min(n - 1, Math.floor(p * n))].toFixed(3));
}

async function trial(kind, m) {
  const expected = N * m;
  for (const c of clients) c.recv = 0;
  st = { lat: new Float64Array(expected), cnt: 0, tLast: 0, waitTarget: 0, waitResolve: null };
  const cpu0 = cpuTicks(PID), g0 = process.cpuUsage();
  const k0 = coreTicks();
  const o0 = otherTicks();
  const t0 = performance.now();
  let complete = true;
  const perMsg = [];   // lockstep: ms from send until the N-th delivery of each message
  if (kind === 'lockstep') {
    for (let i = 0; i < m; i++) {
      const ts = performance.now();
      sendPub(i);
      if (!(await waitCount(N * (i + 1), 30000))) { complete = false; break; }
      perMsg.push(+(performance.now() - ts).toFixed(1));
      if (performance.now() - t0 > TRIAL_TIMEOUT) { complete = false; break; }
    }
  } else {
    for (let i = 0; i < m; i++) sendPub(i);
    complete = await waitCount(expected, TRIAL_TIMEOUT);
  }
  const cpu1 = cpuTicks(PID), g1 = process.cpuUsage(g0);
  const k1 = coreTicks();
  const o1 = otherTicks();
  const dt = (st.tLast - t0) / 1000;
  const wall = (performance.now() - t0) / 1000;
  let mn = Infinity, mx = 0;
  for (const c of clients) { if (c.recv < mn) mn = c.recv; if (c.recv > mx) mx = c.recv; }
  const [p50, p99, p999] = st.cnt ? pct(st.lat, Math.min(st.cnt, expected), [0.5, 0.99, 0.999]) : [null, null, null];
  const r = {
    kind, m, expected, received: st.cnt, complete, seconds: +dt.toFixed(4),
    deliveries_per_s: Math.round(st.cnt / dt), p50_ms: p50, p99_ms: p99, p999_ms: p999,
    min_per_client: mn, max_per_client: mx,
    server_cpu_util: cpu0 != null ? +(((cpu1[0] + cpu1[1] - cpu0[0] - cpu0[1]) / CLK_TCK) / wall).toFixed(2) : null,
    server_sys_frac: cpu0 != null ? +((cpu1[1] - cpu0[1]) / Math.max(1, cpu1[0] + cpu1[1] - cpu0[0] - cpu0[1])).toFixed(2) : null,
    gen_cpu_util: +(((g1.user + g1.system) / 1e6) / wall).toFixed(2),
    gen_sys_frac: +(g1.system / Math.max(1, g1.user + g1.system)).toFixed(2),
    server_rss_kb_after: rssKB(PID),
    cores: coreShares(k0, k1),
    foreign: foreign(o0, o1, (performance.now() - t0) / 1000),
    ...(kind === 'lockstep' ? { per_msg_ms: perMsg } : {}),
  };
  st = null;
  return r;
}

(async () => {
  result.rss_kb_before = rssKB(PID);
  const tc = performance.now();
  const failed = await connectAll();
  result.connect_s = +((performance.now() - tc) / 1000).toFixed(2);
  result.connected = clients.length;
  if (failed) { result.errors.push(`${failed} clients failed to connect`); dump(); process.exit(2); }
  pub = await openClient(true);
  await sleep(2000);
  result.rss_kb_idle = rssKB(PID);
  result.kb_per_conn = +((result.rss_kb_idle - result.rss_kb_before) / N).toFixed(2);
  if (IDLE_ONLY > 0) {                     // hold the idle connections (pings keep flowing), sample RSS
    const samples = [];
    const t0 = performance.now();
    while (performance.now() - t0 < IDLE_ONLY * 1000) { await sleep(1000); samples.push(rssKB(PID)); }
    result.idle_rss_samples_kb = samples;
    result.rss_kb_idle_end = samples[samples.length - 1];
    result.rss_kb_idle_max = Math.max(...samples);
    result.kb_per_conn_end = +((result.rss_kb_idle_end - result.rss_kb_before) / N).toFixed(2);
    result.kb_per_conn_max = +((result.rss_kb_idle_max - result.rss_kb_before) / N).toFixed(2);
    result.disconnects = disconnects;
    dump();
    process.exit(0);
  }
  result.warmup = await trial('burst', WARM);
  await sleep(500);
  phase('trials');
  for (let t = 0; t < TRIALS; t++) { result.trials.push(await trial('burst', M)); await sleep(1000); }
  phase('lockstep');
  result.lockstep = await trial('lockstep', LOCK);
  phase('done');
  result.strays = strays;
  result.disconnects = disconnects;
  if (PROTO === 'centrifuge') await sleep(500);   // last publish acks
  else result.close_codes = cf.close_codes;
  result.gen_rss_kb = Math.round(process.memoryUsage().rss / 1024);
  dump();
  process.exit(0);
})().catch((e) => { result.errors.push(String(e && e.stack || e)); dump(); process.exit(1); });
