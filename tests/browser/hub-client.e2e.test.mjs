// hub-client.js in Chromium against the real hub (development mode): what the fake-hub tests in
// hub-client.test.mjs promise holds on the wire too.
import { test } from "node:test";
import assert from "node:assert/strict";
import { openPage, unexpectedProblems, useHubAndBrowser } from "./lib/browser.mjs";

let hub;
let chrome;

// One hub and one Chromium for the file; a failed test leaves screenshots of its pages (and
// what they logged) in the artifacts directory.
useHubAndBrowser(async (h, c) => {
  hub = h;
  chrome = c;
});

test("two components subscribed to one room both get its messages, until each unsubscribes", { timeout: 60_000 }, async () => {
  const page = await openPage(chrome.browser, hub.url);
  await page.exposeFunction("publish", (text) => hub.publish("chat:shared", { text }));
  const seen = await page.evaluate(async () => {
    const { HubClient } = await import("/hub-client.js");
    const getToken = async () => {
      const res = await fetch("/dev/token", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ user: "two-panes" }),
      });
      return (await res.json()).token;
    };
    const client = new HubClient({ getToken });
    const seen = { list: [], badge: [] };
    // Resolves once `who` saw `text`; gives up after 10 s with what it saw instead.
    const arrived = (who, text) =>
      new Promise((resolve, reject) => {
        const started = Date.now();
        const poll = setInterval(() => {
          if (seen[who].includes(text)) {
            clearInterval(poll);
            resolve();
          } else if (Date.now() - started > 10_000) {
            clearInterval(poll);
            reject(new Error(`${who} never got "${text}": saw ${JSON.stringify(seen)}`));
          }
        }, 10);
      });
    const list = { onMessage: (m) => seen.list.push(m.data.text) };
    const badge = { onMessage: (m) => seen.badge.push(m.data.text) };
    client.connect();
    await client.subscribe("chat:shared", list);
    await client.subscribe("chat:shared", badge);
    await window.publish("one");
    await Promise.all([arrived("list", "one"), arrived("badge", "one")]);
    await client.unsubscribe("chat:shared", list);
    await window.publish("two");
    await arrived("badge", "two");
    await client.unsubscribe("chat:shared", badge);
    const channels = client.channels;
    client.close();
    return { ...seen, channels };
  });
  assert.deepEqual(seen.list, ["one"]);
  assert.deepEqual(seen.badge, ["one", "two"]);
  assert.deepEqual(seen.channels, []);
  assert.deepEqual(unexpectedProblems(page), []);
});
