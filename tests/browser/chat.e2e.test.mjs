// Two people chat through the real hub in two browser contexts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { artifact } from "./lib/paths.mjs";
import { openPage, signIn, unexpectedProblems, useHubAndBrowser } from "./lib/browser.mjs";

let hub;
let chrome;

// One hub and one Chromium for the file; a failed test leaves screenshots of its pages (and
// what they logged) in the artifacts directory.
useHubAndBrowser(async (h, c) => {
  hub = h;
  chrome = c;
});

const message = (page, text) => page.locator("#messages .msg", { hasText: text });
const presence = (page) => page.locator("#presence-list .person");

test("two people in one room see each other's messages and presence", { timeout: 60_000 }, async () => {
  // Something already said before anyone opens the page: it must come from history.
  await hub.publish("chat:lobby", { text: "Welcome to the lobby" }, { event_type: "chat.message" });

  const alice = await openPage(chrome.browser, hub.url);
  await signIn(alice, "alice");
  await message(alice, "Welcome to the lobby").waitFor();
  assert.equal(await message(alice, "Welcome to the lobby").locator(".author").textContent(), "service");
  await assert.doesNotReject(presence(alice).filter({ hasText: "alice" }).waitFor());

  const bob = await openPage(chrome.browser, hub.url);
  await signIn(bob, "bob");
  await message(bob, "Welcome to the lobby").waitFor();

  // Presence: each sees both, alice through bob's join push.
  await presence(alice).filter({ hasText: "bob" }).waitFor();
  await presence(bob).filter({ hasText: "alice" }).waitFor();
  assert.equal(await presence(alice).count(), 2);
  assert.match(await alice.locator("#room-meta").textContent(), /2 people here/);

  // alice writes (Enter sends), bob reads it with sender and time.
  await alice.getByLabel("Message", { exact: true }).fill("Hello bob!");
  await alice.keyboard.press("Enter");
  const atBob = message(bob, "Hello bob!");
  await atBob.waitFor();
  assert.equal(await atBob.locator(".author").textContent(), "alice");
  assert.match(await atBob.locator("time").getAttribute("datetime"), /^\d{4}-\d\d-\d\dT/);
  await message(alice, "Hello bob!").waitFor(); // the publisher gets its own publication too
  assert.equal(await alice.getByLabel("Message", { exact: true }).inputValue(), "", "composer cleared after sending");

  // bob answers with the button, on two lines.
  await bob.getByLabel("Message", { exact: true }).fill("Hi alice\nsecond line");
  await bob.getByRole("button", { name: "Send" }).click();
  const atAlice = message(alice, "Hi alice");
  await atAlice.waitFor();
  assert.equal(await atAlice.locator(".author").textContent(), "bob");
  assert.equal(await atAlice.locator(".msg-text").textContent(), "Hi alice\nsecond line");

  // Each message appears once, in order.
  const texts = await alice.locator("#messages .msg-text").allTextContents();
  assert.deepEqual(texts, ["Welcome to the lobby", "Hello bob!", "Hi alice\nsecond line"]);

  // bob moves to another room: alice sees him leave; bob sees only that room's messages.
  await bob.getByRole("button", { name: "random", exact: true }).click();
  await presence(alice).filter({ hasText: "bob" }).waitFor({ state: "detached" });
  assert.equal(await presence(alice).count(), 1);
  await bob.locator("#room-name", { hasText: "random" }).waitFor();
  assert.equal(await message(bob, "Hello bob!").count(), 0);

  // A room typed in by name works the same way.
  await bob.getByLabel("Open a room").fill("e2e-room");
  await bob.keyboard.press("Enter");
  await bob.locator("#room-name", { hasText: "e2e-room" }).waitFor();
  await bob.getByLabel("Message", { exact: true }).fill("first in a new room");
  await bob.keyboard.press("Enter");
  await message(bob, "first in a new room").waitFor();
  const hist = await hub.api("GET", "/api/history/chat:e2e-room");
  assert.deepEqual(hist.publications.map((p) => p.data.text), ["first in a new room"]);
  assert.equal(hist.publications[0].event_type, "chat.message");

  await alice.screenshot({ path: artifact("chat.png") });
  assert.deepEqual(unexpectedProblems(alice), []);
  assert.deepEqual(unexpectedProblems(bob), []);
});

test("an error from the hub is shown plainly", { timeout: 30_000 }, async () => {
  const carol = await openPage(chrome.browser, hub.url);
  await signIn(carol, "carol");
  const banner = carol.locator("#banner");
  // A message over the hub's publication limit is refused with `too_large`.
  await carol.evaluate(() => {
    const input = document.getElementById("message-input");
    input.value = "y".repeat(70 * 1024); // over HUB_MAX_PUBLICATION_BYTES (64 KiB)
    input.removeAttribute("maxlength");
    document.getElementById("send").click();
  });
  await banner.waitFor();
  assert.match(await banner.textContent(), /too_large|too large/i);
  // The text is kept so nothing typed is lost.
  assert.equal((await carol.locator("#message-input").inputValue()).length, 70 * 1024);
  await carol.getByRole("button", { name: "Dismiss message" }).click();
  await banner.waitFor({ state: "hidden" });
  assert.deepEqual(unexpectedProblems(carol), []);
});

test("the page is usable with the keyboard alone", { timeout: 30_000 }, async () => {
  const dave = await openPage(chrome.browser, hub.url);
  // The name field has focus from the start: type and press Enter.
  assert.equal(await dave.evaluate(() => document.activeElement.id), "name");
  await dave.keyboard.type("dave");
  await dave.keyboard.press("Enter");
  await dave.locator('#status[data-state="connected"]').waitFor();
  // Arrow keys switch tabs.
  await dave.getByRole("tab", { name: "Chat" }).focus();
  await dave.keyboard.press("ArrowRight");
  assert.equal(await dave.getByRole("tab", { name: "Live dashboard" }).getAttribute("aria-selected"), "true");
  assert.equal(await dave.locator("#view-dashboard").isVisible(), true);
  await dave.keyboard.press("ArrowLeft");
  assert.equal(await dave.locator("#view-chat").isVisible(), true);
  // From the composer, Tab reaches Send.
  await dave.getByLabel("Message", { exact: true }).focus();
  await dave.keyboard.press("Tab");
  assert.equal(await dave.evaluate(() => document.activeElement.id), "send");
  // Rooms switch with Tab and Enter, and focus stays on the room just chosen (so that the next
  // Tab goes on from there instead of starting over at the top of the page).
  await dave.locator("#room-list button").first().focus();
  await dave.keyboard.press("Tab");
  const focusedRoom = () => dave.evaluate(() => document.activeElement.dataset.room ?? document.activeElement.tagName);
  assert.equal(await focusedRoom(), "chat:random");
  await dave.keyboard.press("Enter");
  await dave.locator("#room-name", { hasText: "random" }).waitFor();
  assert.equal(await dave.locator('#room-list [aria-current="true"]').textContent(), "#random");
  assert.equal(await focusedRoom(), "chat:random");
  await dave.keyboard.press("Shift+Tab");
  await dave.keyboard.press("Space");
  await dave.locator("#room-name", { hasText: "lobby" }).waitFor();
  assert.equal(await focusedRoom(), "chat:lobby");
  await dave.locator("#room-meta", { hasText: "1 person here" }).waitFor();
  assert.deepEqual(unexpectedProblems(dave), []);
});
