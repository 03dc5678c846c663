// Loads static/hub-client.js into Node. The file is a browser ES module with a plain `.js` name and
// no package.json saying "module" next to it, so Node would read it as CommonJS; an `.mjs` copy
// in a temporary directory is imported instead (the file itself is the one the page serves).
import { copyFileSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { REPO_ROOT } from "./paths.mjs";

export async function loadHubClient() {
  const dir = mkdtempSync(join(tmpdir(), "hub-client-"));
  const copy = join(dir, "hub-client.mjs");
  copyFileSync(join(REPO_ROOT, "static", "hub-client.js"), copy);
  return import(pathToFileURL(copy).href);
}
