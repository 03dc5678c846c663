import { mkdirSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository's root: tests/browser/lib/../../.. */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");

/**
 * Where screenshots are kept as test artifacts: `$HUB_TEST_ARTIFACTS`, or target/browser-artifacts
 * (inside the ignored build directory, so they never end up committed).
 */
export function artifact(name) {
  const dir = process.env.HUB_TEST_ARTIFACTS || resolve(REPO_ROOT, "target", "browser-artifacts");
  mkdirSync(dir, { recursive: true });
  return resolve(dir, name);
}
