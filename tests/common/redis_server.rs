//! A real `redis-server` for each test, and direct connections to it (as a service, or a test
//! looking at what the hub keeps, would use).
//!
//! redis-server cannot bind port 0 and say which port it got, so each server takes a random
//! port below the kernel's ephemeral range (32768–60999 here: any port in it may be held by a
//! client socket's TIME_WAIT) and another one when that bind fails. A server is known to be
//! up when it answers with its own process id: not another server that held the port first.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use realtime_hub::engine::redis::Keys;

use super::WAIT;

/// The ports servers are picked from: below the ephemeral range.
const PORTS: std::ops::Range<u16> = 10_000..32_000;
/// How many ports a start tries before it gives up.
const ATTEMPTS: usize = 20;

/// A real `redis-server`, started for one test and killed with it.
pub struct RedisServer {
    pub port: u16,
    /// With a data directory, it keeps what it acknowledged across a SIGKILL (append-only
    /// file, fsynced before every answer); removed on drop.
    dir: Option<PathBuf>,
    child: Option<Child>,
}

/// A port from [`PORTS`], different on each call and in each test process.
fn candidate_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    PORTS.start + (h.finish() % u64::from(PORTS.end - PORTS.start)) as u16
}

impl RedisServer {
    /// An empty, throwaway server (nothing on disk).
    pub fn start() -> RedisServer {
        RedisServer::start_with(None)
    }

    /// A server that keeps its data across [`RedisServer::kill`] and [`RedisServer::launch`].
    pub fn start_durable() -> RedisServer {
        let dir = std::env::temp_dir().join(format!(
            "realtime-hub-durable-redis-{}-{}",
            std::process::id(),
            candidate_port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a data directory");
        RedisServer::start_with(Some(dir))
    }

    fn start_with(dir: Option<PathBuf>) -> RedisServer {
        let mut server = RedisServer {
            port: 0,
            dir,
            child: None,
        };
        for _ in 0..ATTEMPTS {
            server.port = candidate_port();
            if server.try_launch() {
                return server;
            }
        }
        panic!("redis-server did not start on any of {ATTEMPTS} ports");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts it (again) on its port; with a data directory, with its data.
    pub fn launch(&mut self) {
        // The port was ours a moment ago; a few tries ride out a slow exit of the old server.
        for _ in 0..3 {
            if self.try_launch() {
                return;
            }
        }
        panic!("redis-server did not start again on port {}", self.port);
    }

    /// Starts the server on `self.port`: `false` when it exited (the port is taken) or never
    /// answered.
    fn try_launch(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""]);
        match &self.dir {
            Some(dir) => {
                cmd.arg("--dir")
                    .arg(dir)
                    .args(["--appendonly", "yes", "--appendfsync", "always"]);
            }
            None => {
                cmd.args(["--appendonly", "no"]);
            }
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        let pid = child.id();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return false;
            }
            // Until it has loaded its data it answers LOADING, and until it listens, nothing.
            if server_pid(&self.url()) == Some(pid) {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILLs the server (without a data directory, everything in it is lost).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty, unless it has a data directory).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The `process_id` of the server answering at `url`, if one answers.
fn server_pid(url: &str) -> Option<u32> {
    let mut conn = redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
        .ok()?;
    // Whatever holds the port may accept and never answer.
    conn.set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    conn.set_write_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    let info: String = redis::cmd("INFO").arg("server").query(&mut conn).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))?
        .trim()
        .parse()
        .ok()
}

/// A direct (blocking) connection to the Redis at `url`.
pub fn redis_conn(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .expect("a connection to the test redis")
}

/// Appends an entry to `stream` and returns its id.
pub fn xadd(conn: &mut redis::Connection, stream: &str, fields: &[(&str, &str)]) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    cmd.query(conn).expect("XADD")
}

/// Makes the engine's publish of `event_id` in `channel` fail until [`repair`]: its dedup key
/// becomes a list, so the publish script's `GET` fails with WRONGTYPE (a passing failure).
pub fn break_publish(conn: &mut redis::Connection, channel: &str, event_id: &str) {
    let _: i64 = redis::cmd("RPUSH")
        .arg(Keys::new("hub").dedup(channel, event_id))
        .arg("not a dedup entry")
        .query(conn)
        .expect("RPUSH");
}

/// Undoes [`break_publish`].
pub fn repair(conn: &mut redis::Connection, channel: &str, event_id: &str) {
    let _: i64 = redis::cmd("DEL")
        .arg(Keys::new("hub").dedup(channel, event_id))
        .query(conn)
        .expect("DEL");
}

/// Every lifecycle event in `stream` so far, oldest first, each as
/// `"<type> <user or channel or channel/user>[ <reason>]"` (see [`lifecycle_line`]).
pub fn lifecycle_stream(conn: &mut redis::Connection, stream: &str) -> Vec<String> {
    lifecycle_stream_events(conn, stream)
        .iter()
        .map(lifecycle_line)
        .collect()
}

/// Every lifecycle event in `stream` so far, oldest first, as JSON.
pub fn lifecycle_stream_events(
    conn: &mut redis::Connection,
    stream: &str,
) -> Vec<serde_json::Value> {
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(conn)
        .expect("XRANGE of the lifecycle stream");
    entries
        .into_iter()
        .flat_map(|(_, fields)| fields.into_iter())
        .filter(|(k, _)| k == "event")
        .map(|(_, v)| serde_json::from_str(&v).expect("lifecycle events are JSON"))
        .collect()
}

/// A lifecycle event in short: `user.online alice`, `member.removed chat:x/alice closed`.
pub fn lifecycle_line(event: &serde_json::Value) -> String {
    let s = |k: &str| event[k].as_str().unwrap_or_default().to_owned();
    let who = match (s("channel").as_str(), s("user").as_str()) {
        ("", user) => user.to_owned(),
        (channel, "") => channel.to_owned(),
        (channel, user) => format!("{channel}/{user}"),
    };
    let mut line = format!("{} {who}", s("type"));
    if let Some(reason) = event["reason"].as_str() {
        line.push(' ');
        line.push_str(reason);
    }
    line
}
