// Accessibility of the demo page, as far as a test can measure it: every control has a name,
// keyboard focus is always visible, and text has enough contrast, in the light and dark themes.
import { test } from "node:test";
import assert from "node:assert/strict";
import { artifact } from "./lib/paths.mjs";
import { contrastProblems, focusRingProblems, unnamedControls } from "./lib/a11y.mjs";
import { openPage, signIn, unexpectedProblems, useHubAndBrowser } from "./lib/browser.mjs";

let hub;
let chrome;

// One hub and one Chromium for the file; a failed test leaves screenshots of its pages (and
// what they logged) in the artifacts directory.
useHubAndBrowser(async (h, c) => {
  hub = h;
  chrome = c;
  // Something to look at in every kind of element: a service message, a person's message, an event.
  await hub.publish("chat:lobby", { text: "Welcome to the lobby" }, { event_type: "chat.message" });
  await hub.publish("dashboard:orders", { event_type: "order.placed", aggregate_id: "order-1", total: 12.5 }, { event_type: "order.placed" });
  await hub.publish("dashboard:sensors", { event_type: "sensor.reading", aggregate_id: "sensor-1", temperature_c: 20 }, { event_type: "sensor.reading" });
});

/** Runs the three checks on what the page shows now; returns what failed, by check. */
async function audit(page, where) {
  const failures = {};
  const unnamed = await unnamedControls(page);
  if (unnamed.length) failures[`${where}: controls without a name`] = unnamed;
  const contrast = await contrastProblems(page);
  if (contrast.length) failures[`${where}: contrast`] = contrast;
  const { problems, stops } = await focusRingProblems(page);
  if (problems.length) failures[`${where}: focus`] = problems;
  return { failures, stops };
}

for (const colorScheme of ["light", "dark"]) {
  test(`${colorScheme} theme: names for every control, visible focus and enough contrast`, { timeout: 60_000 }, async () => {
    const page = await openPage(chrome.browser, hub.url, { colorScheme });
    // Animations (a new feed entry fades in) would make colours depend on timing.
    await page.emulateMedia({ reducedMotion: "reduce" });
    const failures = {};

    // Sign-in form, with an error shown.
    await page.getByRole("button", { name: "Join" }).click();
    await page.locator("#name-error", { hasText: "Please enter a name" }).waitFor();
    let result = await audit(page, "sign-in");
    Object.assign(failures, result.failures);
    assert.ok(result.stops.some((s) => s.startsWith("input#name")), `Tab reaches the name field: ${result.stops.join(", ")}`);

    await signIn(page, `a11y-${colorScheme}`);
    await page.getByLabel("Message", { exact: true }).fill("A message of mine");
    await page.keyboard.press("Enter");
    await page.locator("#messages .msg.mine").waitFor();
    await page.getByLabel("Open a room").fill("bad name!");
    await page.getByRole("button", { name: "Open", exact: true }).click();
    await page.locator("#new-room-error", { hasText: "Use letters" }).waitFor();
    await page.getByLabel("Open a room").fill("");
    result = await audit(page, "chat");
    Object.assign(failures, result.failures);
    for (const expected of ["button.room", "textarea#message-input", "button#send", "input#new-room", "ol#messages"]) {
      assert.ok(result.stops.some((s) => s.startsWith(expected)), `Tab reaches ${expected}: ${result.stops.join(", ")}`);
    }
    await page.screenshot({ path: artifact(`chat-${colorScheme}.png`) });

    await page.getByRole("tab", { name: "Live dashboard" }).click();
    await page.locator("#nodes-body tr[data-node]").first().waitFor();
    await page.locator("#feed li", { hasText: "order-1" }).waitFor();
    result = await audit(page, "dashboard");
    Object.assign(failures, result.failures);
    await page.screenshot({ path: artifact(`dashboard-${colorScheme}.png`), fullPage: true });

    assert.deepEqual(failures, {});
    assert.deepEqual(unexpectedProblems(page), []);
  });
}
