// The live dashboard follows the hub's own figures and the domain-event channels.
import { test } from "node:test";
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
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

/** The figure shown in the node table, as a number. */
async function figure(page, name) {
  const text = await page.locator(`#nodes-body tr[data-node] td[data-figure="${name}"]`).first().textContent();
  return Number(text.replace(/[^\d.]/g, ""));
}

/** Waits until the node table shows `name` at or above `min`; returns the value seen. */
async function figureAtLeast(page, name, min, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await figure(page, name);
    if (value >= min) return value;
    if (Date.now() > deadline) throw new Error(`${name} stayed at ${value}, below ${min}`);
    await sleep(200);
  }
}

/** A cheap fingerprint of what a canvas shows: count and checksum of its painted pixels. */
function canvasFingerprint(page, id) {
  return page.evaluate((canvasId) => {
    const c = document.getElementById(canvasId);
    const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let painted = 0;
    let sum = 0;
    for (let i = 3; i < data.length; i += 4) {
      if (data[i]) {
        painted++;
        sum = (sum + data[i - 3] * 3 + data[i - 2] * 5 + data[i - 1] * 7 + i) % 1_000_000_007;
      }
    }
    return { painted, sum };
  }, id);
}

test("the dashboard's figures and charts move while load runs", { timeout: 90_000 }, async () => {
  const page = await openPage(chrome.browser, hub.url, { hash: "#dashboard" });
  await signIn(page, "ops");
  assert.equal(await page.getByRole("tab", { name: "Live dashboard" }).getAttribute("aria-selected"), "true");

  const row = page.locator("#nodes-body tr[data-node]");
  await row.first().waitFor({ timeout: 10_000 });
  const node = await row.first().getAttribute("data-node");
  const info = await hub.api("GET", "/api/info");
  assert.equal(node, info.nodes[0].node, "the row is the hub's node");
  await page.locator("#legend li", { hasText: node }).waitFor();
  // The very first report may predate this page's own connection; the next ones count it.
  await figureAtLeast(page, "connections", 1);

  const idlePublications = await figure(page, "publications_per_s");
  const before = await canvasFingerprint(page, "chart-publications_per_s");
  assert.ok(before.painted > 0, "the chart has axes and a line");

  // Load: ~40 publications/s to a chat room the page itself is subscribed to (the chat view
  // keeps #lobby open), bounded in count and time, until the page shows it.
  let sent = 0;
  let seen = false;
  const deadline = Date.now() + 15_000;
  while (!seen && Date.now() < deadline && sent < 600) {
    await Promise.all(Array.from({ length: 4 }, (_, i) => hub.publish("chat:lobby", { text: `load ${sent + i}` })));
    sent += 4;
    await sleep(100);
    if (sent % 20 === 0) seen = (await figure(page, "publications_per_s")) >= 10;
  }
  assert.ok(seen, `publications/s on the page never reached 10 (idle: ${idlePublications}, sent ${sent})`);
  assert.ok((await figure(page, "deliveries_per_s")) >= 5, "deliveries follow publications");
  const total = await page.locator("#total-publications_per_s").textContent();
  assert.ok(Number(total.replace(/[^\d.]/g, "")) >= 10, `chart caption total ${total}`);

  const during = await canvasFingerprint(page, "chart-publications_per_s");
  assert.notDeepEqual(during, before, "the publications chart was redrawn with the load");
  assert.match(await page.locator("#chart-publications_per_s").getAttribute("aria-label"), new RegExp(`Now: ${node} \\d`));

  await page.screenshot({ path: artifact("dashboard.png"), fullPage: true });
  assert.deepEqual(unexpectedProblems(page), []);
});

test("domain events from dashboard channels appear in the live feed", { timeout: 30_000 }, async () => {
  const page = await openPage(chrome.browser, hub.url, { hash: "#dashboard" });
  await signIn(page, "ops2");
  await page.locator("#feed-channels", { hasText: "dashboard:orders" }).waitFor();
  // Subscriptions happen right after sign-in; give them a moment before publishing live events.
  await page.locator("#nodes-body tr[data-node]").first().waitFor();

  const envelope = (type, aggregate, extra) => ({
    event_id: `${aggregate}-${type}`,
    event_type: type,
    aggregate_id: aggregate,
    occurred_at: new Date().toISOString(),
    ...extra,
  });
  await hub.publish("dashboard:orders", envelope("order.placed", "order-4711", { total: 99.5, currency: "EUR" }), { event_type: "order.placed" });
  await hub.publish("dashboard:sensors", envelope("sensor.reading", "sensor-7", { temperature_c: 21.5 }), { event_type: "sensor.reading" });

  const order = page.locator('#feed li[data-channel="dashboard:orders"]', { hasText: "order-4711" });
  await order.waitFor();
  assert.match(await order.textContent(), /order\.placed/);
  assert.match(await order.textContent(), /total: 99\.5/);
  const sensor = page.locator('#feed li[data-channel="dashboard:sensors"]', { hasText: "sensor-7" });
  await sensor.waitFor();
  // Newest first.
  assert.equal(await page.locator("#feed li").first().getAttribute("data-channel"), "dashboard:sensors");

  // Pause holds new events back and counts them; resume shows the following ones again.
  await page.getByRole("button", { name: "Pause" }).click();
  await hub.publish("dashboard:orders", envelope("order.shipped", "order-4711", {}), { event_type: "order.shipped" });
  await page.getByRole("button", { name: "Resume (1 new)" }).waitFor();
  assert.equal(await page.locator("#feed li", { hasText: "order.shipped" }).count(), 0);
  await page.getByRole("button", { name: /Resume/ }).click();
  assert.equal(await page.getByRole("button", { name: "Pause" }).getAttribute("aria-pressed"), "false");

  // Another channel can be watched by name.
  await page.getByLabel("Watch another dashboard channel").fill("payments");
  await page.getByRole("button", { name: "Watch" }).click();
  await page.locator("#feed-channels", { hasText: "dashboard:payments" }).waitFor();
  await sleep(300); // its subscribe is a round trip away
  await hub.publish("dashboard:payments", envelope("payment.captured", "pay-1", { amount: 5 }), { event_type: "payment.captured" });
  await page.locator('#feed li[data-channel="dashboard:payments"]', { hasText: "payment.captured" }).waitFor();

  assert.deepEqual(unexpectedProblems(page), []);
});

test("after a hub restart the feed reloads the events it could not recover", { timeout: 60_000 }, async () => {
  const page = await openPage(chrome.browser, hub.url, { hash: "#dashboard" });
  await signIn(page, "ops3");
  await hub.publish("dashboard:orders", { event_type: "order.placed", aggregate_id: "order-before" }, { event_type: "order.placed" });
  const feedItem = (aggregate) => page.locator('#feed li[data-channel="dashboard:orders"]', { hasText: aggregate });
  await feedItem("order-before").waitFor();

  // The page is kept offline while the hub restarts (its memory engine loses the channel's
  // history: a new epoch) and an event is published, so that it can only learn of that event by
  // reloading history when its resubscribe answers recovered:false.
  await page.context().setOffline(true);
  await hub.kill();
  await page.locator('#status[data-state="disconnected"]').waitFor();
  await hub.start();
  await hub.publish("dashboard:orders", { event_type: "order.placed", aggregate_id: "order-missed" }, { event_type: "order.placed" });
  await page.context().setOffline(false); // the "online" event reconnects at once
  await page.locator('#status[data-state="connected"]').waitFor({ timeout: 30_000 });
  await feedItem("order-missed").waitFor({ timeout: 10_000 });

  // Live events flow again, and nothing is shown twice.
  await hub.publish("dashboard:orders", { event_type: "order.placed", aggregate_id: "order-live" }, { event_type: "order.placed" });
  await feedItem("order-live").waitFor();
  for (const aggregate of ["order-before", "order-missed", "order-live"]) assert.equal(await feedItem(aggregate).count(), 1, aggregate);
  // While offline the browser reports its requests as failing for that reason; nothing else.
  assert.deepEqual(unexpectedProblems(page, new RegExp(`${REFUSED.source}|net::ERR_INTERNET_DISCONNECTED`)), []);
});
