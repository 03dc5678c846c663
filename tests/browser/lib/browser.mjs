// Headless Chromium (Debian's, not a Playwright download) and helpers to drive the demo page.
import { chromium } from "playwright-core";

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
  await page.goto(`${baseUrl}/${hash}`);
  return page;
}

/** Signs in with a name (development mode) and waits until the hub has welcomed the page. */
export async function signIn(page, name) {
  await page.getByLabel("Your name").fill(name);
  await page.getByRole("button", { name: "Join" }).click();
  await page.locator('#status[data-state="connected"]').waitFor();
}

/** The console errors a page logs while the hub is down: refused connections and nothing else. */
export const REFUSED = /ERR_CONNECTION_REFUSED|WebSocket connection to .* failed/;

/** Fails with the list of unexpected console and page errors, if any. */
export function unexpectedProblems(page, allowed = null) {
  return page.problems.filter((p) => !(allowed && allowed.test(p)));
}
