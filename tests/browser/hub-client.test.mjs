// Protocol-level tests of static/hub-client.js against a scripted fake hub (no server, no browser).
import { test } from "node:test";
import assert from "node:assert/strict";
import { FakeHub, message, welcome } from "./lib/fake-websocket.mjs";
import { loadHubClient } from "./lib/load-client.mjs";

const { HubClient, HubError } = await loadHubClient();

/** A client wired to a fresh fake hub, with fast timings and a recorded token provider. */
function setup(options = {}) {
  const hub = new FakeHub();
  const tokenCalls = [];
  let n = 0;
  const client = new HubClient({
    url: "ws://hub.test/ws",
    WebSocket: hub.WebSocket,
    getToken: async (ctx) => {
      tokenCalls.push(ctx.reason);
      return `token-${++n}`;
    },
    requestTimeoutMs: 300,
    minReconnectDelayMs: 10,
    maxReconnectDelayMs: 80,
    idlePingMs: 0,
    ...options,
  });
  const states = [];
  client.on("state", (s) => states.push(s));
  return { hub, client, tokenCalls, states };
}

async function connected(hub, client, n = 0, frame = welcome()) {
  const ws = await hub.socket(n);
  ws.push(frame);
  assert.equal(client.state, "connected");
  return ws;
}

test("connects with the token in the query and reports state and welcome", async (t) => {
  const { hub, client, states, tokenCalls } = setup();
  t.after(() => client.close());
  const welcomes = [];
  client.on("welcome", (w) => welcomes.push(w));
  client.connect();
  const ws = await hub.socket(0);
  assert.equal(new URL(ws.url).pathname, "/ws");
  assert.equal(ws.token, "token-1");
  assert.deepEqual(tokenCalls, ["connect"]);
  assert.equal(client.state, "connecting");
  ws.push(welcome());
  assert.deepEqual(states.map((s) => s.state), ["connecting", "connected"]);
  assert.equal(states[1].node, "n1");
  assert.equal(welcomes.length, 1);
});

test("replies are matched by id in any order; error replies reject with the hub's code", async (t) => {
  const { hub, client } = setup();
  t.after(() => client.close());
  client.connect();
  const ws = await connected(hub, client);
  const pub = client.publish("chat:lobby", { text: "hi" }, { eventType: "chat.message" });
  const hist = client.history("chat:lobby", { limit: 5 });
  const p = await hub.request(ws, "publish");
  const h = await hub.request(ws, "history");
  assert.deepEqual(p.data, { text: "hi" });
  assert.equal(p.event_type, "chat.message");
  assert.equal(h.limit, 5);
  assert.notEqual(p.id, h.id);
  ws.push({ type: "history", id: h.id, channel: "chat:lobby", offset: 3, epoch: "e", publications: [] });
  ws.push({ type: "error", id: p.id, code: "forbidden", message: "no publish permission" });
  assert.equal((await hist).offset, 3);
  await assert.rejects(pub, (err) => {
    assert.ok(err instanceof HubError);
    assert.equal(err.code, "forbidden");
    assert.equal(err.message, "no publish permission");
    return true;
  });
});

test("a request without a reply times out; requests made while connecting wait for welcome", async (t) => {
  const { hub, client } = setup();
  t.after(() => client.close());
  client.connect();
  const early = client.ping();
  const ws = await hub.socket(0);
  assert.equal(ws.sent.length, 0, "nothing is sent before welcome");
  ws.push(welcome());
  const ping = await hub.request(ws, "ping");
  ws.push({ type: "pong", id: ping.id });
  assert.equal(typeof (await early), "number");
  await assert.rejects(client.presence("chat:lobby"), { code: "timeout" });
});

test("tracks offsets, drops duplicates, resubscribes with recover and delivers the gap in order", async (t) => {
  const { hub, client } = setup();
  t.after(() => client.close());
  const got = [];
  const subscribedInfo = [];
  client.connect();
  let ws = await connected(hub, client);
  const ready = client.subscribe("chat:lobby", {
    onMessage: (m) => got.push(m.offset),
    onSubscribed: (info) => subscribedInfo.push(info),
  });
  let sub = await hub.request(ws, "subscribe");
  assert.equal(sub.recover, undefined);
  ws.push({ type: "subscribed", id: sub.id, channel: "chat:lobby", offset: 4, epoch: "A", recovered: false, publications: [] });
  assert.deepEqual(await ready, { channel: "chat:lobby", offset: 4, epoch: "A", recovered: false, resubscribe: false });
  ws.push(message("chat:lobby", 5, "A"));
  ws.push(message("chat:lobby", 5, "A")); // duplicate
  ws.push(message("chat:lobby", 6, "A"));
  ws.push(message("other:channel", 7, "A")); // not subscribed: ignored
  assert.deepEqual(got, [5, 6]);

  ws.serverClose(1006);
  assert.equal(client.state, "disconnected");
  ws = await connected(hub, client, 1);
  assert.equal(ws.token, "token-1", "a network drop reuses the token");
  sub = await hub.request(ws, "subscribe");
  assert.deepEqual(sub.recover, { offset: 6, epoch: "A" });
  ws.push({
    type: "subscribed", id: sub.id, channel: "chat:lobby", offset: 9, epoch: "A", recovered: true,
    publications: [message("chat:lobby", 6, "A"), message("chat:lobby", 7, "A"), message("chat:lobby", 8, "A"), message("chat:lobby", 9, "A")],
  });
  ws.push(message("chat:lobby", 9, "A"));
  ws.push(message("chat:lobby", 10, "A"));
  assert.deepEqual(got, [5, 6, 7, 8, 9, 10]);
  assert.equal(subscribedInfo.at(-1).resubscribe, true);
  assert.equal(subscribedInfo.at(-1).recovered, true);
});

test("recovered:false after having seen the channel signals recovery failure", async (t) => {
  const { hub, client } = setup();
  t.after(() => client.close());
  const failures = [];
  const events = [];
  client.on("recovery_failed", (e) => events.push(e));
  client.connect();
  let ws = await connected(hub, client);
  client.subscribe("chat:lobby", { onRecoveryFailed: (info) => failures.push(info) });
  let sub = await hub.request(ws, "subscribe");
  ws.push({ type: "subscribed", id: sub.id, channel: "chat:lobby", offset: 2, epoch: "A", recovered: false, publications: [] });
  assert.equal(failures.length, 0, "a first subscribe is not a failed recovery");
  ws.serverClose(1001, "going away");
  ws = await connected(hub, client, 1);
  sub = await hub.request(ws, "subscribe");
  assert.deepEqual(sub.recover, { offset: 2, epoch: "A" });
  ws.push({ type: "subscribed", id: sub.id, channel: "chat:lobby", offset: 0, epoch: "B", recovered: false, publications: [] });
  assert.equal(failures.length, 1);
  assert.deepEqual(failures[0].previous, { offset: 2, epoch: "A" });
  assert.deepEqual(failures[0].current, { offset: 0, epoch: "B" });
  assert.equal(events.length, 1);
});

test("a push from another epoch counts as recovery failure and is still delivered", async (t) => {
  const { hub, client } = setup();
  t.after(() => client.close());
  const failures = [];
  const got = [];
  client.connect();
  const ws = await connected(hub, client);
  client.subscribe("chat:lobby", { onMessage: (m) => got.push(`${m.epoch}${m.offset}`), onRecoveryFailed: (f) => failures.push(f.reason) });
  const sub = await hub.request(ws, "subscribe");
  ws.push({ type: "subscribed", id: sub.id, channel: "chat:lobby", offset: 7, epoch: "A", recovered: false, publications: [] });
  ws.push(message("chat:lobby", 1, "B"));
  ws.push(message("chat:lobby", 2, "B"));
  assert.deepEqual(failures, ["epoch changed"]);
  assert.deepEqual(got, ["B1", "B2"]);
});

test("subscribe with a known position (from history) recovers from it on the first subscribe", async (t) => {
  const { hub, client } = setup();
  t.after(() => client.close());
  const got = [];
  client.connect();
  const ws = await connected(hub, client);
  const ready = client.subscribe("chat:lobby", { since: { offset: 3, epoch: "A" }, onMessage: (m) => got.push(m.offset) });
  const sub = await hub.request(ws, "subscribe");
  assert.deepEqual(sub.recover, { offset: 3, epoch: "A" });
  ws.push({ type: "subscribed", id: sub.id, channel: "chat:lobby", offset: 4, epoch: "A", recovered: true, publications: [message("chat:lobby", 4, "A")] });
  await ready;
  assert.deepEqual(got, [4]);
});

test("join and leave pushes reach the subscription's handlers; unsubscribe stops deliveries", async (t) => {
  const { hub, client } = setup();
  t.after(() => client.close());
  const seen = [];
  client.connect();
  const ws = await connected(hub, client);
  const ready = client.subscribe("chat:lobby", {
    onJoin: (j) => seen.push(`join:${j.user}`),
    onLeave: (l) => seen.push(`leave:${l.user}`),
    onMessage: (m) => seen.push(`msg:${m.offset}`),
  });
  const sub = await hub.request(ws, "subscribe");
  ws.push({ type: "subscribed", id: sub.id, channel: "chat:lobby", offset: 0, epoch: "A", recovered: false, publications: [] });
  await ready;
  ws.push({ type: "join", channel: "chat:lobby", client: "c2", user: "bob", info: {} });
  ws.push({ type: "leave", channel: "chat:lobby", client: "c2", user: "bob", info: {} });
  const done = client.unsubscribe("chat:lobby");
  const unsub = await hub.request(ws, "unsubscribe");
  ws.push({ type: "unsubscribed", id: unsub.id, channel: "chat:lobby" });
  await done;
  ws.push(message("chat:lobby", 1, "A"));
  assert.deepEqual(seen, ["join:bob", "leave:bob"]);
  assert.deepEqual(client.channels, []);
});

test("two subscribers of one channel share one hub subscription and each gets every event", async (t) => {
  const { hub, client } = setup();
  t.after(() => client.close());
  const seen = [];
  client.connect();
  const ws = await connected(hub, client);
  const list = { onMessage: (m) => seen.push(`list:${m.offset}`), onJoin: (j) => seen.push(`list:join:${j.user}`) };
  const badge = { onMessage: (m) => seen.push(`badge:${m.offset}`), onJoin: (j) => seen.push(`badge:join:${j.user}`) };
  const first = client.subscribe("chat:lobby", list);
  const second = client.subscribe("chat:lobby", badge);
  const sub = await hub.request(ws, "subscribe");
  ws.push({ type: "subscribed", id: sub.id, channel: "chat:lobby", offset: 0, epoch: "A", recovered: false, publications: [] });
  assert.deepEqual(await first, await second);
  assert.equal(ws.sent.filter((f) => f.type === "subscribe").length, 1, "one subscribe frame for both");
  ws.push(message("chat:lobby", 1, "A"));
  ws.push({ type: "join", channel: "chat:lobby", client: "c2", user: "bob", info: {} });
  assert.deepEqual(seen, ["list:1", "badge:1", "list:join:bob", "badge:join:bob"]);
});

test("unsubscribing one subscriber keeps the channel for the others; the last one ends it", async (t) => {
  const { hub, client } = setup();
  t.after(() => client.close());
  const seen = [];
  client.connect();
  const ws = await connected(hub, client);
  const list = { onMessage: (m) => seen.push(`list:${m.offset}`) };
  const badge = { onMessage: (m) => seen.push(`badge:${m.offset}`) };
  const ready = client.subscribe("chat:lobby", list);
  client.subscribe("chat:lobby", badge);
  const sub = await hub.request(ws, "subscribe");
  ws.push({ type: "subscribed", id: sub.id, channel: "chat:lobby", offset: 0, epoch: "A", recovered: false, publications: [] });
  await ready;
  await client.unsubscribe("chat:lobby", list);
  assert.equal(ws.sent.filter((f) => f.type === "unsubscribe").length, 0, "still subscribed for the badge");
  assert.deepEqual(client.channels, ["chat:lobby"]);
  ws.push(message("chat:lobby", 1, "A"));
  assert.deepEqual(seen, ["badge:1"]);
  const done = client.unsubscribe("chat:lobby", badge);
  const unsub = await hub.request(ws, "unsubscribe");
  ws.push({ type: "unsubscribed", id: unsub.id, channel: "chat:lobby" });
  await done;
  ws.push(message("chat:lobby", 2, "A"));
  assert.deepEqual(seen, ["badge:1"]);
  assert.deepEqual(client.channels, []);
});

test("a refused subscribe rejects with the hub's error and is forgotten", async (t) => {
  const { hub, client } = setup();
  t.after(() => client.close());
  client.connect();
  const ws = await connected(hub, client);
  const ready = client.subscribe("secret:x");
  const sub = await hub.request(ws, "subscribe");
  ws.push({ type: "error", id: sub.id, code: "forbidden", message: "not allowed" });
  await assert.rejects(ready, { code: "forbidden", message: "not allowed" });
  assert.deepEqual(client.channels, []);
});

// [code, reason, the first backoff's ceiling with minReconnectDelayMs 10 and maxReconnectDelayMs 80]:
// a node going away (1001) or restarting (1012) drops all its clients at once, so their first
// retry is spread wider (4 × the minimum); "try again later" (1013) waits longer still.
for (const [code, reason, ceiling] of [
  [1001, "going away", 40], [1005, "", 10], [1006, "", 10], [1011, "internal error", 10], [4000, "slow consumer", 10],
  [1012, "", 40], [1013, "", 80], [1014, "", 10],
]) {
  test(`close ${code} ${reason || "(no reason)"}: reconnects with the same token`, async (t) => {
    const { hub, client, states, tokenCalls } = setup();
    t.after(() => client.close());
    t.mock.method(Math, "random", () => 0.999); // the top of the jitter range
    client.connect();
    const ws = await connected(hub, client);
    ws.serverClose(code, reason);
    const s = states.at(-1);
    assert.equal(s.state, "disconnected");
    assert.equal(s.code, code);
    assert.equal(s.retryInMs, ceiling, `first backoff ceiling ${ceiling} ms, got ${s.retryInMs}`);
    const ws2 = await connected(hub, client, 1);
    assert.equal(ws2.token, "token-1");
    assert.deepEqual(tokenCalls, ["connect"]);
  });
}

for (const [code, reason] of [
  [1000, ""], [1002, ""], [1003, ""], [1007, "invalid utf-8"], [1009, "message too big"], [4001, "disconnected"],
  [1008, "connection limit"], [1008, "origin not allowed"], [4002, ""], [4999, "something new"], [3000, ""],
]) {
  test(`close ${code} ${reason || "(no reason)"}: stops and says why`, async (t) => {
    const { hub, client, states } = setup();
    t.after(() => client.close());
    client.connect();
    const ws = await connected(hub, client);
    ws.serverClose(code, reason);
    const s = states.at(-1);
    assert.equal(s.state, "stopped");
    assert.equal(s.code, code);
    assert.ok(s.reason.length > 0);
    await new Promise((r) => setTimeout(r, 40));
    assert.equal(hub.sockets.length, 1, "no reconnect");
  });
}

test("close 1008 token expired: fetches a new token and reconnects", async (t) => {
  const { hub, client, tokenCalls } = setup();
  t.after(() => client.close());
  client.connect();
  const ws = await connected(hub, client);
  ws.serverClose(1008, "token expired");
  const ws2 = await hub.socket(1);
  assert.equal(ws2.token, "token-2");
  assert.deepEqual(tokenCalls, ["connect", "expired"]);
});

test("close 1008 invalid token: asks for a token once more, stops if that one is refused too", async (t) => {
  const { hub, client, tokenCalls, states } = setup();
  t.after(() => client.close());
  client.connect();
  const ws = await connected(hub, client);
  ws.serverClose(1008, "invalid token");
  const ws2 = await hub.socket(1);
  assert.equal(ws2.token, "token-2");
  assert.deepEqual(tokenCalls, ["connect", "invalid"]);
  ws2.serverClose(1008, "invalid token");
  assert.equal(states.at(-1).state, "stopped");
  assert.equal(states.at(-1).reason, "invalid token");
  await new Promise((r) => setTimeout(r, 40));
  assert.equal(hub.sockets.length, 2);
});

test("close 1008 invalid token after a successful reconnect is retried again", async (t) => {
  // A development hub restarted twice: each restart is a new secret and deserves one retry.
  const { hub, client } = setup();
  t.after(() => client.close());
  client.connect();
  let ws = await connected(hub, client);
  ws.serverClose(1008, "invalid token");
  ws = await connected(hub, client, 1);
  ws.serverClose(1008, "invalid token");
  ws = await hub.socket(2);
  assert.equal(ws.token, "token-3");
});

test("backoff grows exponentially with full jitter up to the maximum, and resets after a stable connection", async (t) => {
  const { hub, client, states } = setup({ stableConnectionMs: 60 });
  t.after(() => client.close());
  client.connect();
  for (let i = 0; i < 6; i++) (await hub.socket(i)).serverClose(1006);
  const delays = states.filter((s) => s.state === "disconnected").map((s) => s.retryInMs);
  const bases = [10, 20, 40, 80, 80, 80];
  delays.forEach((d, i) => assert.ok(d >= 0 && d <= bases[i], `delay #${i} ${d} within [0, ${bases[i]}]`));
  const ws = await connected(hub, client, 6);
  await new Promise((r) => setTimeout(r, 100)); // longer than stableConnectionMs
  t.mock.method(Math, "random", () => 0.999);
  ws.serverClose(1006);
  assert.equal(states.at(-1).retryInMs, 10, "back to the first step");
});

test("full jitter: the delay is anywhere from 0 to the backoff step", async (t) => {
  const { hub, client, states } = setup({ minReconnectDelayMs: 100, maxReconnectDelayMs: 100 });
  t.after(() => client.close());
  let r = 0;
  t.mock.method(Math, "random", () => r);
  client.connect();
  const seen = [];
  for (const [i, value] of [0, 0.25, 0.5, 0.999].entries()) {
    r = value;
    (await hub.socket(i)).serverClose(1006);
    seen.push(states.at(-1).retryInMs);
  }
  assert.deepEqual(seen, [0, 25, 50, 100]);
});

test("a hub that welcomes and closes at once is not hammered: the backoff keeps growing", async (t) => {
  const { hub, client, states } = setup({ stableConnectionMs: 10_000 });
  t.after(() => client.close());
  t.mock.method(Math, "random", () => 0.999);
  client.connect();
  for (let i = 0; i < 5; i++) {
    const ws = await connected(hub, client, i);
    ws.serverClose(1011, "internal error");
  }
  const delays = states.filter((s) => s.state === "disconnected").map((s) => s.retryInMs);
  assert.deepEqual(delays, [10, 20, 40, 80, 80]);
  await hub.socket(5);
  const attempts = states.filter((s) => s.state === "connecting").map((s) => s.attempt);
  assert.deepEqual(attempts, [0, 1, 2, 3, 4, 5]);
});

test("a request made while offline waits for the connection; its timeout starts once it is sent", async (t) => {
  const hub = new FakeHub();
  let release;
  const tokens = [async () => "tok-1", () => new Promise((resolve) => (release = resolve))];
  const client = new HubClient({
    url: "ws://hub.test/ws", WebSocket: hub.WebSocket, idlePingMs: 0, requestTimeoutMs: 100, minReconnectDelayMs: 1,
    getToken: async () => tokens.shift()(),
  });
  t.after(() => client.close());
  client.connect();
  let ws = await connected(hub, client);
  // The hub goes away for good measure with an "invalid token" restart: the client needs a new
  // token, and the token endpoint (on the same hub) does not answer for a while.
  ws.serverClose(1008, "invalid token");
  let settled = null;
  const hist = client.history("chat:lobby", { limit: 5 });
  hist.then((v) => (settled = { v }), (e) => (settled = { e }));
  const pub = client.publish("chat:lobby", { text: "typed while offline" });
  pub.catch(() => {});
  await new Promise((r) => setTimeout(r, 350)); // over three request timeouts
  assert.equal(settled, null, `still waiting, not ${settled?.e?.code ?? "resolved"}`);
  release("tok-2");
  ws = await connected(hub, client, 1);
  const h = await hub.request(ws, "history");
  const p = await hub.request(ws, "publish");
  assert.equal(p.data.text, "typed while offline");
  ws.push({ type: "history", id: h.id, channel: "chat:lobby", offset: 7, epoch: "A", publications: [] });
  assert.equal((await hist).offset, 7);
  // Once sent, the usual timeout applies.
  await assert.rejects(pub, { code: "timeout" });
});

test("reconnectNow skips the backoff and keeps what is queued; close() rejects it", async (t) => {
  const { hub, client, states } = setup({ minReconnectDelayMs: 60_000, maxReconnectDelayMs: 60_000 });
  t.after(() => client.close());
  t.mock.method(Math, "random", () => 0.5);
  client.connect();
  assert.equal(client.reconnectNow(), false, "nothing scheduled while connecting");
  let ws = await connected(hub, client);
  assert.equal(client.reconnectNow(), false, "nothing to do while connected");
  ws.serverClose(1006);
  assert.equal(states.at(-1).retryInMs, 30_000);
  const ping = client.ping();
  assert.equal(client.reconnectNow(), true);
  ws = await connected(hub, client, 1);
  const req = await hub.request(ws, "ping");
  ws.push({ type: "pong", id: req.id });
  assert.equal(typeof (await ping), "number");

  ws.serverClose(1006);
  const queued = client.ping();
  client.close();
  await assert.rejects(queued, { code: "stopped" });
});

test("a getToken that throws is retried with backoff; one that gives nothing stops the client", async (t) => {
  const hub = new FakeHub();
  const answers = [() => { throw new Error("offline"); }, () => "tok", () => null];
  const client = new HubClient({
    url: "ws://hub.test/ws", WebSocket: hub.WebSocket, minReconnectDelayMs: 10, idlePingMs: 0,
    getToken: async () => answers.shift()(),
  });
  t.after(() => client.close());
  const errors = [];
  const states = [];
  client.on("error", (e) => errors.push(e.code));
  client.on("state", (s) => states.push(s.state));
  client.connect();
  const ws = await connected(hub, client);
  assert.equal(ws.token, "tok");
  assert.deepEqual(errors, ["token_unavailable"]);
  ws.serverClose(1008, "token expired");
  await hub.until(() => client.state === "stopped", { what: "stopped" });
});

test("refreshes the token before it expires", async (t) => {
  const { hub, client, tokenCalls } = setup({ refreshBeforeExpiryMs: 2_000 });
  t.after(() => client.close());
  const refreshed = [];
  client.on("refreshed", (r) => refreshed.push(r));
  client.connect();
  // Expires in under 4 s, i.e. within twice the margin: refreshed at half the remaining life.
  const ws = await connected(hub, client, 0, welcome({ expires_at: Math.floor(Date.now() / 1000) + 2 }));
  const started = Date.now();
  const req = await hub.until(() => ws.sent.find((f) => f.type === "refresh"), { timeoutMs: 3000, what: "refresh" });
  assert.ok(Date.now() - started < 1600);
  assert.equal(req.token, "token-2");
  assert.deepEqual(tokenCalls, ["connect", "refresh"]);
  const newExpiry = Math.floor(Date.now() / 1000) + 3600;
  ws.push({ type: "refreshed", id: req.id, expires_at: newExpiry });
  await hub.until(() => refreshed.length === 1, { what: "refreshed event" });
  assert.equal(refreshed[0].expires_at, newExpiry);
  // A later reconnect uses the refreshed token rather than asking again.
  ws.serverClose(1006);
  const ws2 = await hub.socket(1);
  assert.equal(ws2.token, "token-2");
});

test("an idle connection is probed with ping and dropped when the hub does not answer", async (t) => {
  const { hub, client, states } = setup({ idlePingMs: 50, requestTimeoutMs: 100 });
  t.after(() => client.close());
  client.connect();
  const ws = await connected(hub, client);
  await hub.request(ws, "ping");
  await hub.until(() => hub.sockets.length === 2, { what: "reconnect after a dead link" });
  assert.equal(ws.closedByClient.code, 4000);
  assert.ok(states.some((s) => s.state === "disconnected" && s.reason === "no answer from the hub"));
});

test("close() stops for good, rejects what is pending, and connect() resumes subscriptions", async (t) => {
  const { hub, client, states } = setup();
  t.after(() => client.close());
  client.connect();
  let ws = await connected(hub, client);
  client.subscribe("chat:lobby");
  const sub = await hub.request(ws, "subscribe");
  ws.push({ type: "subscribed", id: sub.id, channel: "chat:lobby", offset: 1, epoch: "A", recovered: false, publications: [] });
  const pending = client.ping();
  client.close();
  await assert.rejects(pending, { code: "disconnected" });
  assert.equal(states.at(-1).state, "stopped");
  assert.equal(ws.closedByClient.code, 1000);
  await assert.rejects(client.publish("chat:lobby", {}), { code: "stopped" });
  client.connect();
  ws = await connected(hub, client, 1);
  const again = await hub.request(ws, "subscribe");
  assert.deepEqual(again.recover, { offset: 1, epoch: "A" });
});

test("close 1008 token expired twice in a row stops instead of looping", async (t) => {
  const { hub, client, states } = setup();
  t.after(() => client.close());
  client.connect();
  const ws = await connected(hub, client);
  ws.serverClose(1008, "token expired");
  (await hub.socket(1)).serverClose(1008, "token expired");
  assert.equal(states.at(-1).state, "stopped");
  assert.equal(states.at(-1).reason, "token expired");
});

test("a provider that only has the expiring token is not asked to refresh with it", async (t) => {
  const hub = new FakeHub();
  const client = new HubClient({
    url: "ws://hub.test/ws", WebSocket: hub.WebSocket, idlePingMs: 0, refreshBeforeExpiryMs: 2_000,
    getToken: async () => "the-only-token",
  });
  t.after(() => client.close());
  const errors = [];
  client.on("error", (e) => errors.push(e.code));
  client.connect();
  const ws = await connected(hub, client, 0, welcome({ expires_at: Math.floor(Date.now() / 1000) + 2 }));
  await hub.until(() => errors.length > 0, { timeoutMs: 3000, what: "an error event" });
  assert.deepEqual(errors, ["token_unavailable"]);
  assert.equal(ws.sent.filter((f) => f.type === "refresh").length, 0);
});
