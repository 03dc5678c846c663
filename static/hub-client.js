// hub-client.js: a small, dependency-free browser client for realtime-hub (wire contract v1).
//
//   import { HubClient } from "./hub-client.js";
//   const hub = new HubClient({ getToken: async () => (await fetchMyToken()) });
//   hub.on("state", (s) => console.log(s.state, s.reason));
//   hub.connect();
//   await hub.subscribe("chat:lobby", { onMessage: (m) => show(m) });
//   await hub.publish("chat:lobby", { text: "hi" }, { eventType: "chat.message" });
//
// See docs/client.md for the full API, the events and what each close code does.

/** Default tunables; every one can be overridden through the constructor options. */
const DEFAULTS = Object.freeze({
  requestTimeoutMs: 10_000,
  // Reconnect backoff: 0.5 s doubling up to 20 s, with full jitter (anywhere from 0 to that) so
  // that a restarted node is not hit by every browser in the same instant.
  minReconnectDelayMs: 500,
  maxReconnectDelayMs: 20_000,
  // The backoff starts over only once a connection has stayed up this long: a hub that says
  // `welcome` and then closes at once must not be hammered at the shortest delay forever.
  stableConnectionMs: 10_000,
  // Fetch a new token this long before the current one expires, then send `refresh`.
  refreshBeforeExpiryMs: 30_000,
  // The server pings at the WebSocket level, which a page cannot see. A cheap application-level
  // ping on an otherwise quiet connection is the only way for the page to notice a dead link
  // (a laptop waking from sleep, a NAT that forgot us) before the user does. 0 disables it.
  idlePingMs: 30_000,
});

/** Error carrying the hub's `code` (e.g. "forbidden") or a client-side one ("timeout", "disconnected", "stopped"). */
export class HubError extends Error {
  constructor(code, message, details = {}) {
    super(message || code);
    this.name = "HubError";
    this.code = code;
    Object.assign(this, details);
  }
}

// Close codes worth reconnecting on: the network or the node, not this client. 1001 going away,
// 1005 no status, 1006 connection lost, 1011 internal error, 1012 service restart, 1013 try again
// later, 1014 bad gateway, 4000 slow consumer. Every other code (1000, 1002 protocol error, 1003
// unsupported data, 1007, 1009, 4001 and any unknown one) stops: reconnecting would only repeat
// the same failure, or someone decided the connection should end. 1008 is decided by its reason.
const RECONNECT_CODES = new Set([1001, 1005, 1006, 1011, 1012, 1013, 1014, 4000]);
// A node that goes away or restarts takes all its clients at once: their first retry is spread
// over a wider window (this many doublings of minReconnectDelayMs: 0 to 2 s, 0 to 8 s by default).
const SPREAD_ATTEMPTS = new Map([[1001, 2], [1012, 2], [1013, 4]]);
// Error codes worth retrying for a resubscribe nobody is awaiting.
const TRANSIENT_CODES = new Set(["unavailable", "rate_limited", "timeout", "internal"]);

const REQUEST_TYPES_WITH_ID = new Set([
  "subscribed", "unsubscribed", "published", "history", "presence", "refreshed", "pong", "error",
]);

/** Reports an exception thrown by application code without breaking the client's own state. */
function reportAppError(err) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(err);
  else setTimeout(() => { throw err; });
}

/** Resolves the hub's WebSocket URL: absolute ws(s)/http(s), relative to the page, or the page's own host. */
function resolveUrl(url) {
  const base = typeof location !== "undefined" ? location.href : undefined;
  const resolved = new URL(url ?? "/ws", base);
  if (resolved.protocol === "http:") resolved.protocol = "ws:";
  else if (resolved.protocol === "https:") resolved.protocol = "wss:";
  return resolved;
}

export class HubClient {
  /**
   * @param {object} options
   * @param {string} [options.url] WebSocket endpoint; default `/ws` on the page's host.
   * @param {(ctx: {reason: string}) => Promise<string|null|undefined>} options.getToken
   *   Token provider. Called before the first connection, when the token is about to expire,
   *   and after the hub rejected the token. Resolve to a falsy value to stop the client.
   */
  constructor(options = {}) {
    if (typeof options.getToken !== "function") throw new TypeError("HubClient: getToken must be a function");
    this._opts = { ...DEFAULTS, ...options };
    this._url = resolveUrl(options.url);
    this._getToken = options.getToken;
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;

    this._listeners = new Map();
    this._state = "disconnected";
    this._ws = null;
    this._welcome = null;
    this._token = null;
    this._tokenExpiresAt = null; // Unix seconds, from `welcome`/`refreshed`
    this._nextId = 1;
    this._pending = new Map(); // id -> {request, resolve, reject, timer}
    this._outbox = []; // requests made while not connected; sent after the next `welcome`
    this._subs = new Map(); // channel -> subscription record
    this._attempt = 0; // connection attempts since the last stable connection, for the backoff
    this._retriedInvalidToken = false; // one fresh-token retry per "invalid token" streak
    this._retriedExpiredToken = false; // likewise for "token expired"
    this._needFreshToken = true;
    this._tokenReason = undefined; // why the next getToken call happens, passed on to the app
    this._generation = 0; // bumps on every new connection attempt; stale async work checks it
    this._timers = { reconnect: null, refresh: null, welcome: null, idle: null, stable: null };
    // The browser says the network is back: no point waiting out the backoff.
    this._onOnline = () => this.reconnectNow();
  }

  // ---------------------------------------------------------------- events

  /** Adds a listener; returns a function that removes it. Events: state, welcome, error, refreshed, recovery_failed. */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
  }

  _emit(event, payload) {
    for (const fn of [...(this._listeners.get(event) ?? [])]) {
      try {
        fn(payload);
      } catch (err) {
        reportAppError(err);
      }
    }
  }

  _setState(state, details = {}) {
    this._state = state;
    this._emit("state", { state, ...details });
  }

  /** "disconnected" | "connecting" | "connected" | "stopped" */
  get state() {
    return this._state;
  }

  /** The `welcome` frame of the current connection, or null. */
  get session() {
    return this._state === "connected" ? this._welcome : null;
  }

  // ---------------------------------------------------------------- lifecycle

  /** Starts connecting (and keeps reconnecting) until close() or a close code that means stop. */
  connect() {
    if (this._state === "connecting" || this._state === "connected") return;
    if (this._timers.reconnect) return; // a reconnect is already scheduled
    this._retriedInvalidToken = false;
    this._retriedExpiredToken = false;
    this._attempt = 0;
    // After a stop (e.g. a rejected token) the app calls connect() once it has something new.
    if (this._state === "stopped") this._needFreshToken = true;
    globalThis.addEventListener?.("online", this._onOnline);
    this._open();
  }

  /**
   * While a reconnect is scheduled (state "disconnected"), makes it now instead of waiting out the
   * backoff; queued requests and subscriptions carry over. Returns whether it did anything.
   */
  reconnectNow() {
    if (this._state !== "disconnected" || !this._timers.reconnect) return false;
    clearTimeout(this._timers.reconnect);
    this._timers.reconnect = null;
    this._open();
    return true;
  }

  /** Closes the connection for good (until connect() is called again). Subscriptions are kept for that. */
  close() {
    this._stop({ reason: "closed by client", code: 1000 });
  }

  async _open() {
    const generation = ++this._generation;
    this._setState("connecting", { attempt: this._attempt });

    const expiresSoon = this._tokenExpiresAt !== null &&
      this._tokenExpiresAt * 1000 - Date.now() < this._opts.refreshBeforeExpiryMs;
    if (!this._token || this._needFreshToken || expiresSoon) {
      let token;
      try {
        token = await this._getToken({ reason: this._tokenReason ?? "connect" });
      } catch (err) {
        if (generation !== this._generation) return;
        // Usually the network (the token endpoint may live on the hub that is down): retry.
        this._emit("error", new HubError("token_unavailable", `could not get a token: ${err?.message ?? err}`, { cause: err }));
        this._scheduleReconnect({ reason: "could not get a token" });
        return;
      }
      if (generation !== this._generation) return;
      if (!token) {
        this._stop({ reason: "no token" });
        return;
      }
      this._token = token;
      this._tokenExpiresAt = null;
      this._needFreshToken = false;
      this._tokenReason = undefined;
    }

    const url = new URL(this._url);
    url.searchParams.set("token", this._token);
    let ws;
    try {
      ws = new this._WebSocket(url.href);
    } catch (err) {
      // Only a malformed URL gets here; retrying would not help.
      this._stop({ reason: `cannot open WebSocket: ${err.message}` });
      return;
    }
    this._ws = ws;
    ws.onmessage = (ev) => this._onFrame(ws, ev.data);
    ws.onclose = (ev) => this._onClose(ws, ev.code, ev.reason);
    // The `error` event carries no detail in browsers; the `close` event that follows does.
    ws.onerror = () => {};
    // Guard against a hub that accepts the socket but never says `welcome`.
    this._timers.welcome = setTimeout(() => {
      if (this._ws === ws && this._state === "connecting") this._drop(ws, "no welcome from the hub");
    }, this._opts.requestTimeoutMs);
  }

  /** Abandons a socket we consider dead and goes through the normal reconnect path. */
  _drop(ws, reason) {
    this._detach(ws);
    try {
      ws.close(4000, reason); // best effort; we do not wait for the handshake of a dead link
    } catch { /* already closing */ }
    this._afterDisconnect();
    this._scheduleReconnect({ reason });
  }

  _detach(ws) {
    ws.onmessage = ws.onclose = ws.onerror = null;
    if (this._ws === ws) this._ws = null;
  }

  _onClose(ws, code, reason) {
    if (this._ws !== ws) return;
    this._detach(ws);
    this._afterDisconnect();
    const details = { code, reason: reason || describeCode(code) };

    if (code === 1008) {
      if (reason === "token expired") {
        // A fresh token right away. Twice in a row means the provider hands out expired tokens
        // (or the clocks disagree badly): retrying would only loop.
        if (this._retriedExpiredToken) {
          this._stop(details);
          return;
        }
        this._retriedExpiredToken = true;
        this._needFreshToken = true;
        this._tokenReason = "expired";
        this._scheduleReconnect(details, 0);
        return;
      }
      if (reason === "invalid token") {
        // A development hub that restarted signs with a new secret: one fresh token may fix it.
        // A second rejection in a row means the token provider itself hands out bad tokens.
        if (this._retriedInvalidToken) {
          this._stop(details);
          return;
        }
        this._retriedInvalidToken = true;
        this._needFreshToken = true;
        this._tokenReason = "invalid";
        this._scheduleReconnect(details, 0);
        return;
      }
      // "connection limit", "origin not allowed" and any other policy reason: retrying cannot help.
      this._stop(details);
      return;
    }
    if (!RECONNECT_CODES.has(code)) {
      this._stop(details);
      return;
    }
    // The network or the node, not us: reconnect and recover.
    const spread = SPREAD_ATTEMPTS.get(code);
    if (spread !== undefined) this._attempt = Math.max(this._attempt, spread);
    this._scheduleReconnect(details);
  }

  /** Cleans up per-connection state. Subscriptions stay registered for the next connection. */
  _afterDisconnect() {
    clearTimeout(this._timers.welcome);
    clearTimeout(this._timers.refresh);
    clearTimeout(this._timers.idle);
    clearTimeout(this._timers.stable);
    this._timers.welcome = this._timers.refresh = this._timers.idle = this._timers.stable = null;
    this._welcome = null;
    for (const [id, p] of this._pending) {
      this._pending.delete(id);
      clearTimeout(p.timer);
      // Whether a publish in flight reached the hub is unknown; the caller must decide.
      p.reject(new HubError("disconnected", "connection lost before the hub replied", { request: p.request }));
    }
    for (const sub of this._subs.values()) {
      sub.active = false;
      clearTimeout(sub.retryTimer);
      sub.retryTimer = null;
    }
  }

  _scheduleReconnect(details, delayOverride) {
    const base = Math.min(this._opts.maxReconnectDelayMs, this._opts.minReconnectDelayMs * 2 ** this._attempt);
    // "Full jitter": anywhere between 0 and the backoff, so that clients dropped together spread
    // over the whole window instead of coming back in a burst.
    const delay = delayOverride ?? Math.round(Math.random() * base);
    this._attempt += 1;
    this._setState("disconnected", { ...details, retryInMs: delay });
    clearTimeout(this._timers.reconnect);
    this._timers.reconnect = setTimeout(() => {
      this._timers.reconnect = null;
      this._open();
    }, delay);
  }

  _stop(details) {
    this._generation++;
    clearTimeout(this._timers.reconnect);
    this._timers.reconnect = null;
    globalThis.removeEventListener?.("online", this._onOnline);
    const ws = this._ws;
    if (ws) {
      this._detach(ws);
      try {
        ws.close(1000);
      } catch { /* already closed */ }
    }
    this._afterDisconnect();
    for (const entry of this._outbox.splice(0)) {
      clearTimeout(entry.timer);
      entry.reject(new HubError("stopped", `client stopped: ${details.reason}`, { request: entry.request }));
    }
    // Established subscriptions stay registered so that connect() resumes them; a subscribe the
    // app is still awaiting is refused now rather than left hanging.
    for (const sub of [...this._subs.values()]) {
      if (sub.settled) continue;
      this._subs.delete(sub.channel);
      sub.settled = true;
      sub.reject(new HubError("stopped", `client stopped: ${details.reason}`, { channel: sub.channel }));
    }
    if (this._state !== "stopped") this._setState("stopped", details);
  }

  // ---------------------------------------------------------------- frames

  _send(ws, frame) {
    ws.send(JSON.stringify(frame));
    this._armIdlePing();
  }

  _onFrame(ws, raw) {
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      this._emit("error", new HubError("bad_frame", "the hub sent a frame that is not JSON"));
      return;
    }
    if (frame === null || typeof frame !== "object") return;
    this._armIdlePing();

    if (frame.id !== undefined && REQUEST_TYPES_WITH_ID.has(frame.type)) {
      const p = this._pending.get(frame.id);
      if (!p) return; // a reply to a request that already timed out
      this._pending.delete(frame.id);
      clearTimeout(p.timer);
      if (frame.type === "error") {
        p.reject(new HubError(frame.code, frame.message, { request: p.request, channel: p.request.channel }));
      } else {
        p.resolve(frame);
      }
      return;
    }

    switch (frame.type) {
      case "welcome":
        this._onWelcome(ws, frame);
        break;
      case "message":
        this._onMessage(frame);
        break;
      case "join":
      case "leave": {
        const sub = this._subs.get(frame.channel);
        if (sub?.active) this._callHandler(sub, frame.type === "join" ? "onJoin" : "onLeave", frame);
        break;
      }
      case "error":
        // No id: the hub could not tell which request it was about.
        this._emit("error", new HubError(frame.code, frame.message));
        break;
      default:
        // Unknown push types are ignored so that a newer hub does not break older pages.
        break;
    }
  }

  _onWelcome(ws, frame) {
    clearTimeout(this._timers.welcome);
    this._timers.welcome = null;
    // The backoff starts over only if this connection lasts (see stableConnectionMs).
    clearTimeout(this._timers.stable);
    this._timers.stable = setTimeout(() => {
      this._timers.stable = null;
      if (this._ws === ws) this._attempt = 0;
    }, this._opts.stableConnectionMs);
    // The token was accepted: a later rejection deserves its one retry again.
    this._retriedInvalidToken = false;
    this._retriedExpiredToken = false;
    this._welcome = frame;
    this._tokenExpiresAt = frame.expires_at ?? null;
    this._scheduleRefresh();
    this._setState("connected", { client: frame.client, user: frame.user, node: frame.node });
    this._emit("welcome", frame);
    if (this._ws !== ws) return; // a listener closed the client

    for (const sub of this._subs.values()) this._sendSubscribe(sub);
    for (const entry of this._outbox.splice(0)) this._dispatch(ws, entry);
  }

  // ---------------------------------------------------------------- requests

  /**
   * Sends one request and resolves with its reply. While disconnected the request waits for the
   * next connection (or a stop); its timeout runs only from when it is actually sent.
   */
  _request(frame, { timeoutMs = this._opts.requestTimeoutMs } = {}) {
    return new Promise((resolve, reject) => this._call(frame, resolve, reject, timeoutMs));
  }

  /**
   * The callback form of _request. Subscriptions use it so that a `subscribed` reply is handled in
   * the same turn as it arrives: a push right behind it must find the subscription already active.
   */
  _call(frame, resolve, reject, timeoutMs = this._opts.requestTimeoutMs) {
    if (this._state === "stopped") {
      reject(new HubError("stopped", "client is stopped; call connect() first", { request: frame }));
      return;
    }
    const entry = { request: frame, resolve, reject, timer: null, timeoutMs };
    if (this._state === "connected" && this._ws) this._dispatch(this._ws, entry);
    else this._outbox.push(entry);
  }

  _dispatch(ws, entry) {
    const id = this._nextId++;
    entry.id = id;
    this._pending.set(id, entry);
    // The clock starts now, on an open socket: time spent queued while offline does not count.
    entry.timer = setTimeout(() => {
      if (this._pending.get(id) !== entry) return;
      this._pending.delete(id);
      entry.reject(new HubError("timeout", `no reply to ${entry.request.type} within ${entry.timeoutMs} ms`, { request: entry.request }));
    }, entry.timeoutMs);
    try {
      this._send(ws, { ...entry.request, id });
    } catch (err) {
      this._pending.delete(id);
      clearTimeout(entry.timer);
      entry.reject(new HubError("disconnected", `could not send: ${err.message}`, { request: entry.request }));
    }
  }

  /** Publishes `data` to a channel; resolves with `{offset, epoch, event_id}`. */
  publish(channel, data, { eventType, eventId } = {}) {
    const frame = { type: "publish", channel, data };
    if (eventType !== undefined) frame.event_type = eventType;
    if (eventId !== undefined) frame.event_id = eventId;
    return this._request(frame);
  }

  /**
   * Reads a channel's history; resolves with `{offset, epoch, publications}` (oldest first).
   * @param {{limit?: number, since?: {offset: number, epoch: string}}} [options]
   */
  history(channel, { limit, since } = {}) {
    const frame = { type: "history", channel };
    if (limit !== undefined) frame.limit = limit;
    if (since) frame.since = { offset: since.offset, epoch: since.epoch };
    return this._request(frame);
  }

  /** Resolves with the `clients` (`[{client, user, info}]`) present in a channel. */
  async presence(channel) {
    return (await this._request({ type: "presence", channel })).clients;
  }

  /** Round trip to the hub; resolves with the time it took in ms. */
  async ping() {
    const started = performance.now();
    await this._request({ type: "ping" });
    return performance.now() - started;
  }

  /**
   * Replaces the connection's token without reconnecting. Without an argument, asks getToken.
   * Resolves with the `refreshed` reply.
   */
  async refresh(token) {
    const fresh = token ?? (await this._getToken({ reason: "refresh" }));
    if (!fresh) throw new HubError("token_unavailable", "getToken gave no token");
    if (fresh === this._token && token === undefined) {
      // Sending the same token again cannot extend anything; the hub will close with
      // "token expired" and the reconnect asks getToken once more.
      throw new HubError("token_unavailable", "getToken returned the token that is about to expire");
    }
    const reply = await this._request({ type: "refresh", token: fresh });
    this._token = fresh;
    this._tokenExpiresAt = reply.expires_at ?? null;
    this._scheduleRefresh();
    this._emit("refreshed", reply);
    return reply;
  }

  _scheduleRefresh() {
    clearTimeout(this._timers.refresh);
    this._timers.refresh = null;
    if (this._tokenExpiresAt === null) return;
    const remaining = this._tokenExpiresAt * 1000 - Date.now();
    if (remaining <= 0) return; // the hub closes with "token expired" and we reconnect
    const margin = this._opts.refreshBeforeExpiryMs;
    // Short-lived tokens (under twice the margin) are refreshed at half their remaining life.
    const delay = remaining > 2 * margin ? remaining - margin : remaining / 2;
    // setTimeout overflows past ~24.8 days; a long-lived token just gets rescheduled.
    const capped = Math.min(delay, 2 ** 31 - 1);
    this._timers.refresh = setTimeout(() => {
      this._timers.refresh = null;
      if (capped < delay) return this._scheduleRefresh();
      this.refresh().catch((err) => {
        if (this._state !== "connected") return; // the next connection fetches a token anyway
        this._emit("error", new HubError(err.code ?? "refresh_failed", `token refresh failed: ${err.message}`, { cause: err }));
        // Try again while there is time, unless the provider has nothing new; if the token runs
        // out, the hub closes with "token expired" and the reconnect asks getToken again.
        const left = this._tokenExpiresAt * 1000 - Date.now();
        if (err.code !== "token_unavailable" && left > 5_000) this._timers.refresh = setTimeout(() => this._scheduleRefresh(), Math.min(5_000, left / 2));
      });
    }, capped);
  }

  _armIdlePing() {
    if (!this._opts.idlePingMs) return;
    clearTimeout(this._timers.idle);
    this._timers.idle = setTimeout(() => {
      if (this._state !== "connected") return;
      const ws = this._ws;
      this.ping().catch((err) => {
        if (err.code === "timeout" && this._ws === ws && ws) this._drop(ws, "no answer from the hub");
      });
    }, this._opts.idlePingMs);
  }

  // ---------------------------------------------------------------- subscriptions

  /**
   * Subscribes to a channel and keeps the subscription across reconnects (resubscribing with
   * `recover`). Several subscribers of one channel share one hub subscription; each gets every
   * event (`since` counts only on the first). Resolves with the first `subscribed` reply; rejects (and forgets the subscription)
   * if the hub refuses it.
   *
   * @param {string} channel
   * @param {object} [handlers]
   * @param {(msg: object) => void} [handlers.onMessage] each publication once, in offset order
   * @param {(push: object) => void} [handlers.onJoin]
   * @param {(push: object) => void} [handlers.onLeave]
   * @param {(info: object) => void} [handlers.onRecoveryFailed] publications may have been missed: reload
   * @param {(info: object) => void} [handlers.onSubscribed] after every (re)subscribe, e.g. to reload presence
   * @param {{offset: number, epoch: string}} [handlers.since] position already known (e.g. from `history`)
   */
  subscribe(channel, handlers = {}) {
    const existing = this._subs.get(channel);
    if (existing) {
      // One hub subscription serves every subscriber of the channel in this client (two
      // components on one room): each gets every event. The same handlers object twice counts once.
      if (!existing.listeners.includes(handlers)) existing.listeners.push(handlers);
      return existing.ready;
    }
    const sub = {
      channel,
      listeners: [handlers],
      position: handlers.since ? { offset: handlers.since.offset, epoch: handlers.since.epoch } : null,
      active: false,
      retryTimer: null,
      retries: 0,
      settled: false,
    };
    sub.ready = new Promise((resolve, reject) => {
      sub.resolve = resolve;
      sub.reject = reject;
    });
    this._subs.set(channel, sub);
    if (this._state === "stopped") {
      this._subs.delete(channel);
      sub.reject(new HubError("stopped", "client is stopped; call connect() first", { channel }));
    } else if (this._state === "connected") {
      this._sendSubscribe(sub);
    }
    return sub.ready;
  }

  /**
   * Ends a subscription. With `handlers` (the object given to `subscribe`), removes only that
   * subscriber, and the channel stays subscribed while others remain; without, removes them all.
   * Resolves once the hub confirmed it (or at once while disconnected).
   */
  async unsubscribe(channel, handlers) {
    const sub = this._subs.get(channel);
    if (!sub) return;
    if (handlers !== undefined) {
      sub.listeners = sub.listeners.filter((l) => l !== handlers);
      if (sub.listeners.length > 0) return;
    }
    this._subs.delete(channel);
    clearTimeout(sub.retryTimer);
    if (!sub.settled) {
      sub.settled = true;
      sub.reject(new HubError("unsubscribed", "unsubscribed before the hub confirmed", { channel }));
      sub.ready.catch(() => {}); // nobody may be awaiting it any more
    }
    if (this._state === "connected") await this._request({ type: "unsubscribe", channel });
  }

  /** Channels currently registered (subscribed or waiting to be). */
  get channels() {
    return [...this._subs.keys()];
  }

  _sendSubscribe(sub) {
    const frame = { type: "subscribe", channel: sub.channel };
    if (sub.position) frame.recover = { offset: sub.position.offset, epoch: sub.position.epoch };
    const resubscribe = sub.settled;
    this._call(
      frame,
      (reply) => this._onSubscribed(sub, reply, resubscribe),
      (err) => this._onSubscribeFailed(sub, err),
    );
  }

  _onSubscribed(sub, reply, resubscribe) {
    if (this._subs.get(sub.channel) !== sub) {
      // Unsubscribed while the request was in flight: undo it on the hub if still connected.
      if (this._state === "connected") this._request({ type: "unsubscribe", channel: sub.channel }).catch(() => {});
      return;
    }
    sub.retries = 0;
    sub.active = true;
    const previous = sub.position;
    if (previous && reply.recovered) {
      for (const pub of reply.publications ?? []) this._deliver(sub, pub);
    } else if (previous && !reply.recovered) {
      this._recoveryFailed(sub, previous, { offset: reply.offset, epoch: reply.epoch }, "not recovered");
    }
    sub.position = { offset: reply.offset, epoch: reply.epoch };
    const info = { channel: sub.channel, offset: reply.offset, epoch: reply.epoch, recovered: !!reply.recovered, resubscribe };
    if (!sub.settled) {
      sub.settled = true;
      sub.resolve(info);
    }
    this._callHandler(sub, "onSubscribed", info);
  }

  _onSubscribeFailed(sub, err) {
    if (this._subs.get(sub.channel) !== sub) return;
    if (err.code === "disconnected") return; // resubscribed after the next welcome
    if (!sub.settled) {
      // The caller is awaiting: let it decide.
      if (err.code === "timeout" && this._state === "connected") {
        // The hub may still subscribe us after all; undo that so that nothing leaks.
        this._request({ type: "unsubscribe", channel: sub.channel }).catch(() => {});
      }
      this._subs.delete(sub.channel);
      sub.settled = true;
      sub.reject(err);
      return;
    }
    if (TRANSIENT_CODES.has(err.code) && this._state === "connected") {
      const delay = Math.min(this._opts.maxReconnectDelayMs, this._opts.minReconnectDelayMs * 2 ** sub.retries++);
      sub.retryTimer = setTimeout(() => {
        sub.retryTimer = null;
        if (this._state === "connected" && this._subs.get(sub.channel) === sub) this._sendSubscribe(sub);
      }, delay);
      return;
    }
    // Refused on resubscribe (e.g. the new token no longer allows it): tell the app.
    this._subs.delete(sub.channel);
    this._emit("error", err);
  }

  _onMessage(msg) {
    const sub = this._subs.get(msg.channel);
    if (!sub?.active) return; // not (yet, or any more) subscribed: the contract says this cannot happen
    const pos = sub.position;
    if (pos && msg.epoch !== pos.epoch) {
      // The channel's history was lost and restarted: whatever came before may be gone.
      this._recoveryFailed(sub, pos, { offset: msg.offset, epoch: msg.epoch }, "epoch changed");
      sub.position = { offset: msg.offset, epoch: msg.epoch };
      this._callHandler(sub, "onMessage", msg);
      return;
    }
    if (pos && msg.offset > pos.offset + 1) {
      // The hub promises no gaps; if one shows up anyway, the app should reload rather than trust it.
      this._recoveryFailed(sub, pos, { offset: msg.offset, epoch: msg.epoch }, "gap in offsets");
    }
    this._deliver(sub, msg);
  }

  /** Hands one publication to the app unless it was already delivered (same or older offset). */
  _deliver(sub, msg) {
    const pos = sub.position;
    if (pos && msg.epoch === pos.epoch && msg.offset <= pos.offset) return;
    sub.position = { offset: msg.offset, epoch: msg.epoch };
    this._callHandler(sub, "onMessage", msg);
  }

  _recoveryFailed(sub, previous, current, reason) {
    const info = { channel: sub.channel, previous, current, reason };
    this._callHandler(sub, "onRecoveryFailed", info);
    this._emit("recovery_failed", info);
  }

  _callHandler(sub, name, arg) {
    // A copy: a handler may unsubscribe itself (or another) while events are handed out.
    for (const handlers of [...sub.listeners]) {
      const fn = handlers[name];
      if (typeof fn !== "function") continue;
      try {
        fn(arg);
      } catch (err) {
        reportAppError(err);
      }
    }
  }
}

/** Human text for close codes that arrive without a reason (e.g. 1006 has none by definition). */
export function describeCode(code) {
  switch (code) {
    case 1000: return "normal closure";
    case 1001: return "going away";
    case 1002: return "protocol error";
    case 1003: return "unsupported data";
    case 1005: return "closed without a status";
    case 1006: return "connection lost";
    case 1007: return "invalid utf-8";
    case 1009: return "message too big";
    case 1011: return "internal error";
    case 1012: return "service restart";
    case 1013: return "try again later";
    case 1014: return "bad gateway";
    case 4000: return "slow consumer";
    case 4001: return "disconnected";
    default: return `closed (${code})`;
  }
}
