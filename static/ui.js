// Small DOM helpers shared by the demo's views. Everything user- or hub-supplied goes through
// textContent (never innerHTML), so a message can never inject markup.

export const $ = (id) => document.getElementById(id);

/**
 * Creates an element: h("li", {class: "msg", dataset: {key: "1"}}, "text", childNode).
 * Attributes whose value is null/undefined/false are skipped.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

// Channel names per the contract: 1..255 bytes of A-Z a-z 0-9 _ - : . @ / = |
const CHANNEL_RE = /^[A-Za-z0-9_\-:.@/=|]{1,255}$/;
export const isValidChannel = (name) => CHANNEL_RE.test(name);

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const secondsFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

/** A <time> element showing `ms` (Unix milliseconds) briefly, with the full date as its tooltip. */
export function timeElement(ms, { seconds = false } = {}) {
  const date = new Date(ms);
  if (Number.isNaN(date.getTime())) return h("time", {}, "");
  return h(
    "time",
    { datetime: date.toISOString(), title: fullFormat.format(date) },
    (seconds ? secondsFormat : timeFormat).format(date),
  );
}

/** Formats a figure for display: integers as they are, rates with at most one decimal. */
export function formatNumber(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "–";
  return Number.isInteger(value)
    ? value.toLocaleString()
    : value.toLocaleString(undefined, { maximumFractionDigits: 1 });
}

/** A stable hue for a name, so each person keeps their avatar colour across sessions. */
export function hueFor(name) {
  let hash = 0;
  for (const ch of name) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return hash % 360;
}

/** Reads small JSON values from localStorage, tolerating private modes and corrupt entries. */
export const store = {
  get(key, fallback) {
    try {
      const raw = localStorage.getItem(key);
      return raw === null ? fallback : JSON.parse(raw);
    } catch {
      return fallback;
    }
  },
  set(key, value) {
    try {
      localStorage.setItem(key, JSON.stringify(value));
    } catch {
      /* storage full or disabled: the demo works without it */
    }
  },
  remove(key) {
    try {
      localStorage.removeItem(key);
    } catch {
      /* ignore */
    }
  },
};

/**
 * The page's one banner for problems the user should know about. `kind` lets a later event clear
 * only what it resolves (e.g. "connection" problems disappear once reconnected).
 */
export class Banner {
  constructor() {
    this.root = $("banner");
    this.text = $("banner-text");
    this.action = $("banner-action");
    this.kind = null;
    $("banner-close").addEventListener("click", () => this.clear());
    this.action.addEventListener("click", () => {
      const run = this._onAction;
      this.clear();
      run?.();
    });
  }

  /** Shows `message`; `tone` is "error" or "info"; `action` is {label, run} for one button. */
  show(message, { kind = "error", tone = "error", action = null } = {}) {
    this.kind = kind;
    this.root.dataset.tone = tone;
    this.text.textContent = message;
    this._onAction = action?.run ?? null;
    this.action.hidden = !action;
    if (action) this.action.textContent = action.label;
    this.root.hidden = false;
  }

  /** Hides the banner; with `kind`, only if it currently shows a problem of that kind. */
  clear(kind) {
    if (kind && this.kind !== kind) return;
    this.root.hidden = true;
    this.kind = null;
    this._onAction = null;
  }
}

/**
 * Whether a request failed only because the connection went (dropped, or closed by the hub):
 * the status and the connection banner say that already, and a request's own message must not
 * replace theirs (say, "The server disconnected this session").
 */
export function connectionGone(err) {
  return err?.code === "disconnected" || err?.code === "stopped";
}

/** Human text for an error from the hub or the client ("forbidden: no permission" etc.). */
export function describeError(err) {
  if (!err) return "Unknown error";
  const hints = {
    forbidden: "You are not allowed to do that",
    rate_limited: "Too many requests; slow down a little",
    too_large: "That is too large for the hub",
    unavailable: "The hub cannot serve this right now; try again in a moment",
    timeout: "The hub did not answer in time",
    disconnected: "The connection dropped before the hub answered",
    limit_exceeded: "Too many subscriptions on this connection",
    token_unavailable: "No new token is available; the session ends when the current one expires",
  };
  const hint = hints[err.code];
  const detail = err.message && err.message !== err.code ? err.message : "";
  if (hint && detail) return `${hint} (${err.code}: ${detail})`;
  if (hint) return `${hint} (${err.code})`;
  return err.code ? `${err.code}: ${detail}` : String(err.message ?? err);
}
