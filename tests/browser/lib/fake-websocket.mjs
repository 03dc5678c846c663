// A scripted stand-in for the browser's WebSocket, so that hub-client.js's protocol logic
// (matching replies, recovery, close-code policy, backoff, token refresh) can be tested in Node
// without a hub. Each instance plays the hub's side of one connection.

export class FakeHub {
  constructor() {
    this.sockets = [];
    this._waiters = [];
    const hub = this;
    this.WebSocket = class FakeWebSocket {
      constructor(url) {
        this.url = url;
        this.sent = [];
        this.closedByClient = null;
        this.onmessage = this.onclose = this.onerror = null;
        hub.sockets.push(this);
        hub._notify();
      }
      send(text) {
        this.sent.push(JSON.parse(text));
        hub._notify();
      }
      close(code, reason) {
        this.closedByClient = { code, reason };
      }
      /** Hub side: sends one frame to the client. */
      push(frame) {
        this.onmessage?.({ data: JSON.stringify(frame) });
      }
      /** Hub side: closes the connection with a code and reason. */
      serverClose(code, reason = "") {
        this.onclose?.({ code, reason });
      }
      get token() {
        return new URL(this.url).searchParams.get("token");
      }
    };
  }

  get last() {
    return this.sockets.at(-1);
  }

  _notify() {
    for (const w of this._waiters.splice(0)) w();
  }

  /** Resolves once `predicate()` is truthy, re-checked whenever a socket opens or sends. */
  async until(predicate, { timeoutMs = 2000, what = "condition" } = {}) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const value = predicate();
      if (value) return value;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((resolve) => {
        this._waiters.push(resolve);
        setTimeout(resolve, 5);
      });
    }
  }

  /** Waits for socket number `n` (0-based) to be created. */
  socket(n) {
    return this.until(() => this.sockets[n], { what: `socket #${n}` });
  }

  /** Waits for the next frame of `type` the client sends on `ws` that has not been seen yet. */
  async request(ws, type) {
    ws._seen ??= new Set();
    return this.until(
      () => {
        const frame = ws.sent.find((f, i) => f.type === type && !ws._seen.has(i));
        if (frame) ws._seen.add(ws.sent.indexOf(frame));
        return frame;
      },
      { what: `a ${type} request` },
    );
  }
}

export function welcome(overrides = {}) {
  return {
    type: "welcome",
    client: "c1",
    user: "alice",
    node: "n1",
    expires_at: Math.floor(Date.now() / 1000) + 3600,
    ...overrides,
  };
}

export function message(channel, offset, epoch, data = { text: `m${offset}` }) {
  return {
    type: "message",
    channel,
    offset,
    epoch,
    event_id: `e${offset}`,
    event_type: "chat.message",
    data,
    from: { user: "bob", client: "c2" },
    ts: Date.now(),
  };
}
