// A page whose hub goes away comes back by itself and shows what was published meanwhile.
import { test } from "node:test";
import assert from "node:assert/strict";
import { artifact } from "./lib/paths.mjs";
import { REFUSED, openPage, signIn, unexpectedProblems, useHubAndBrowser } from "./lib/browser.mjs";

let hub;
let chrome;

// One hub and one Chromium for the file; a failed test leaves screenshots of its pages (and
// what they logged) in the artifacts directory.
useHubAndBrowser(async (h, c) => {
  hub = h;
  chrome = c;
});

const message = (page, text) => page.locator("#messages .msg", { hasText: text });
const status = (page) => page.locator("#status");

test("a cut connection reconnects by itself, with a new token, and shows what was published after the restart", { timeout: 90_000 }, async () => {
  const page = await openPage(chrome.browser, hub.url);
  await signIn(page, "alice");
  await hub.publish("chat:lobby", { text: "before the cut" }, { event_type: "chat.message" });
  await message(page, "before the cut").waitFor();

  // Cut: the process dies without a close frame (the browser sees 1006).
  await hub.kill();
  await page.locator('#status[data-state="disconnected"]').waitFor();
  assert.match(await status(page).textContent(), /Offline|Reconnecting/);
  // Let it fail to reconnect at least once while nothing listens.
  await page.waitForTimeout(1500);

  // Same port, new process: a development hub has a new secret, so the old token is now
  // "invalid token" and the page must fetch a fresh one by itself; its memory engine also lost
  // the channel's history (new epoch), so the page must reload instead of trusting its offsets.
  await hub.start();
  await hub.publish("chat:lobby", { text: "published right after the restart" }, { event_type: "chat.message" });
  await page.locator('#status[data-state="connected"]').waitFor({ timeout: 30_000 });
  await message(page, "published right after the restart").waitFor();

  // And live pushes flow again.
  await hub.publish("chat:lobby", { text: "published once reconnected" }, { event_type: "chat.message" });
  await message(page, "published once reconnected").waitFor();
  // What was on screen before stays; nothing is shown twice.
  assert.equal(await message(page, "before the cut").count(), 1);
  assert.equal(await message(page, "published right after the restart").count(), 1);

  // The page can publish on the new connection.
  await page.getByLabel("Message", { exact: true }).fill("back online");
  await page.keyboard.press("Enter");
  await message(page, "back online").waitFor();
  const presence = await hub.api("GET", "/api/presence/chat:lobby");
  assert.deepEqual(presence.clients.map((c) => c.user), ["alice"]);

  // A graceful restart (SIGTERM: close 1001 "going away") is survived the same way.
  await hub.stop();
  await page.locator('#status[data-state="disconnected"]').waitFor();
  await hub.start();
  await hub.publish("chat:lobby", { text: "after the second restart" }, { event_type: "chat.message" });
  await message(page, "after the second restart").waitFor({ timeout: 30_000 });
  await page.locator('#status[data-state="connected"]').waitFor();
  await page.locator("#banner").waitFor({ state: "hidden" });

  await page.screenshot({ path: artifact("reconnected.png") });
  // While the hub was down the browser logs refused connections; nothing else may appear.
  assert.deepEqual(unexpectedProblems(page, REFUSED), []);
});

test("a session disconnected through the server API stops, says so, and can reconnect", { timeout: 30_000 }, async () => {
  const page = await openPage(chrome.browser, hub.url);
  await signIn(page, "mallory");
  const answer = await hub.api("POST", "/api/disconnect", { user: "mallory" });
  assert.equal(answer.disconnected, 1);
  await page.locator('#status[data-state="stopped"]').waitFor();
  const banner = page.locator("#banner");
  await banner.waitFor();
  assert.match(await banner.textContent(), /server disconnected this session/);
  // It does not come back by itself (close 4001 means: up to the application) ...
  await page.waitForTimeout(1500);
  assert.equal(await page.locator("#status").getAttribute("data-state"), "stopped");
  // ... but the person can.
  await page.getByRole("button", { name: "Reconnect" }).click();
  await page.locator('#status[data-state="connected"]').waitFor();
  await hub.publish("chat:lobby", { text: "hello again mallory" });
  await message(page, "hello again mallory").waitFor();
  assert.deepEqual(unexpectedProblems(page), []);
});

test("a room, a message and the dashboard asked for while the hub is down all work once it is back", { timeout: 90_000 }, async () => {
  const page = await openPage(chrome.browser, hub.url);
  await signIn(page, "olga");
  await page.locator("#room-meta", { hasText: "1 person here" }).waitFor();

  await hub.kill();
  await page.locator('#status[data-state="disconnected"]').waitFor();
  // During the outage: switch rooms, send a message, open the dashboard (which subscribes on first show).
  await page.getByRole("button", { name: "random", exact: true }).click();
  await page.locator("#room-name", { hasText: "random" }).waitFor();
  await page.getByLabel("Message", { exact: true }).fill("typed while offline");
  await page.keyboard.press("Enter");
  await page.getByRole("tab", { name: "Live dashboard" }).click();
  // Longer than the client's 10 s request timeout: time spent queued offline must not count.
  await page.waitForTimeout(11_000);
  assert.doesNotMatch(await page.locator("#banner").textContent(), /Could not|not sent/);
  assert.notEqual(await page.locator("#status").getAttribute("data-state"), "connected");

  await hub.start();
  // Skip the rest of the backoff, as a person would: "Retry now" must keep what is queued.
  const retry = page.getByRole("button", { name: "Retry now" });
  if (await retry.isVisible()) await retry.click();
  await page.locator('#status[data-state="connected"]').waitFor({ timeout: 30_000 });

  // The dashboard follows the hub's figures and its event feed.
  await page.locator("#nodes-body tr[data-node]").first().waitFor({ timeout: 10_000 });
  const info = await hub.api("GET", "/api/info");
  assert.equal(await page.locator("#nodes-body tr[data-node]").first().getAttribute("data-node"), info.nodes[0].node);
  // Whenever it is published, history-then-subscribe-from-there shows it exactly once.
  await hub.publish("dashboard:orders", { event_type: "order.placed", aggregate_id: "order-after-outage" }, { event_type: "order.placed" });
  const order = page.locator('#feed li[data-channel="dashboard:orders"]', { hasText: "order-after-outage" });
  await order.waitFor();

  // The room entered offline is joined: the queued message went out once, live pushes arrive.
  await page.getByRole("tab", { name: "Chat" }).click();
  await message(page, "typed while offline").waitFor();
  await hub.publish("chat:random", { text: "published after the outage" }, { event_type: "chat.message" });
  await message(page, "published after the outage").waitFor();
  await page.locator("#room-meta", { hasText: "1 person here" }).waitFor();
  const hist = await hub.api("GET", "/api/history/chat:random");
  assert.deepEqual(hist.publications.map((p) => p.data.text), ["typed while offline", "published after the outage"]);
  assert.equal(await message(page, "typed while offline").count(), 1);
  assert.deepEqual(unexpectedProblems(page, REFUSED), []);
});
