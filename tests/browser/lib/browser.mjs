// Headless Chromium (Debian's, not a Playwright download) and helpers to drive the demo page.
import { writeFileSync } from "node:fs";
import { after, afterEach, before } from "node:test";
import { chromium } from "playwright-core";
import { Hub } from "./hub.mjs";
import { artifact } from "./paths.mjs";

export const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";

const ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-quic",
];

/**
 * Launches Chromium. Playwright's launch() starts it on a fresh temporary profile directory of
 * its own and removes it on close. Each user in a test gets a separate browser context inside it,
 * i.e. separate storage, like separate people.
 */
export async function launchBrowser() {
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ARGS });
  return {
    browser,
    close: () => browser.close().catch(() => {}),
  };
}

/**
 * The hooks every page test file shares: one real hub (`Hub.start(hubOptions)`) and one Chromium
 * for the whole file, screenshots of a failed test's pages (see `endOfTest`), and both closed at
 * the end. `ready(hub, chrome)` gets them once both have started (and may set up more).
 */
export function useHubAndBrowser(ready, hubOptions = undefined) {
  let hub;
  let chrome;
  before(async () => {
    hub = await Hub.start(hubOptions);
    chrome = await launchBrowser();
    await ready(hub, chrome);
  });
  afterEach((t) => endOfTest(t, { hub }));
  after(async () => {
    await chrome?.close();
    await hub?.stop();
  });
}

/**
 * Opens the demo page in a new context and records every console error and page error, so that
 * a test can assert there were none (or only the expected ones).
 */
export async function openPage(browser, baseUrl, { hash = "", viewport = { width: 1280, height: 800 }, colorScheme = "light" } = {}) {
  const context = await browser.newContext({ viewport, colorScheme });
  const page = await context.newPage();
  const problems = [];
  page.on("console", (msg) => {
    if (msg.type() === "error") problems.push(`console.error: ${msg.text()}`);
  });
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  page.problems = problems;
  openPages.add(page);
  await page.goto(`${baseUrl}/${hash}`);
  return page;
}

// Pages opened by the running test, for endOfTest().
const openPages = new Set();

/**
 * For afterEach: when the test failed (an assertion, an exception or its timeout), saves a
 * screenshot of every page it opened, the errors those pages logged and the hub's recent output
 * into the artifacts directory as `failed-<test>-<n>.png` / `.txt`; then closes the pages'
 * contexts, so that the next test starts with no other page connected.
 */
export async function endOfTest(t, { hub } = {}) {
  const pages = [...openPages];
  openPages.clear();
  // `passed` is false for a failed test; older runners without it are treated as passed.
  if (t.passed === false) {
    const slug = t.name.replace(/[^A-Za-z0-9]+/g, "-").replace(/^-|-$/g, "").slice(0, 60).toLowerCase();
    const notes = [`test: ${t.name}`, `error: ${t.error?.stack ?? t.error}`];
    for (const [i, page] of pages.entries()) {
      const path = artifact(`failed-${slug}-${i + 1}.png`);
      await page.screenshot({ path, fullPage: true, timeout: 5_000 }).catch((err) => notes.push(`screenshot ${i + 1}: ${err.message}`));
      notes.push(`page ${i + 1} (${page.url()}) problems:`, ...page.problems.map((p) => `  ${p}`));
    }
    if (hub) notes.push("hub output:", hub.output());
    writeFileSync(artifact(`failed-${slug}.txt`), `${notes.join("\n")}\n`);
  }
  await Promise.all(pages.map((page) => page.context().close().catch(() => {})));
}

/** Signs in with a name (development mode) and waits until the hub has welcomed the page. */
export async function signIn(page, name) {
  await page.getByLabel("Your name").fill(name);
  await page.getByRole("button", { name: "Join" }).click();
  await page.locator('#status[data-state="connected"]').waitFor();
}

/**
 * The console errors a page logs while the hub is down: connections refused (nothing listens on
 * the port) or reset (the process died mid-handshake), for the WebSocket and the token fetch.
 * Not a handshake answered with an HTTP error, nor anything else.
 */
export const REFUSED = /net::ERR_CONNECTION_(REFUSED|RESET)\b/;

/** Fails with the list of unexpected console and page errors, if any. */
export function unexpectedProblems(page, allowed = null) {
  return page.problems.filter((p) => !(allowed && allowed.test(p)));
}
