// The live dashboard: per-node figures from `dashboard:hub` as a table and four line charts, and a
// feed of domain events from other `dashboard:*` channels.
import { LineChart } from "./chart.js";
import { $, connectionGone, describeError, formatNumber, h, isValidChannel, store, timeElement } from "./ui.js";

const HUB_CHANNEL = "dashboard:hub";
const DEFAULT_FEEDS = ["dashboard:orders", "dashboard:sensors"];
const FIGURES = ["connections", "subscriptions", "publications_per_s", "deliveries_per_s"];
const WINDOW_MS = 120_000;
// A node is shown as silent after missing about three reports (HUB_DASHBOARD_INTERVAL_S sets how
// often it reports), and never sooner than this.
const MIN_STALE_MS = 5_000;
const FEED_MAX = 100;
const FEED_HISTORY = 20;
const REPORT_HISTORY = 100;
// Failures worth trying again by ourselves; the rest (e.g. `forbidden`) are reported and dropped.
const TRANSIENT = new Set(["disconnected", "timeout", "unavailable", "internal", "rate_limited", "stopped"]);
const RETRY_MS = 5_000;
// Series colours are CSS custom properties (--series-1..6 in style.css: Okabe–Ito hues, which stay
// distinguishable with the common colour-vision deficiencies, tuned per theme), plus a dash
// pattern per node so that lines differ by more than hue alone.
const PALETTE = [1, 2, 3, 4, 5, 6].map((i) => `--series-${i}`);
const DASHES = [[], [7, 4], [2, 4], [10, 4, 2, 4]];

export class Dashboard {
  constructor({ hub, banner }) {
    this.hub = hub;
    this.banner = banner;
    this.started = false;
    this.visible = false;
    this.following = new Map(); // channel -> "loading" | "live" | "failed"
    this.retryTimers = new Map(); // channel -> timer of a scheduled retry
    this.nodes = new Map(); // node -> {color, dash, samples: [{t, ...figures}], latest, seenAt}
    this.feeds = [...new Set([...DEFAULT_FEEDS, ...store.get("hub.feeds", [])])];
    this.paused = false;
    this.missed = 0;
    this.abort = new AbortController();
    this.charts = Object.fromEntries(
      FIGURES.map((f) => [f, new LineChart($(`chart-${f}`), { windowMs: WINDOW_MS, format: formatNumber, integer: !f.endsWith("_per_s") })]),
    );
    this._wire();
    // Whatever could not be followed because of the connection is followed again once it is back.
    this.offWelcome = hub.on("welcome", () => {
      if (!this.started) return;
      for (const [channel, state] of this.following) if (state === "failed") this._follow(channel);
    });
    this._renderFeedChannels();
    $("feed").replaceChildren();
    this._updateFeedEmpty();
  }

  /** Subscribes on first show; afterwards the data keeps flowing while the tab is hidden. */
  show() {
    this.visible = true;
    if (!this.started) this._start();
    this._drawAll();
    // The time axis slides even when no report arrives (e.g. every node went quiet).
    clearInterval(this._tick);
    this._tick = setInterval(() => {
      this._drawAll();
      this._renderTable();
    }, 1000);
  }

  hide() {
    this.visible = false;
    clearInterval(this._tick);
  }

  dispose() {
    this.hide();
    this.abort.abort();
    this.offWelcome();
    for (const timer of this.retryTimers.values()) clearTimeout(timer);
    this.retryTimers.clear();
    this.following.clear();
    for (const chart of Object.values(this.charts)) chart.dispose();
    $("nodes-body").replaceChildren(placeholderRow());
    $("legend").replaceChildren();
    $("feed").replaceChildren();
    $("report-interval").replaceChildren("as often as its ", h("code", {}, "HUB_DASHBOARD_INTERVAL_S"), " says");
    this.started = false;
  }

  _wire() {
    const { signal } = this.abort;
    $("feed-pause").addEventListener(
      "click",
      () => {
        this.paused = !this.paused;
        this._renderPause();
      },
      { signal },
    );
    $("watch-channel").addEventListener(
      "input",
      () => {
        $("watch-channel").removeAttribute("aria-invalid");
        $("watch-error").textContent = "";
      },
      { signal },
    );
    $("watch-form").addEventListener(
      "submit",
      (ev) => {
        ev.preventDefault();
        const input = $("watch-channel");
        const name = `dashboard:${input.value.trim().replace(/^dashboard:/, "")}`;
        const error = $("watch-error");
        if (name === "dashboard:" || !isValidChannel(name) || name === HUB_CHANNEL) {
          error.textContent = name === HUB_CHANNEL ? "That channel is already charted above." : "Use letters, digits and _ - : . @ / = | only.";
          input.setAttribute("aria-invalid", "true");
          return;
        }
        input.removeAttribute("aria-invalid");
        error.textContent = "";
        input.value = "";
        if (this.feeds.includes(name)) return;
        this.feeds.push(name);
        store.set("hub.feeds", this.feeds.filter((f) => !DEFAULT_FEEDS.includes(f)));
        this._renderFeedChannels();
        if (this.started) this._follow(name);
      },
      { signal },
    );
  }

  _start() {
    this.started = true;
    this._follow(HUB_CHANNEL);
    for (const channel of this.feeds) this._follow(channel);
  }

  /**
   * Follows one channel: prefills from history, then subscribes from exactly that position. After
   * a failed recovery (missed publications) history is read again. A failure for a passing reason
   * is retried (at the next welcome, or after RETRY_MS while connected); any other is reported and,
   * for a feed channel, the channel dropped.
   */
  async _follow(channel) {
    if (this.following.get(channel) === "loading" || this.following.get(channel) === "live") return;
    clearTimeout(this.retryTimers.get(channel));
    this.retryTimers.delete(channel);
    this.following.set(channel, "loading");
    const isHub = channel === HUB_CHANNEL;
    const onMessage = isHub ? (msg) => this._onReport(msg) : (msg) => this._onEvent(msg);
    try {
      const hist = await this._backfill(channel);
      if (this.following.get(channel) !== "loading") return; // disposed meanwhile
      await this.hub.subscribe(channel, {
        since: { offset: hist.offset, epoch: hist.epoch },
        onMessage,
        onRecoveryFailed: () => this._backfill(channel).catch((err) => {
          if (connectionGone(err)) return; // the connection banner says so; the next welcome retries
          this.banner.show(`Could not reload ${channel} after missing events: ${describeError(err)}`, { kind: "dashboard" });
        }),
      });
      if (this.following.get(channel) !== "loading") return;
      this.following.set(channel, "live");
    } catch (err) {
      if (this.following.get(channel) !== "loading") return;
      if (TRANSIENT.has(err?.code)) {
        this.following.set(channel, "failed");
        // Without a connection the next welcome retries; with one, try again shortly.
        this.retryTimers.set(channel, setTimeout(() => {
          this.retryTimers.delete(channel);
          if (this.following.get(channel) === "failed" && this.hub.state === "connected") this._follow(channel);
        }, RETRY_MS));
        if (!connectionGone(err)) {
          this.banner.show(`Could not follow ${channel} (trying again): ${describeError(err)}`, { kind: "dashboard" });
        }
        return;
      }
      this.following.delete(channel);
      this.banner.show(`Could not ${isHub ? "follow" : "watch"} ${channel}: ${describeError(err)}`, { kind: "dashboard" });
      if (!isHub) {
        this.feeds = this.feeds.filter((f) => f !== channel);
        this._renderFeedChannels();
      }
    }
  }

  /** Reads a channel's recent history into the charts or the feed; resolves with the reply. */
  async _backfill(channel) {
    if (channel === HUB_CHANNEL) {
      const hist = await this.hub.history(channel, { limit: REPORT_HISTORY });
      for (const msg of hist.publications) this._onReport(msg);
      return hist;
    }
    const hist = await this.hub.history(channel, { limit: FEED_HISTORY });
    for (const msg of hist.publications) this._onEvent(msg, { quiet: true });
    return hist;
  }

  // -------------------------------------------------------------- node figures

  _onReport(msg) {
    const d = msg.data;
    if (!d || typeof d.node !== "string") return;
    let node = this.nodes.get(d.node);
    if (!node) {
      const i = this.nodes.size;
      node = { name: d.node, color: PALETTE[i % PALETTE.length], dash: DASHES[i % DASHES.length], samples: [] };
      this.nodes.set(d.node, node);
      this._renderLegend();
    }
    const t = typeof d.ts === "number" ? d.ts : msg.ts;
    const sample = { t };
    for (const f of FIGURES) sample[f] = typeof d[f] === "number" ? d[f] : 0;
    // Live reports come in order, but history reloaded after missed ones fills in earlier
    // samples: insert in time order, once per timestamp.
    let at = node.samples.length;
    while (at > 0 && node.samples[at - 1].t > t) at--;
    if (at > 0 && node.samples[at - 1].t === t) return;
    node.samples.splice(at, 0, sample);
    if (at === node.samples.length - 1) {
      node.latest = sample;
      node.seenAt = Date.now();
    }
    this._noteInterval(node);
    const cutoff = Date.now() - WINDOW_MS - 5_000;
    while (node.samples.length && node.samples[0].t < cutoff) node.samples.shift();
    this._renderTable();
    this._updateCharts();
  }

  _updateCharts() {
    for (const f of FIGURES) {
      this.charts[f].setSeries(
        [...this.nodes.values()].map((n) => ({
          name: n.name,
          color: n.color,
          dash: n.dash,
          points: n.samples.map((s) => [s.t, s[f]]),
        })),
      );
      const live = [...this.nodes.values()].filter((n) => this._isLive(n));
      const total = live.reduce((sum, n) => sum + n.latest[f], 0);
      const out = $(`total-${f}`);
      out.textContent = live.length ? `${formatNumber(total)}${live.length > 1 ? " total" : ""}` : "";
      // The canvas is an image to assistive technology; its label carries the current values.
      const values = [...this.nodes.values()].map((n) => `${n.name} ${formatNumber(n.latest[f])}`).join(", ");
      $(`chart-${f}`).setAttribute("aria-label", `${out.previousElementSibling.textContent} per node over the last two minutes. Now: ${values}`);
    }
  }

  _drawAll() {
    if (!this.visible) return;
    for (const chart of Object.values(this.charts)) chart.requestDraw();
  }

  _isLive(node) {
    return node.seenAt !== undefined && Date.now() - node.seenAt < Math.max(MIN_STALE_MS, 3 * (node.intervalMs ?? 0));
  }

  /** How often a node reports (median of its recent gaps), shown in the heading. */
  _noteInterval(node) {
    const gaps = [];
    for (let i = Math.max(1, node.samples.length - 8); i < node.samples.length; i++) gaps.push(node.samples[i].t - node.samples[i - 1].t);
    if (!gaps.length) return;
    gaps.sort((a, b) => a - b);
    node.intervalMs = gaps[Math.floor(gaps.length / 2)];
    const seconds = Math.max(1, Math.round(node.intervalMs / 1000));
    $("report-interval").textContent = seconds === 1 ? "every second" : `every ${seconds} seconds`;
  }

  _renderTable() {
    const body = $("nodes-body");
    if (!this.nodes.size) return;
    body.replaceChildren(
      ...[...this.nodes.values()].map((n) => {
        const live = this._isLive(n);
        const ago = Math.max(0, Math.round((Date.now() - n.seenAt) / 1000));
        return h(
          "tr",
          { dataset: { node: n.name }, class: live ? null : "stale" },
          h("th", { scope: "row" }, h("span", { class: "swatch", style: `--swatch:var(${n.color})`, "aria-hidden": "true" }), n.name),
          ...FIGURES.map((f) => h("td", { class: "num", dataset: { figure: f } }, formatNumber(n.latest[f]))),
          h("td", { class: "num" }, live ? timeElement(n.latest.t, { seconds: true }) : `silent for ${ago} s`),
        );
      }),
    );
  }

  _renderLegend() {
    $("legend").replaceChildren(...[...this.nodes.values()].map((n) => h("li", {}, legendSample(n), n.name)));
  }

  // -------------------------------------------------------------- event feed

  _onEvent(msg, { quiet = false } = {}) {
    // History read again after a failed recovery repeats what is already shown.
    const key = `${msg.channel}/${msg.epoch}/${msg.offset}`;
    const list = $("feed");
    if ([...list.children].some((el) => el.dataset.key === key)) return;
    if (this.paused && !quiet) {
      this.missed++;
      this._renderPause();
      return;
    }
    const d = msg.data && typeof msg.data === "object" ? msg.data : { value: msg.data };
    const type = msg.event_type ?? d.event_type ?? "event";
    const when = parseTime(d.occurred_at) ?? msg.ts;
    const { event_id: _id, event_type: _type, aggregate_id: aggregate, occurred_at: _at, ...rest } = d;
    const details = Object.entries(rest)
      .map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`)
      .join(" · ");
    const li = h(
      "li",
      { class: "event", dataset: { channel: msg.channel, type } },
      h("span", { class: "event-time" }, timeElement(when, { seconds: true })),
      h("span", { class: "event-channel", dataset: { kind: msg.channel.split(":").slice(1).join(":") } }, msg.channel.replace(/^dashboard:/, "")),
      h(
        "span",
        { class: "event-main" },
        h("strong", { class: "event-type" }, type),
        aggregate !== undefined ? h("span", { class: "event-aggregate" }, ` ${aggregate}`) : null,
        details ? h("span", { class: "event-details" }, details) : null,
      ),
    );
    // Newest first, by the hub's publish time: history of several channels and live pushes
    // arrive interleaved, and the feed should not depend on which came back first.
    li.dataset.ts = String(msg.ts ?? Date.now());
    li.dataset.key = key;
    const later = [...list.children].find((el) => Number(el.dataset.ts) < Number(li.dataset.ts));
    list.insertBefore(li, later ?? null);
    while (list.childElementCount > FEED_MAX) list.lastElementChild.remove();
    this._updateFeedEmpty();
  }

  _renderPause() {
    const button = $("feed-pause");
    button.setAttribute("aria-pressed", String(this.paused));
    button.textContent = this.paused ? (this.missed ? `Resume (${this.missed} new)` : "Resume") : "Pause";
    if (!this.paused) this.missed = 0;
  }

  _renderFeedChannels() {
    const names = this.feeds.map((f) => h("code", {}, f));
    const parts = names.flatMap((el, i) => (i ? [i === names.length - 1 ? " and " : ", ", el] : [el]));
    $("feed-channels").replaceChildren(...parts);
  }

  _updateFeedEmpty() {
    $("feed-empty").hidden = $("feed").childElementCount > 0;
  }
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** A short line in the node's colour and dash pattern, as drawn in the charts. */
function legendSample(node) {
  const svg = document.createElementNS(SVG_NS, "svg");
  const line = document.createElementNS(SVG_NS, "line");
  const attrs = {
    x1: 2, y1: 5, x2: 30, y2: 5, style: `stroke:var(${node.color})`, "stroke-width": 3, "stroke-linecap": "round",
    "stroke-dasharray": node.dash.length ? node.dash.join(" ") : "none",
  };
  for (const [k, v] of Object.entries(attrs)) line.setAttribute(k, v);
  for (const [k, v] of Object.entries({ class: "legend-line", viewBox: "0 0 32 10", width: 32, height: 10, "aria-hidden": "true" })) svg.setAttribute(k, v);
  svg.append(line);
  return svg;
}

function placeholderRow() {
  return h(
    "tr",
    { class: "placeholder" },
    h("td", { colspan: 6 }, "Waiting for the first report… (nodes report only while ", h("code", {}, "HUB_DASHBOARD_INTERVAL_S"), " is above 0)"),
  );
}

/** `occurred_at` may be Unix ms, Unix seconds or an ISO-8601 string. */
function parseTime(value) {
  if (typeof value === "number") return value < 1e12 ? value * 1000 : value;
  if (typeof value === "string") {
    const ms = Date.parse(value);
    return Number.isNaN(ms) ? null : ms;
  }
  return null;
}
