// centrifuge-js against a live Tidings server: history queries, connection token refresh
// and a private channel joined with a subscription token.
//
// Usage: node api.mjs '<json config>'
//   config: {wsUrl, channel, privateChannel, token, freshToken, subToken, tokenExpiresAt,
//            stepTimeoutMs}
//   `token` expires at `tokenExpiresAt` (unix seconds); `freshToken` is what getToken gives.
// The last line printed on stdout is a JSON summary; failures print {"ok": false, ...}.

import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';

const cfg = JSON.parse(process.argv[2] ?? '{}');
const STEP_TIMEOUT_MS = Number(cfg.stepTimeoutMs ?? 10000);
const frames = [];
const log = (...args) => process.stderr.write(`${args.join(' ')}\n`);

class LoggedWebSocket extends WebSocket {
  constructor(url, protocols) {
    super(url, protocols);
    this.on('message', (data) => frames.push({ dir: '<', frame: data.toString() }));
  }

  send(data, ...rest) {
    frames.push({ dir: '>', frame: String(data) });
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

function until(predicate, what, ms = STEP_TIMEOUT_MS) {
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
    ms,
  );
}

// Each frame may hold several newline-separated replies.
const replies = () =>
  frames
    .filter((f) => f.dir === '<')
    .flatMap((f) => f.frame.split('\n').filter(Boolean))
    .map((line) => JSON.parse(line));

const offsets = (result) => result.publications.map((p) => p.offset);

async function historyOrError(sub, opts) {
  try {
    const result = await withTimeout(sub.history(opts), `history ${JSON.stringify(opts)}`);
    return { offsets: offsets(result), offset: result.offset, epoch: result.epoch };
  } catch (err) {
    if (err && typeof err === 'object' && 'code' in err) return { error: err.code };
    throw err;
  }
}

const summary = { ok: false, step: 'start' };
const events = [];
let client;

try {
  let tokenCalls = 0;
  let subTokenCalls = 0;
  client = new Centrifuge(cfg.wsUrl, {
    websocket: LoggedWebSocket,
    token: cfg.token,
    getToken: async () => {
      tokenCalls += 1;
      return cfg.freshToken;
    },
    timeout: 5000,
  });
  client.on('connecting', (ctx) => events.push({ event: 'connecting', code: ctx.code }));
  client.on('disconnected', (ctx) => events.push({ event: 'disconnected', code: ctx.code }));
  client.on('error', (ctx) => events.push({ event: 'error', error: ctx.error?.message }));

  summary.step = 'connect';
  client.connect();
  await withTimeout(client.ready(), 'connected');
  const connectReply = replies().find((r) => r.connect)?.connect ?? null;
  summary.connectReply = connectReply && { expires: connectReply.expires, ttl: connectReply.ttl };

  // A private channel: the SDK asks getToken for a subscription token.
  summary.step = 'private-subscribe';
  const priv = client.newSubscription(cfg.privateChannel, {
    getToken: async () => {
      subTokenCalls += 1;
      return cfg.subToken;
    },
  });
  priv.on('error', (ctx) => events.push({ event: 'sub-error', error: ctx.error?.message }));
  priv.subscribe();
  await withTimeout(priv.ready(), 'private channel subscribed');
  await withTimeout(priv.publish({ secret: true }), 'publish to the private channel');
  summary.private = {
    state: priv.state,
    subTokenCalls,
    history: offsets(await withTimeout(priv.history({ limit: 10 }), 'private history')),
  };

  // History: five publications, then the queries a client makes.
  summary.step = 'history';
  const sub = client.newSubscription(cfg.channel);
  sub.subscribe();
  await withTimeout(sub.ready(), 'subscribed');
  for (let i = 1; i <= 5; i++) {
    await withTimeout(sub.publish({ i }), `publish ${i}`);
  }
  const top = await withTimeout(sub.history({ limit: 0 }), 'history position');
  const epoch = top.epoch;
  summary.history = {
    position: { offsets: offsets(top), offset: top.offset, epoch },
    first2: await historyOrError(sub, { limit: 2 }),
    all: await historyOrError(sub, { limit: 100 }),
    since2: await historyOrError(sub, { limit: 10, since: { offset: 2, epoch } }),
    sinceTop: await historyOrError(sub, { limit: 10, since: { offset: 5, epoch } }),
    latest2: await historyOrError(sub, { limit: 2, reverse: true }),
    before4: await historyOrError(sub, { limit: 10, since: { offset: 4, epoch }, reverse: true }),
    wrongEpoch: await historyOrError(sub, { limit: 10, since: { offset: 2, epoch: 'nope' } }),
  };

  // The connection token expires soon: the SDK refreshes it over the connection.
  summary.step = 'refresh';
  const msToExpiry = cfg.tokenExpiresAt * 1000 - Date.now();
  await until(
    () => replies().some((r) => r.refresh),
    'a refresh reply',
    Math.max(msToExpiry, 0) + STEP_TIMEOUT_MS,
  );
  // Stay connected past the first token's expiry.
  await new Promise((resolve) => setTimeout(resolve, Math.max(msToExpiry, 0) + 1500));
  const refreshReply = replies().find((r) => r.refresh).refresh;
  summary.refresh = {
    tokenCalls,
    refreshCommands: frames.filter((f) => f.dir === '>' && f.frame.includes('"refresh"')).length,
    reply: { expires: refreshReply.expires, ttl: refreshReply.ttl, client: refreshReply.client },
    clientId: connectReply.client,
    state: client.state,
    subscriptions: [priv.state, sub.state],
  };
  summary.events = events.slice();
  summary.step = 'done';
  summary.ok = true;
} catch (err) {
  summary.error = String(err?.stack ?? err);
  summary.events = events.slice();
  log('--- frames ---');
  for (const f of frames) log(JSON.stringify(f));
} finally {
  client?.disconnect();
}

process.stdout.write(`${JSON.stringify(summary)}\n`);
setTimeout(() => process.exit(summary.ok ? 0 : 1), 100).unref();
