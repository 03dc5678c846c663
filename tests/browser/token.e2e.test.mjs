// A hub outside development mode has no /dev/token: the page asks for a token to paste.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { hubBinary } from "./lib/hub.mjs";
import { openPage, unexpectedProblems, useHubAndBrowser } from "./lib/browser.mjs";

const SECRET = "browser-tests-secret-0123456789abcdef";
// The page's probe of /dev/token gets a 404, which Chromium logs as a failed resource load.
const PROBE_404 = /Failed to load resource: the server responded with a status of 404/;

let hub;
let chrome;

// One hub and one Chromium for the file; a failed test leaves screenshots of its pages (and
// what they logged) in the artifacts directory.
useHubAndBrowser(async (h, c) => {
  hub = h;
  chrome = c;
}, { env: { HUB_JWT_SECRET: SECRET } });

function token(user, ...args) {
  return execFileSync(hubBinary(), ["token", "--user", user, "--secret", SECRET, ...args], { encoding: "utf8" }).trim();
}

test("without development tokens the page takes a pasted token, and rejects a bad one plainly", { timeout: 60_000 }, async () => {
  const page = await openPage(chrome.browser, hub.url);
  await page.getByLabel("Your name").fill("zed");
  await page.getByRole("button", { name: "Join" }).click();
  const field = page.getByLabel("Token (JWT)");
  await field.waitFor();

  await field.fill(token("zed", "--channels", "chat:*,dashboard:*", "--publish", "chat:*"));
  await page.getByRole("button", { name: "Connect" }).click();
  await page.locator('#status[data-state="connected"]').waitFor();
  assert.equal(await page.locator("#me").textContent(), "zed", "the name comes from the token");
  await page.getByLabel("Message", { exact: true }).fill("signed in with a pasted token");
  await page.keyboard.press("Enter");
  await page.locator("#messages .msg", { hasText: "signed in with a pasted token" }).waitFor();

  // A token signed with another secret: the client asks for a token once more (it gets the same
  // one), is refused again, and stops; the page returns to the token form and says why.
  await page.getByRole("button", { name: "Sign out" }).click();
  const forged = execFileSync(hubBinary(), ["token", "--user", "zed", "--secret", "not-the-hub-secret-0123456789"], { encoding: "utf8" }).trim();
  await field.fill(forged);
  await page.getByRole("button", { name: "Connect" }).click();
  await page.locator("#token-error", { hasText: "The hub rejected your token." }).waitFor();
  await field.waitFor();
  assert.equal(await page.locator("#status").getAttribute("data-state"), "idle");

  // A token without permission for the room: the hub's `forbidden` is shown, the page stays up.
  await field.fill(token("zed", "--channels", "dashboard:*", "--publish", ""));
  await page.getByRole("button", { name: "Connect" }).click();
  await page.locator('#status[data-state="connected"]').waitFor();
  await page.locator("#banner", { hasText: "forbidden" }).waitFor();
  assert.match(await page.locator("#banner").textContent(), /Could not enter #lobby/);

  assert.deepEqual(unexpectedProblems(page, PROBE_404), []);
  assert.equal(page.problems.filter((p) => PROBE_404.test(p)).length, 1, "one probe of /dev/token");
});

test("hub-client refreshes a short-lived token on the open connection, and a lapsed one ends the session", { timeout: 60_000 }, async () => {
  const page = await openPage(chrome.browser, hub.url);
  let minted = 0;
  // Tokens come from the test (the hub's own `token` command), as an app's backend would mint them.
  await page.exposeFunction("mintToken", (ttl) => {
    minted++;
    return token("tess", "--channels", "chat:*", "--publish", "chat:*", "--ttl", String(ttl));
  });
  const result = await page.evaluate(async () => {
    const { HubClient } = await import("/hub-client.js");
    const log = [];
    const hub = new HubClient({ getToken: ({ reason }) => (log.push(`token:${reason}`), window.mintToken(8)) });
    hub.on("state", (s) => log.push(`${s.state}${s.reason ? `:${s.reason}` : ""}`));
    hub.on("refreshed", () => log.push("refreshed"));
    hub.connect();
    // An 8 s token is refreshed at half its remaining life; stay past its original expiry.
    await new Promise((r) => setTimeout(r, 11_000));
    const rtt = await hub.ping();
    hub.close();
    return { log, rtt };
  });
  assert.ok(result.log.includes("refreshed"), result.log.join(" "));
  assert.equal(result.log.filter((l) => l === "connected").length, 1, `one connection throughout: ${result.log.join(" ")}`);
  assert.ok(result.rtt >= 0);
  assert.ok(minted >= 2);

  // A provider with nothing new: the hub closes the connection at expiry ("token expired"), the
  // client asks once more, gets the same lapsed token, and stops instead of looping.
  const stopped = await page.evaluate(async () => {
    const { HubClient } = await import("/hub-client.js");
    let only = null;
    const hub = new HubClient({ getToken: async () => (only ??= await window.mintToken(2)) });
    const states = [];
    const done = new Promise((resolve) => hub.on("state", (s) => {
      states.push(`${s.state}${s.reason ? `:${s.reason}` : ""}`);
      if (s.state === "stopped") resolve();
    }));
    hub.connect();
    await Promise.race([done, new Promise((r) => setTimeout(r, 20_000))]);
    return states;
  });
  assert.equal(stopped.at(-1), "stopped:token expired", stopped.join(" "));
  assert.ok(stopped.includes("connected"), stopped.join(" "));
  assert.deepEqual(unexpectedProblems(page), []);
});
