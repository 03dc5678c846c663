// The demo page: sign-in, connection status, the tab switch, and wiring of the chat and dashboard
// views to one shared HubClient.
import { HubClient } from "./hub-client.js";
import { Chat } from "./chat.js";
import { Dashboard } from "./dashboard.js";
import { $, Banner, describeError, store } from "./ui.js";

const banner = new Banner();

/** Thrown when the hub has no /dev/token, i.e. it is not in development mode. */
class NoDevTokens extends Error {}

/** Fetches a development token for `user` from the hub (POST /dev/token). */
async function fetchDevToken(user) {
  const res = await fetch("/dev/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user }),
  });
  if (res.status === 404) throw new NoDevTokens("the hub does not issue development tokens");
  if (!res.ok) {
    const body = await res.json().catch(() => null);
    const message = body?.error?.message ?? `HTTP ${res.status}`;
    throw new Error(`the hub refused a token: ${message}`);
  }
  const { token } = await res.json();
  if (typeof token !== "string" || !token) throw new Error("the hub answered without a token");
  return token;
}

// ------------------------------------------------------------------ session

let session = null; // {hub, chat, dashboard, user} while signed in

function startSession({ user, getToken }) {
  const hub = new HubClient({ getToken });
  const chat = new Chat({ hub, banner });
  const dashboard = new Dashboard({ hub, banner });
  session = { hub, chat, dashboard, user };

  hub.on("state", (s) => showState(s));
  hub.on("welcome", (w) => {
    session.user = w.user;
    $("me").textContent = w.user;
    chat.setMe(w.user);
  });
  hub.on("error", (err) => {
    // Problems no request is waiting for: a refused resubscribe, a failed token refresh, ...
    banner.show(describeError(err), { kind: "hub" });
  });

  $("me").textContent = user ?? "…";
  $("signin").hidden = true;
  $("account").hidden = false;
  document.querySelector(".tabs").hidden = false;
  hub.connect();
  showView(location.hash === "#dashboard" ? "dashboard" : "chat", { focus: false });
}

function endSession() {
  if (!session) return;
  session.chat.dispose();
  session.dashboard.dispose();
  session.hub.close();
  session = null;
  banner.clear();
  $("account").hidden = true;
  document.querySelector(".tabs").hidden = true;
  for (const view of document.querySelectorAll(".view")) view.hidden = true;
  setStatus("idle", "Not connected");
  showSignin();
}

// ------------------------------------------------------------------ status

function setStatus(state, text, title = "") {
  const status = $("status");
  status.dataset.state = state;
  status.title = title;
  $("status-text").textContent = text;
}

/** What to tell a person when the hub ended the session, keyed by close reason or code. */
function explainStop({ code, reason }) {
  switch (reason) {
    case "invalid token": return "The hub rejected your token.";
    case "token expired": return "Your token has expired.";
    case "connection limit": return "You have too many open connections. Close another tab, then reconnect.";
    case "origin not allowed": return "The hub does not accept connections from this page's origin.";
    case "no token": return "No token is available.";
    default: break;
  }
  switch (code) {
    case 4001: return "The server disconnected this session.";
    case 1007: return "The hub closed the connection: it received invalid text (invalid utf-8).";
    case 1009: return "The hub closed the connection: a message was too big.";
    case 1000: return "The connection was closed.";
    default: return `The connection ended: ${reason || `code ${code}`}.`;
  }
}

function showState(s) {
  switch (s.state) {
    case "connecting":
      setStatus("connecting", s.attempt ? "Reconnecting…" : "Connecting…");
      break;
    case "connected":
      setStatus("connected", "Connected", `node ${s.node}, connection ${s.client}`);
      banner.clear("connection");
      break;
    case "disconnected": {
      const seconds = Math.round(s.retryInMs / 1000);
      setStatus("disconnected", seconds ? `Offline: retrying in ${seconds} s` : "Reconnecting…", s.reason ?? "");
      // Say it in the banner only when it lasts: a quick reconnect needs no alarm.
      if (s.retryInMs >= 2000) {
        const why = s.reason && s.reason !== "connection lost" ? ` (${s.reason})` : "";
        banner.show(`Lost the connection to the hub${why}. Retrying automatically…`, {
          kind: "connection",
          tone: "info",
          action: { label: "Retry now", run: () => retryNow() },
        });
      }
      break;
    }
    case "stopped": {
      if (s.reason === "closed by client") break; // our own sign-out
      setStatus("stopped", "Disconnected", s.reason ?? "");
      const message = explainStop(s);
      if (s.reason === "invalid token" || s.reason === "token expired" || s.reason === "no token") {
        // Only a new token helps: back to the sign-in form, with the reason.
        const user = session?.user;
        endSession();
        // The token form shows the reason next to the field; the name form has no such place.
        if (tokenMode === "paste") showTokenForm(message);
        else {
          banner.show(message, { kind: "connection" });
          if (user) $("name").value = user;
        }
        return;
      }
      banner.show(message, { kind: "connection", action: { label: "Reconnect", run: () => session?.hub.connect() } });
      break;
    }
    default:
      break;
  }
}

function retryNow() {
  if (!session) return;
  // Skips the rest of the backoff; what is queued (a room being entered, a message) carries over.
  if (!session.hub.reconnectNow()) session.hub.connect();
}

// ------------------------------------------------------------------ sign-in

let tokenMode = "dev"; // "dev": tokens from /dev/token; "paste": the user supplies one

function showSignin() {
  $("signin").hidden = false;
  $("signin-form").hidden = tokenMode === "paste";
  $("token-form").hidden = tokenMode !== "paste";
  (tokenMode === "paste" ? $("token") : $("name")).focus();
}

function showTokenForm(message) {
  tokenMode = "paste";
  $("signin").hidden = false;
  $("signin-form").hidden = true;
  $("token-form").hidden = false;
  $("token-error").textContent = message ?? "";
  $("token").focus();
}

$("name").value = store.get("hub.name", "");

$("signin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = $("name");
  const name = input.value.trim();
  const error = $("name-error");
  if (!name || !input.checkValidity()) {
    error.textContent = name ? "Use only letters, digits and . _ - @" : "Please enter a name.";
    input.setAttribute("aria-invalid", "true");
    input.focus();
    return;
  }
  input.removeAttribute("aria-invalid");
  error.textContent = "";
  const submit = $("signin-submit");
  submit.disabled = true;
  submit.textContent = "Joining…";
  try {
    // One token up front tells whether the hub is in development mode at all, and surfaces
    // "hub unreachable" right here in the form instead of as a reconnect loop.
    let first = await fetchDevToken(name);
    store.set("hub.name", name);
    banner.clear();
    startSession({
      user: name,
      getToken: async () => {
        if (first) {
          const token = first;
          first = null;
          return token;
        }
        return fetchDevToken(name);
      },
    });
  } catch (err) {
    if (err instanceof NoDevTokens) {
      showTokenForm();
    } else {
      error.textContent = `Could not join: ${err.message}`;
      input.focus();
    }
  } finally {
    submit.disabled = false;
    submit.textContent = "Join";
  }
});

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const token = $("token").value.trim();
  if (!/^[\w-]+\.[\w-]+\.[\w-]*$/.test(token)) {
    $("token-error").textContent = "That does not look like a JWT (three dot-separated parts).";
    $("token").setAttribute("aria-invalid", "true");
    return;
  }
  $("token").removeAttribute("aria-invalid");
  $("token-error").textContent = "";
  banner.clear();
  // The hub asks again after "invalid token"; the same pasted token then fails once more and
  // the client stops, which brings this form back.
  startSession({ user: null, getToken: async () => token });
});

$("token-back").addEventListener("click", () => {
  tokenMode = "dev";
  showSignin();
});

$("sign-out").addEventListener("click", () => endSession());

// ------------------------------------------------------------------ tabs

const tabs = [...document.querySelectorAll('[role="tab"]')];

function showView(name, { focus = true } = {}) {
  for (const tab of tabs) {
    const selected = tab.id === `tab-${name}`;
    tab.setAttribute("aria-selected", String(selected));
    tab.tabIndex = selected ? 0 : -1;
    $(tab.getAttribute("aria-controls")).hidden = !selected;
    if (selected && focus) tab.focus();
  }
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
  if (!session) return;
  if (name === "dashboard") session.dashboard.show();
  else session.dashboard.hide();
  if (name === "chat") session.chat.show();
}

for (const tab of tabs) {
  tab.addEventListener("click", () => showView(tab.id.slice(4), { focus: false }));
  // Arrow keys move between tabs (WAI-ARIA tabs pattern, automatic activation).
  tab.addEventListener("keydown", (ev) => {
    const i = tabs.indexOf(tab);
    const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[ev.key];
    if (next === undefined) return;
    ev.preventDefault();
    showView(tabs[(next + tabs.length) % tabs.length].id.slice(4));
  });
}

window.addEventListener("hashchange", () => {
  if (session && (location.hash === "#chat" || location.hash === "#dashboard")) {
    showView(location.hash.slice(1), { focus: false });
  }
});

showSignin();
