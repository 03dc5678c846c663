//! The real `realtime-hub` binary as a subprocess: for what only a process shows (its exit
//! status, its signals, its logs, a SIGKILL with no goodbye). Every hub here binds port 0 and
//! the test reads the address from its `listening` log line, so no port is picked in advance
//! (one picked in the ephemeral range can be blocked by a client socket's TIME_WAIT).

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{http, poll_until, Node, API_KEY, SECRET, WAIT};

/// What a reader thread collected from one pipe.
#[derive(Default)]
struct Captured {
    lines: Vec<String>,
    /// The pipe ended (the process exited or closed it).
    ended: bool,
}

#[derive(Default)]
struct Shared {
    captured: Mutex<Captured>,
    /// Notified on every new line and at the end.
    changed: Condvar,
}

/// The lines a child process wrote to one of its pipes, collected by a reader thread.
#[derive(Clone, Default)]
pub struct Lines {
    /// Appended to by the reader thread; read by the test.
    shared: Arc<Shared>,
}

impl Lines {
    pub fn read_from(pipe: impl Read + Send + 'static) -> Lines {
        let lines = Lines::default();
        let sink = Arc::clone(&lines.shared);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                sink.captured.lock().expect("lines lock").lines.push(line);
                sink.changed.notify_all();
            }
            sink.captured.lock().expect("lines lock").ended = true;
            sink.changed.notify_all();
        });
        lines
    }

    /// Waits (at most `within`) for a line matching `pred`; `None` if the pipe ends first or
    /// the time is up.
    pub fn wait_for(&self, within: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + within;
        let mut captured = self.shared.captured.lock().expect("lines lock");
        loop {
            if let Some(line) = captured.lines.iter().find(|l| pred(l)) {
                return Some(line.clone());
            }
            let now = Instant::now();
            if captured.ended || now >= deadline {
                return None;
            }
            captured = self
                .shared
                .changed
                .wait_timeout(captured, deadline - now)
                .expect("lines lock")
                .0;
        }
    }

    /// Waits for the pipe to end (the process exited) and returns everything written.
    pub fn all_after_exit(&self) -> String {
        self.lines_after_exit().join("\n")
    }

    /// Waits for the pipe to end (the process exited) and returns every line written.
    pub fn lines_after_exit(&self) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut captured = self.shared.captured.lock().expect("lines lock");
        while !captured.ended && Instant::now() < deadline {
            captured = self
                .shared
                .changed
                .wait_timeout(captured, deadline.saturating_duration_since(Instant::now()))
                .expect("lines lock")
                .0;
        }
        captured.lines.clone()
    }

    pub fn text(&self) -> String {
        self.shared
            .captured
            .lock()
            .expect("lines lock")
            .lines
            .join("\n")
    }
}

/// The hub binary with a clean `HUB_*` environment (whatever the test's own), `HUB_BIND` on
/// port 0 and one worker unless `envs` say otherwise, run from the package root, its output
/// piped.
pub fn hub_command(envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_realtime-hub"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HUB_") {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_LOG", "info")
        .env("HUB_BIND", "127.0.0.1:0")
        .env("HUB_WORKERS", "1")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// The address in the hub's own start line, logged once its socket listens: in text
/// (`... address=<addr> engine=<engine> listening`) or JSON (`"msg":"listening"`). Not
/// actix-server's `listening on`, whose wording is actix's to change.
pub fn listening_address(line: &str) -> Option<SocketAddr> {
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(line) {
        if json["msg"] != "listening" {
            return None;
        }
        return json["address"].as_str()?.parse().ok();
    }
    if !line.ends_with(" listening") {
        return None;
    }
    let (_, rest) = line.split_once(" address=")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// A hub running as a subprocess; dropping it SIGKILLs the process if it still runs.
pub struct HubProcess {
    child: Child,
    /// Where it listens, from its log.
    pub addr: SocketAddr,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl Node for HubProcess {
    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A child started from [`hub_command`], its pipes being read.
pub struct Spawned {
    pub child: Child,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl Spawned {
    pub fn new(mut cmd: Command) -> Spawned {
        let mut child = cmd.spawn().expect("start realtime-hub");
        let stdout = Lines::read_from(child.stdout.take().expect("stdout pipe"));
        let stderr = Lines::read_from(child.stderr.take().expect("stderr pipe"));
        Spawned {
            child,
            stdout,
            stderr,
        }
    }
}

impl HubProcess {
    /// Starts the binary with `envs` and waits until it logs where it listens.
    pub fn start(envs: &[(&str, &str)]) -> HubProcess {
        let Spawned {
            mut child,
            stdout,
            stderr,
        } = Spawned::new(hub_command(envs));
        let line = stderr.wait_for(WAIT, |l| listening_address(l).is_some());
        let Some(addr) = line.as_deref().and_then(listening_address) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the hub did not start; stderr:\n{}\nstdout:\n{}",
                stderr.text(),
                stdout.text()
            );
        };
        HubProcess {
            child,
            addr,
            stdout,
            stderr,
        }
    }

    /// Starts the binary with `envs` and waits until its `/ready` answers 200 (a Redis node
    /// listens before its Redis link is up).
    pub async fn start_ready(envs: &[(&str, &str)]) -> HubProcess {
        let hub = HubProcess::start(envs);
        let ready = hub.http("/ready");
        let became_ready = poll_until(WAIT, || async {
            let answer = http().get(&ready).send().await;
            answer.is_ok_and(|res| res.status() == 200)
        })
        .await;
        assert!(
            became_ready,
            "the hub never became ready; stderr:\n{}",
            hub.stderr.text()
        );
        hub
    }

    /// Node `node` on the Redis at `redis_url` (1 s heartbeat, the test secret and API key,
    /// a 2 s shutdown timeout, plus `extra` variables), once ready.
    pub async fn node(redis_url: &str, node: &str, extra: &[(&str, &str)]) -> HubProcess {
        let mut envs = vec![
            ("HUB_REDIS_URL", redis_url),
            ("HUB_NODE_ID", node),
            ("HUB_NODE_HEARTBEAT_S", "1"),
            ("HUB_JWT_SECRET", SECRET),
            ("HUB_API_KEY", API_KEY),
            ("HUB_SHUTDOWN_TIMEOUT_S", "2"),
        ];
        envs.extend_from_slice(extra);
        HubProcess::start_ready(&envs).await
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`TERM`, `INT`, `KILL`) with the `kill` command.
    pub fn signal(&self, name: &str) {
        signal_pid(name, &self.child.id().to_string());
    }

    /// SIGKILL: no shutdown sequence, no goodbye to Redis.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit, at most `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the hub did not exit within {within:?}; stderr:\n{}",
                self.stderr.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it with SIGTERM (its drain logs too) and returns every line of its stderr.
    pub fn stop_and_collect(mut self) -> Vec<String> {
        self.signal("TERM");
        let _ = self.child.wait();
        self.stderr.lines_after_exit()
    }

    /// Asserts that the process is still running and never panicked.
    pub fn assert_healthy(&mut self) {
        assert!(
            matches!(self.child.try_wait(), Ok(None)),
            "the node exited; stderr:\n{}",
            self.stderr.text()
        );
        let stderr = self.stderr.text();
        assert!(!stderr.contains("panicked"), "a panic:\n{stderr}");
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// Starts the binary with `envs`, expects it to exit on its own with a failure, and returns
/// its stderr.
pub fn fails_to_start(envs: &[(&str, &str)]) -> String {
    let mut spawned = Spawned::new(hub_command(envs));
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = spawned.child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = spawned.child.kill();
            let _ = spawned.child.wait();
            panic!(
                "the hub did not exit within {WAIT:?}; stderr:\n{}",
                spawned.stderr.text()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = spawned.stderr.all_after_exit();
    assert!(!status.success(), "exit status {status}; stderr:\n{stderr}");
    assert!(
        !stderr.contains("panicked"),
        "a panic instead of a message:\n{stderr}"
    );
    stderr
}

/// Sends `signal` (`TERM`, `STOP`, `CONT`, ...) to process `pid` with the `kill` command.
pub fn signal_pid(signal: &str, pid: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}").as_str(), pid])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}
