// The chat view: rooms, history + live messages, presence, and the composer.
import { $, connectionGone, describeError, h, hueFor, isValidChannel, store, timeElement } from "./ui.js";

const DEFAULT_ROOMS = ["chat:lobby", "chat:random", "chat:dev"];
const HISTORY_LIMIT = 50;
const MAX_ITEMS = 300; // messages kept on screen per room
const GROUP_WINDOW_MS = 5 * 60 * 1000; // consecutive messages by one person within this are grouped
// Failures worth entering the room again for once the hub is back; others (e.g. `forbidden`) wait
// for the person to click the room again.
const RETRY_ON_RECONNECT = new Set(["disconnected", "timeout", "unavailable", "internal", "rate_limited", "stopped"]);

export class Chat {
  constructor({ hub, banner }) {
    this.hub = hub;
    this.banner = banner;
    this.me = null;
    this.room = null;
    this.joined = false; // whether this.room is entered (history loaded and subscribed)
    this.failure = null; // the error that kept us out of this.room, if any
    this.enterSeq = 0; // guards against late replies for a room we already left
    this.rooms = [...new Set([...DEFAULT_ROOMS, ...store.get("hub.rooms", [])])];
    this.abort = new AbortController();

    this.list = $("messages");
    this.presenceList = $("presence-list");
    this._resetRoomState();
    this._renderRooms();
    this._wireForms();
    // A room that could not be entered because of the connection is entered again once the hub
    // welcomes us back.
    this.offWelcome = hub.on("welcome", () => {
      if (this.room && !this.joined && this.failure && RETRY_ON_RECONNECT.has(this.failure.code)) this.enter(this.room);
    });
    this.enter(store.get("hub.room", DEFAULT_ROOMS[0]));
  }

  setMe(user) {
    this.me = user;
    this._renderPresence();
  }

  show() {
    this._scrollToEnd();
  }

  dispose() {
    this.abort.abort();
    this.offWelcome();
    this.enterSeq++;
    this.list.replaceChildren();
    this.presenceList.replaceChildren();
    $("presence-announcer").textContent = "";
    $("room-list").replaceChildren();
  }

  // -------------------------------------------------------------- rooms

  _renderRooms() {
    const ul = $("room-list");
    // Keep keyboard focus on the room button it was on: re-rendering must not drop it to <body>.
    const focused = ul.contains(document.activeElement) ? document.activeElement.dataset.room : null;
    ul.replaceChildren(
      ...this.rooms.map((room) => {
        const button = h(
          "button",
          { type: "button", class: "room", "aria-current": room === this.room ? "true" : null, dataset: { room } },
          h("span", { class: "hash", "aria-hidden": "true" }, "#"),
          roomLabel(room),
        );
        button.addEventListener("click", () => this.enter(room));
        return h("li", {}, button);
      }),
    );
    if (focused) [...ul.querySelectorAll("button")].find((b) => b.dataset.room === focused)?.focus();
  }

  _wireForms() {
    const { signal } = this.abort;
    $("new-room-form").addEventListener(
      "submit",
      (ev) => {
        ev.preventDefault();
        const input = $("new-room");
        const typed = input.value.trim().replace(/^chat:/, "");
        const room = `chat:${typed}`;
        const error = $("new-room-error");
        if (!typed || !isValidChannel(room)) {
          error.textContent = "Use letters, digits and _ - : . @ / = | only.";
          input.setAttribute("aria-invalid", "true");
          return;
        }
        input.removeAttribute("aria-invalid");
        error.textContent = "";
        input.value = "";
        if (!this.rooms.includes(room)) {
          this.rooms.push(room);
          store.set("hub.rooms", this.rooms.filter((r) => !DEFAULT_ROOMS.includes(r)));
        }
        this.enter(room);
        $("message-input").focus();
      },
      { signal },
    );

    // An error about the typed room name goes away as soon as the name is edited.
    $("new-room").addEventListener(
      "input",
      () => {
        $("new-room").removeAttribute("aria-invalid");
        $("new-room-error").textContent = "";
      },
      { signal },
    );

    const input = $("message-input");
    $("composer").addEventListener(
      "submit",
      (ev) => {
        ev.preventDefault();
        this._send();
      },
      { signal },
    );
    input.addEventListener(
      "keydown",
      (ev) => {
        // Enter sends; Shift+Enter (and Enter while an IME is composing) inserts a line break.
        if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
          ev.preventDefault();
          this._send();
        }
      },
      { signal },
    );
    input.addEventListener("input", () => autoGrow(input), { signal });
  }

  /**
   * Switches to `room`: leaves the previous one, loads history, subscribes, loads presence.
   * For the current room it does nothing, unless entering it failed: then it tries again.
   */
  async enter(room) {
    if (room === this.room && !this.failure) return;
    const previous = this.room;
    this.room = room;
    this.joined = false;
    this.failure = null;
    const seq = ++this.enterSeq;
    store.set("hub.room", room);
    this._renderRooms();
    this._resetRoomState();
    $("room-name").textContent = roomLabel(room);
    $("message-input").placeholder = `Message #${roomLabel(room)}`;
    $("room-meta").textContent = this.hub.state === "connected" ? "Loading…" : "Waiting for the hub…";
    this.list.setAttribute("aria-busy", "true");

    if (previous && previous !== room) {
      // Not awaited: leaving must not delay entering, and a failure here changes nothing visible.
      this.hub.unsubscribe(previous).catch(() => {});
    }
    try {
      // History first, then subscribe *from* that position: the hub fills any gap between the
      // two (recover), so nothing is lost or shown twice.
      const hist = await this.hub.history(room, { limit: HISTORY_LIMIT });
      if (seq !== this.enterSeq) return;
      // Merged while the log is busy, so that screen readers do not read out the whole history.
      this._merge(hist.publications);
      this.list.removeAttribute("aria-busy");
      this._updateEmpty();
      await this.hub.subscribe(room, {
        since: { offset: hist.offset, epoch: hist.epoch },
        onMessage: (msg) => seq === this.enterSeq && this._add(msg),
        onJoin: (p) => seq === this.enterSeq && this._presenceChange("join", p),
        onLeave: (p) => seq === this.enterSeq && this._presenceChange("leave", p),
        onRecoveryFailed: () => seq === this.enterSeq && this._reload(seq),
        onSubscribed: () => seq === this.enterSeq && this._loadPresence(seq),
      });
      if (seq !== this.enterSeq) return;
      this.joined = true;
      this.banner.clear("room");
    } catch (err) {
      if (seq !== this.enterSeq) return;
      this.failure = err;
      this.list.removeAttribute("aria-busy");
      this._updateEmpty();
      const again = RETRY_ON_RECONNECT.has(err?.code) ? "retrying when the hub is back" : "select the room to try again";
      $("room-meta").textContent = `Not joined (${again})`;
      // A dropped connection is already shown (status, connection banner); anything else is news.
      if (!connectionGone(err)) {
        this.banner.show(`Could not enter #${roomLabel(room)}: ${describeError(err)}`, { kind: "room" });
      }
    }
  }

  _resetRoomState() {
    this.items = []; // sorted [{key, sortKey, el, msg?}]
    this.keys = new Set(); // the items' keys, to drop what is already shown
    this.presenceLoaded = false;
    this.epochs = new Map(); // epoch -> index in order of first appearance, for sorting
    this.presence = new Map(); // client -> {user, info}
    this.list?.replaceChildren();
    this.presenceList?.replaceChildren();
    this._updateEmpty();
  }

  /** Publications may have been missed (hub restart, long outage): reload the latest history. */
  async _reload(seq) {
    try {
      const hist = await this.hub.history(this.room, { limit: HISTORY_LIMIT });
      if (seq !== this.enterSeq) return;
      this._merge(hist.publications, { markGaps: true });
    } catch (err) {
      if (seq === this.enterSeq && !connectionGone(err)) {
        this.banner.show(`Could not reload messages: ${describeError(err)}`);
      }
    }
  }

  // -------------------------------------------------------------- messages

  _sortKey(epoch, offset) {
    if (!this.epochs.has(epoch)) this.epochs.set(epoch, this.epochs.size);
    // Offsets stay far below 2^40 in any realistic channel; epochs order the segments.
    return this.epochs.get(epoch) * 2 ** 41 + offset * 2;
  }

  /** Adds a live message; most land at the end, so that case stays cheap. */
  _add(msg) {
    const key = `${msg.epoch}/${msg.offset}`;
    if (this.keys.has(key)) return;
    const sortKey = this._sortKey(msg.epoch, msg.offset);
    const stick = this._nearBottom();
    this._insert({ key, sortKey, msg });
    this._trim();
    this._updateEmpty();
    if (stick || msg.from?.user === this.me) this._scrollToEnd();
  }

  /** Merges publications (from history) in, and with `markGaps`, marks where some are missing. */
  _merge(publications, { markGaps = false } = {}) {
    const stick = this._nearBottom();
    for (const msg of publications) {
      const key = `${msg.epoch}/${msg.offset}`;
      if (this.keys.has(key)) continue;
      this._insert({ key, sortKey: this._sortKey(msg.epoch, msg.offset), msg });
    }
    if (markGaps) this._markGaps();
    this._trim();
    this._updateEmpty();
    if (stick || !markGaps) this._scrollToEnd();
  }

  /** Inserts dividers where consecutive messages are not consecutive publications. */
  _markGaps() {
    const msgs = this.items.filter((it) => it.msg);
    for (let i = 1; i < msgs.length; i++) {
      const a = msgs[i - 1].msg;
      const b = msgs[i].msg;
      let text = null;
      if (a.epoch !== b.epoch) text = "The hub restarted this room's history: the messages above are from before.";
      else if (b.offset > a.offset + 1) {
        const n = b.offset - a.offset - 1;
        text = `${n} message${n === 1 ? " was" : "s were"} missed while you were away.`;
      }
      if (!text) continue;
      const key = `gap/${b.epoch}/${b.offset}`;
      if (this.keys.has(key)) continue;
      this._insert({ key, sortKey: msgs[i].sortKey - 1, divider: text });
    }
  }

  _insert(item) {
    item.el = item.msg ? this._renderMessage(item.msg) : h("li", { class: "divider", role: "note" }, h("span", {}, item.divider));
    item.el.dataset.key = item.key;
    this.keys.add(item.key);
    let at = this.items.length;
    while (at > 0 && this.items[at - 1].sortKey > item.sortKey) at--;
    const before = this.items[at];
    this.items.splice(at, 0, item);
    if (before) this.list.insertBefore(item.el, before.el);
    else this.list.append(item.el);
    this._groupWithPrevious(at);
    if (this.items[at + 1]) this._groupWithPrevious(at + 1);
  }

  /** Hides the author line of a message that directly follows one by the same person. */
  _groupWithPrevious(index) {
    const item = this.items[index];
    const prev = this.items[index - 1];
    if (!item?.msg) return;
    const grouped = Boolean(
      prev?.msg &&
        senderOf(prev.msg) === senderOf(item.msg) &&
        item.msg.ts - prev.msg.ts < GROUP_WINDOW_MS,
    );
    item.el.classList.toggle("grouped", grouped);
  }

  _trim() {
    while (this.items.length > MAX_ITEMS) {
      const dropped = this.items.shift();
      dropped.el.remove();
      this.keys.delete(dropped.key);
    }
    if (this.items[0]?.msg) this.items[0].el.classList.remove("grouped");
  }

  _renderMessage(msg) {
    const sender = senderOf(msg);
    const mine = msg.from?.user !== undefined && msg.from.user === this.me;
    const text = typeof msg.data?.text === "string" ? msg.data.text : JSON.stringify(msg.data);
    const li = h(
      "li",
      { class: `msg${mine ? " mine" : ""}${msg.from ? "" : " service"}` },
      h("span", { class: "avatar", "aria-hidden": "true", style: `--hue:${hueFor(sender)}` }, initials(sender)),
      h(
        "div",
        { class: "msg-body" },
        h(
          "p",
          { class: "msg-meta" },
          h("span", { class: "author" }, sender),
          mine ? h("span", { class: "visually-hidden" }, " (you)") : null,
          " ",
          timeElement(msg.ts),
        ),
        h("p", { class: "msg-text" }, text),
      ),
    );
    return li;
  }

  _updateEmpty() {
    $("messages-empty").hidden = this.items.length > 0 || this.list?.getAttribute("aria-busy") === "true";
  }

  _nearBottom() {
    const l = this.list;
    return l.scrollHeight - l.scrollTop - l.clientHeight < 80;
  }

  _scrollToEnd() {
    this.list.scrollTop = this.list.scrollHeight;
  }

  async _send() {
    const input = $("message-input");
    const text = input.value.trim();
    // One message at a time: Enter pressed again while the first is still on its way (e.g. queued
    // until the hub is back) must not send it twice.
    if (!text || !this.room || this.sending) return;
    this.sending = true;
    const button = $("send");
    button.disabled = true;
    input.setAttribute("aria-busy", "true");
    try {
      await this.hub.publish(this.room, { text }, { eventType: "chat.message" });
      // Only clear once the hub accepted it, so that a failure never loses what was typed.
      if (input.value.trim() === text) input.value = "";
      autoGrow(input);
    } catch (err) {
      this.banner.show(`Message not sent: ${describeError(err)}`);
    } finally {
      this.sending = false;
      button.disabled = false;
      input.removeAttribute("aria-busy");
      // Back to the composer, unless the person has moved on meanwhile (a send can wait for the hub).
      if (document.activeElement === document.body || document.activeElement === button) input.focus();
    }
  }

  // -------------------------------------------------------------- presence

  async _loadPresence(seq) {
    // Joins and leaves that arrive while the request is out must win over the (older) snapshot.
    const changes = [];
    this._presenceChanges = changes;
    try {
      const clients = await this.hub.presence(this.room);
      if (seq !== this.enterSeq) return;
      this.presence = new Map(clients.map((c) => [c.client, c]));
      for (const [kind, p] of changes) {
        if (kind === "join") this.presence.set(p.client, p);
        else this.presence.delete(p.client);
      }
      this.presenceLoaded = true;
      this._renderPresence();
    } catch (err) {
      if (seq === this.enterSeq && !connectionGone(err)) {
        this.banner.show(`Could not load who is here: ${describeError(err)}`);
      }
    } finally {
      if (this._presenceChanges === changes) this._presenceChanges = null;
    }
  }

  _presenceChange(kind, p) {
    this._presenceChanges?.push([kind, p]);
    const wasHere = this._isHere(p.user);
    if (kind === "join") this.presence.set(p.client, p);
    else this.presence.delete(p.client);
    // Say it for screen readers only when the person (not just another tab of theirs) came or went.
    const isHere = this._isHere(p.user);
    if (wasHere !== isHere) {
      $("presence-announcer").textContent = `${p.user} ${isHere ? "joined" : "left"} #${roomLabel(this.room)}`;
    }
    this._renderPresence();
  }

  _isHere(user) {
    for (const c of this.presence.values()) if (c.user === user) return true;
    return false;
  }

  _renderPresence() {
    // One entry per person, however many tabs they have open.
    const byUser = new Map();
    for (const c of this.presence.values()) byUser.set(c.user, (byUser.get(c.user) ?? 0) + 1);
    const users = [...byUser.keys()].sort((a, b) => (a === this.me ? -1 : b === this.me ? 1 : a.localeCompare(b)));
    this.presenceList.replaceChildren(
      ...users.map((user) => {
        const tabs = byUser.get(user);
        return h(
          "li",
          { class: "person", dataset: { user } },
          h("span", { class: "avatar small", "aria-hidden": "true", style: `--hue:${hueFor(user)}` }, initials(user)),
          h("span", { class: "person-name" }, user),
          user === this.me ? h("span", { class: "tag" }, "you") : null,
          tabs > 1 ? h("span", { class: "muted small" }, `${tabs} tabs`) : null,
        );
      }),
    );
    $("presence-count").textContent = users.length ? `(${users.length})` : "";
    if (this.presenceLoaded) {
      $("room-meta").textContent = users.length === 1 ? "1 person here" : `${users.length} people here`;
    }
  }
}

function roomLabel(room) {
  return room.startsWith("chat:") ? room.slice(5) : room;
}

function senderOf(msg) {
  return msg.from?.user ?? "service";
}

function initials(name) {
  return [...name][0]?.toUpperCase() ?? "?";
}

/** Grows the composer with its content, up to the CSS max-height. */
function autoGrow(textarea) {
  textarea.style.height = "auto";
  textarea.style.height = `${textarea.scrollHeight}px`;
}
