// centrifuge-js (the official JavaScript SDK, JSON protocol) against a live Tidings server.
//
// Usage: node scenario.mjs '<json config>'
//   config: {wsUrl, httpUrl, apiKey, channel, user, token, observerToken, missed, idleMs,
//            stepTimeoutMs, debug, dumpFrames}
//
// Two clients: `user` (the one under test, with `token`) and an observer (with
// `observerToken`, another user) that stays connected all along.
//  1. both connect and subscribe to `channel`;
//  2. the user publishes from the client and sees its own publication (with its user info);
//  3. presence lists both users, presence stats count them, history has the publication;
//  4. the user's socket is cut abruptly (no close frame: an abnormal closure, 1006), and
//     its reconnects are held back while `missed` events are published through
//     POST /v1/events; the observer sees them all live;
//  5. the reconnects are let through: the user resubscribes from its last position, must
//     be told `recovered: true` and be handed exactly the missed publications;
//  6. one more event is published and arrives live; the observer, which asked for join
//     and leave messages, saw the user leave and come back;
//  7. the connection idles for `idleMs`: server pings are answered, nothing is closed.
// The last line printed on stdout is a JSON summary; failures print {"ok": false, ...}.
// Diagnostics (the user's WebSocket frames, SDK debug lines) go to stderr.

import net from 'node:net';
import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';

const cfg = JSON.parse(process.argv[2] ?? '{}');
const STEP_TIMEOUT_MS = Number(cfg.stepTimeoutMs ?? 10000);
const MISSED = Number(cfg.missed ?? 5);

const frames = []; // the user's WebSocket traffic, for the failure report
const log = (...args) => process.stderr.write(`${args.join(' ')}\n`);

// While the gate is shut, the user's sockets go to a local listener that drops every
// connection at once: the SDK sees transport failures and keeps retrying, as it would
// while the network is down, and reconnects for real once the gate opens.
const blackhole = net.createServer((socket) => socket.destroy());
await new Promise((resolve) => blackhole.listen(0, '127.0.0.1', resolve));
const blackholeUrl = `ws://127.0.0.1:${blackhole.address().port}/connection/websocket`;
const gate = { open: true, attemptsWhileShut: 0 };
const sockets = [];

class GatedWebSocket extends WebSocket {
  constructor(url, protocols) {
    const target = gate.open ? url : blackholeUrl;
    if (!gate.open) gate.attemptsWhileShut += 1;
    super(target, protocols);
    sockets.push(this);
    const id = sockets.length;
    frames.push({ socket: id, event: 'dial', target: gate.open ? 'server' : 'blackhole' });
    this.on('message', (data) => frames.push({ socket: id, dir: '<', frame: data.toString() }));
    this.on('close', (code, reason) =>
      frames.push({ socket: id, event: 'close', code, reason: reason.toString() }),
    );
    this.on('error', (err) => frames.push({ socket: id, event: 'error', error: String(err) }));
  }

  send(data, ...rest) {
    frames.push({ socket: sockets.indexOf(this) + 1, dir: '>', frame: String(data) });
    return super.send(data, ...rest);
  }
}

function withTimeout(promise, what, ms = STEP_TIMEOUT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Resolves when `predicate()` holds (checked every few milliseconds).
function until(predicate, what) {
  return withTimeout(
    new Promise((resolve) => {
      const check = () => {
        if (predicate()) {
          clearInterval(timer);
          resolve();
        }
      };
      const timer = setInterval(check, 10);
      check();
    }),
    what,
  );
}

function record(sub, sink) {
  sub.on('publication', (ctx) => {
    sink.pubs.push({
      offset: ctx.offset,
      data: ctx.data,
      user: ctx.info ? ctx.info.user : null,
      recovering: sink.recovering,
    });
  });
  sub.on('subscribed', (ctx) => {
    sink.subscribed.push({
      recoverable: ctx.recoverable,
      positioned: ctx.positioned,
      wasRecovering: ctx.wasRecovering,
      recovered: ctx.recovered,
      hasStreamPosition: Boolean(ctx.streamPosition),
      offset: ctx.streamPosition ? ctx.streamPosition.offset : null,
      epoch: ctx.streamPosition ? ctx.streamPosition.epoch : null,
    });
    // The SDK hands over the publications recovered by this subscribe synchronously,
    // right after this event: mark them, then stop marking on the next turn.
    sink.recovering = Boolean(ctx.wasRecovering);
    setImmediate(() => {
      sink.recovering = false;
    });
  });
  sub.on('subscribing', (ctx) => sink.subscribing.push({ code: ctx.code, reason: ctx.reason }));
  sub.on('error', (ctx) => sink.errors.push(String(ctx.error?.message ?? ctx.error)));
}

async function postEvent(payload) {
  const res = await fetch(`${cfg.httpUrl}/v1/events`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${cfg.apiKey}` },
    body: JSON.stringify({ type: 'e2e.js', channels: [cfg.channel], payload }),
  });
  if (res.status !== 202) {
    throw new Error(`POST /v1/events: ${res.status} ${await res.text()}`);
  }
  return res.json();
}

const summary = { ok: false, step: 'start', channel: cfg.channel, user: cfg.user };
const user = {
  pubs: [],
  subscribed: [],
  subscribing: [],
  errors: [],
  recovering: false,
  states: [],
};
const observer = {
  pubs: [],
  subscribed: [],
  subscribing: [],
  errors: [],
  recovering: false,
  joins: [],
  leaves: [],
};
const clients = [];

try {
  const client = new Centrifuge(cfg.wsUrl, {
    websocket: GatedWebSocket,
    token: cfg.token,
    name: 'tidings-e2e-js',
    minReconnectDelay: 50,
    maxReconnectDelay: 300,
    timeout: 5000,
    debug: Boolean(cfg.debug),
  });
  const watcher = new Centrifuge(cfg.wsUrl, {
    websocket: WebSocket,
    token: cfg.observerToken,
    timeout: 5000,
  });
  clients.push(client, watcher);
  // The user's client reports its failed dials while the gate is shut: kept apart.
  const userClientErrors = [];
  client.on('error', (ctx) => userClientErrors.push(String(ctx.error?.message)));
  watcher.on('error', (ctx) => observer.errors.push(`client: ${ctx.error?.message}`));
  summary.userClientErrors = userClientErrors;
  client.on('state', (ctx) => user.states.push(ctx.newState));
  const disconnects = [];
  const connects = [];
  client.on('connecting', (ctx) => disconnects.push({ code: ctx.code, reason: ctx.reason }));
  client.on('connected', (ctx) => connects.push({ client: ctx.client, transport: ctx.transport }));

  // 1. Connect and subscribe.
  summary.step = 'connect';
  watcher.connect();
  client.connect();
  await withTimeout(Promise.all([client.ready(), watcher.ready()]), 'both clients connected');
  summary.clientId = connects[0]?.client ?? null;

  summary.step = 'subscribe';
  const sub = client.newSubscription(cfg.channel, { recoverable: true, positioned: true });
  const obs = watcher.newSubscription(cfg.channel, {
    recoverable: true,
    positioned: true,
    joinLeave: true,
  });
  obs.on('join', (ctx) => observer.joins.push({ user: ctx.info.user, client: ctx.info.client }));
  obs.on('leave', (ctx) => observer.leaves.push({ user: ctx.info.user, client: ctx.info.client }));
  record(sub, user);
  record(obs, observer);
  // The observer first, so that it sees the user join.
  obs.subscribe();
  await withTimeout(obs.ready(), 'observer subscribed');
  sub.subscribe();
  await withTimeout(sub.ready(), 'user subscribed');
  summary.firstSubscribe = user.subscribed[0];

  // 2. Publish from the client; the publication comes back to the publisher.
  summary.step = 'publish';
  const marker = `self-${Date.now()}`;
  await withTimeout(sub.publish({ kind: 'self', marker }), 'publish reply');
  await until(() => user.pubs.length >= 1, 'own publication');
  await until(() => observer.pubs.length >= 1, 'observer publication');
  summary.selfPublication = user.pubs[0];

  // 3. Presence, presence stats, history.
  summary.step = 'presence';
  const presence = await withTimeout(sub.presence(), 'presence');
  summary.presence = Object.values(presence.clients).map((info) => ({
    client: info.client,
    user: info.user,
  }));
  summary.presenceStats = await withTimeout(sub.presenceStats(), 'presence stats');

  summary.step = 'history';
  const history = await withTimeout(sub.history({ limit: 10 }), 'history');
  summary.history = {
    offset: history.offset,
    epoch: history.epoch,
    publications: history.publications.map((p) => ({ offset: p.offset, data: p.data })),
  };

  // 4. Cut the socket without a close frame, hold the reconnects back, publish meanwhile.
  summary.step = 'disconnect';
  gate.open = false;
  const live = sockets.at(-1);
  live.terminate();
  await until(() => client.state === 'connecting', 'client connecting');
  summary.disconnect = disconnects.at(-1) ?? null;

  summary.step = 'publish-while-disconnected';
  const before = observer.pubs.length;
  const accepted = [];
  for (let i = 1; i <= MISSED; i++) {
    accepted.push((await postEvent({ kind: 'missed', seq: i })).id);
  }
  summary.acceptedEventIds = accepted;
  await until(
    () => observer.pubs.length >= before + MISSED,
    `observer got ${MISSED} publications while the user was away`,
  );
  // The SDK must have tried (and failed) to reconnect while the gate was shut: the
  // resubscribe below is then a real reconnect after an outage.
  await until(() => gate.attemptsWhileShut > 0, 'a reconnect attempt while disconnected');
  summary.attemptsWhileDisconnected = gate.attemptsWhileShut;
  if (user.pubs.length !== 1) {
    throw new Error(`user got ${user.pubs.length - 1} publications while disconnected`);
  }

  // 5. Reconnect and recover.
  summary.step = 'recover';
  const subscribedBefore = user.subscribed.length;
  gate.open = true;
  await until(
    () => user.subscribed.length > subscribedBefore && user.pubs.length >= 1 + MISSED,
    'resubscribed with the missed publications',
  );
  summary.resubscribe = user.subscribed.at(-1);
  summary.reconnectedClientId = connects.at(-1)?.client ?? null;

  // 6. A live publication after the recovery.
  summary.step = 'live-after-recovery';
  await postEvent({ kind: 'after', seq: MISSED + 1 });
  await until(() => user.pubs.length >= MISSED + 2, 'live publication');
  // The observer saw the user leave (its cut socket) and join again.
  await until(
    () =>
      observer.joins.filter((j) => j.user === cfg.user).length >= 2 &&
      observer.leaves.filter((l) => l.user === cfg.user).length >= 1,
    'the observer saw the user join, leave and join again',
  );
  // Give any duplicate a moment to show up.
  await new Promise((resolve) => setTimeout(resolve, 300));
  summary.observerJoins = observer.joins;
  summary.observerLeaves = observer.leaves;

  // 7. Idle: the server's pings get the SDK's pongs, and the connection stays up.
  summary.step = 'idle';
  const idleMs = Number(cfg.idleMs ?? 0);
  const connectsBefore = connects.length;
  const framesBefore = frames.length;
  await new Promise((resolve) => setTimeout(resolve, idleMs));
  const idleFrames = frames.slice(framesBefore);
  summary.idle = {
    ms: idleMs,
    pings: idleFrames.filter((f) => f.dir === '<' && f.frame === '{}').length,
    pongs: idleFrames.filter((f) => f.dir === '>' && f.frame === '{}').length,
    closes: idleFrames.filter((f) => f.event === 'close').length,
    reconnects: connects.length - connectsBefore,
    state: client.state,
  };

  summary.publications = user.pubs;
  summary.observerPublications = observer.pubs;
  summary.recoveredCount = user.pubs.filter((p) => p.recovering).length;
  summary.connects = connects.length;
  summary.subscribing = user.subscribing;
  summary.errors = user.errors.concat(observer.errors);
  summary.step = 'done';
  summary.ok = true;
} catch (err) {
  summary.error = String(err?.stack ?? err);
  summary.publications = user.pubs;
  summary.observerPublications = observer.pubs;
  summary.subscribed = user.subscribed;
  summary.subscribing = user.subscribing;
  summary.errors = user.errors.concat(observer.errors);
  summary.states = user.states;
  log('--- frames of the user connection ---');
  for (const f of frames) log(JSON.stringify(f));
} finally {
  for (const c of clients) c.disconnect();
  blackhole.close();
}

if (cfg.dumpFrames) {
  for (const f of frames) log(JSON.stringify(f));
}
process.stdout.write(`${JSON.stringify(summary)}\n`);
// Don't wait for timers the SDK may leave behind.
setTimeout(() => process.exit(summary.ok ? 0 : 1), 100).unref();
