// Starts and stops the real hub binary for the browser tests, and talks to its HTTP API.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import net from "node:net";
import { isAbsolute, join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { REPO_ROOT } from "./paths.mjs";

export const API_KEY = "testkey";

export function hubBinary() {
  const bin = process.env.HUB_BIN || "target/debug/realtime-hub";
  const path = isAbsolute(bin) ? bin : resolve(REPO_ROOT, bin);
  if (!existsSync(path)) {
    throw new Error(`hub binary not found at ${path}: build it with \`cargo build\` or set HUB_BIN`);
  }
  return path;
}

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((resolvePort, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolvePort(port));
    });
  });
}

/**
 * One hub process in development mode (no HUB_JWT_SECRET) with a known API key, serving the
 * repository's static/ directory. stop()/kill() and start() again reuse the same port, which is
 * how the tests cut a browser's connection.
 */
export class Hub {
  constructor({ port, env = {} }) {
    this.port = port;
    this.url = `http://127.0.0.1:${port}`;
    this.extraEnv = env;
    this.proc = null;
    this.log = [];
  }

  static async start(options = {}) {
    const hub = new Hub({ port: options.port ?? (await freePort()), env: options.env });
    await hub.start();
    return hub;
  }

  async start() {
    const env = { ...process.env };
    // Development mode is "no secret and no public key": make sure the caller's shell does not leak one in.
    delete env.HUB_JWT_SECRET;
    delete env.HUB_JWT_PUBLIC_KEY;
    delete env.HUB_REDIS_URL;
    Object.assign(env, {
      HUB_BIND: `127.0.0.1:${this.port}`,
      HUB_STATIC_DIR: join(REPO_ROOT, "static"),
      HUB_DASHBOARD_INTERVAL_S: "1",
      HUB_API_KEY: API_KEY,
      RUST_LOG: env.RUST_LOG ?? "warn",
      ...this.extraEnv,
    });
    const proc = spawn(hubBinary(), [], { env, stdio: ["ignore", "pipe", "pipe"] });
    this.proc = proc;
    // A test file that crashes must not leave a hub behind holding its port.
    const reap = () => proc.kill("SIGKILL");
    process.once("exit", reap);
    proc.once("exit", () => process.removeListener("exit", reap));
    this.exited = new Promise((res) => proc.once("exit", (code, signal) => res({ code, signal })));
    const keep = (chunk) => {
      this.log.push(chunk.toString());
      if (this.log.length > 400) this.log.splice(0, 200);
    };
    proc.stdout.on("data", keep);
    proc.stderr.on("data", keep);

    // Ready when /health answers; give up early if the process dies (e.g. port still taken).
    const deadline = Date.now() + 15_000;
    let died = null;
    this.exited.then((e) => (died = e));
    while (Date.now() < deadline) {
      if (died) throw new Error(`hub exited during start (${JSON.stringify(died)}):\n${this.output()}`);
      try {
        const res = await fetch(`${this.url}/health`);
        if (res.ok) return;
      } catch {
        /* not listening yet */
      }
      await sleep(50);
    }
    this.proc.kill("SIGKILL");
    throw new Error(`hub did not become healthy within 15 s:\n${this.output()}`);
  }

  /** Ends the process abruptly (SIGKILL): browsers see their connection drop without a close frame. */
  async kill() {
    if (!this.proc || this.proc.exitCode !== null || this.proc.signalCode) return;
    this.proc.kill("SIGKILL");
    await this.exited;
  }

  /** Asks the process to shut down (SIGTERM: close sessions with 1001, then exit). */
  async stop() {
    if (!this.proc || this.proc.exitCode !== null || this.proc.signalCode) return;
    this.proc.kill("SIGTERM");
    const done = await Promise.race([this.exited, sleep(15_000).then(() => null)]);
    if (!done) await this.kill();
    return done;
  }

  output() {
    return this.log.join("").slice(-6000);
  }

  /** Calls the server API; returns the parsed JSON body, throwing on a non-2xx answer. */
  async api(method, path, body) {
    const res = await fetch(`${this.url}${path}`, {
      method,
      headers: { "x-api-key": API_KEY, ...(body ? { "content-type": "application/json" } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${path}: HTTP ${res.status} ${text}`);
    return text ? JSON.parse(text) : null;
  }

  publish(channel, data, extra = {}) {
    return this.api("POST", "/api/publish", { channel, data, ...extra });
  }
}
