//! Readings from /proc: a process's resident memory and CPU time, the hub's PID, our own file
//! limit, and a background sampler for peak RSS during a run.
//!
//! Read-only; it never signals or otherwise touches the processes it looks at.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Linux reports utime/stime in USER_HZ, which is 100 on every architecture's user ABI.
const USER_HZ: f64 = 100.0;

/// Resident memory of a process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    /// VmRSS: resident now.
    pub rss_kib: u64,
    /// VmHWM: peak resident since the process started.
    pub hwm_kib: u64,
}

pub fn mem(pid: u32) -> io::Result<Mem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    match (field("VmRSS:"), field("VmHWM:")) {
        (Some(rss_kib), Some(hwm_kib)) => Ok(Mem { rss_kib, hwm_kib }),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no VmRSS/VmHWM in /proc/{pid}/status"),
        )),
    }
}

/// User + system CPU seconds used so far by all threads of a process.
pub fn cpu_s(pid: u32) -> io::Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed stat"))?;
    // After the name: state is field 3, utime 14, stime 15 => indexes 11 and 12 here.
    let mut fields = rest.split_whitespace().skip(11);
    let mut next = || {
        fields
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed stat"))
    };
    let ticks = next()? + next()?;
    Ok(ticks as f64 / USER_HZ)
}

/// The hub's PID: the one given, else the process listening on `port` (found through the
/// socket's inode in /proc/net/tcp and the processes' fd links), else none.
pub fn hub_pid(given: Option<u32>, port: u16) -> Result<Option<u32>> {
    if given.is_some() {
        return Ok(given);
    }
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is f[1] ("0100007F:1F40"), st is f[3] ("0A" = LISTEN), inode f[9].
            let listening = f.get(3) == Some(&"0A");
            let on_port = f
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                == Some(port);
            if listening && on_port {
                if let Some(inode) = f.get(9) {
                    inodes.push(format!("socket:[{inode}]"));
                }
            }
        }
    }
    if inodes.is_empty() {
        return Ok(None);
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes come and go, and some fds are not ours to read: skip what fails.
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
        });
        if holds {
            found.push(pid);
        }
    }
    match found.as_slice() {
        [] => Ok(None),
        [pid] => Ok(Some(*pid)),
        many => bail!("several processes hold the listening socket ({many:?}): pass --hub-pid"),
    }
}

/// The values of the named variables in a process's environment (others, secrets among them,
/// are never read out of the buffer).
pub fn env_of(pid: u32, names: &[&str]) -> BTreeMap<String, String> {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return BTreeMap::new();
    };
    raw.split(|b| *b == 0)
        .filter_map(|entry| {
            let entry = std::str::from_utf8(entry).ok()?;
            let (name, value) = entry.split_once('=')?;
            names
                .contains(&name)
                .then(|| (name.to_string(), value.to_string()))
        })
        .collect()
}

/// Our soft limit on open files, from `/proc/self/limits`.
pub fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Memory and CPU of the hub and of this process at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    pub hub: Option<(Mem, f64)>,
    pub own: Option<(Mem, f64)>,
}

impl Snapshot {
    pub fn take(hub: Option<u32>) -> Self {
        let read = |pid: u32| Some((mem(pid).ok()?, cpu_s(pid).ok()?));
        Self {
            hub: hub.and_then(read),
            own: read(std::process::id()),
        }
    }

    pub fn hub_rss_kib(&self) -> Option<u64> {
        self.hub.map(|(m, _)| m.rss_kib)
    }

    /// CPU use between `earlier` and this snapshot over `wall` seconds, in cores (1.0 = one
    /// core busy all the time), for the hub and for ourselves.
    pub fn cpu_since(&self, earlier: &Snapshot, wall_s: f64) -> Value {
        let util = |a: Option<(Mem, f64)>, b: Option<(Mem, f64)>| match (a, b) {
            (Some((_, now)), Some((_, then))) if wall_s > 0.0 => {
                Value::from(crate::report::round3((now - then) / wall_s))
            }
            _ => Value::Null,
        };
        json!({
            "hub_cores": util(self.hub, earlier.hub),
            "loadgen_cores": util(self.own, earlier.own),
            "hub_cpu_s": cpu_delta(self.hub, earlier.hub),
            "loadgen_cpu_s": cpu_delta(self.own, earlier.own),
        })
    }
}

fn cpu_delta(now: Option<(Mem, f64)>, then: Option<(Mem, f64)>) -> Value {
    match (now, then) {
        (Some((_, a)), Some((_, b))) => Value::from(crate::report::round3(a - b)),
        _ => Value::Null,
    }
}

/// Samples the hub's RSS periodically and keeps the latest and the maximum.
pub struct RssSampler {
    /// Latest sample in KiB (0 before the first); read by the progress ticker.
    pub latest_kib: Arc<AtomicU64>,
    max_kib: Arc<AtomicU64>,
    samples: Arc<AtomicU64>,
    /// Dropping or firing it ends the sampling task.
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl RssSampler {
    /// Starts sampling `pid` every `every`; with no PID it samples nothing.
    pub fn start(pid: Option<u32>, every: Duration) -> Self {
        let latest_kib = Arc::new(AtomicU64::new(0));
        let max_kib = Arc::new(AtomicU64::new(0));
        let samples = Arc::new(AtomicU64::new(0));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = pid.map(|pid| {
            let (latest, max, count) = (latest_kib.clone(), max_kib.clone(), samples.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        _ = tick.tick() => {}
                    }
                    // The hub may have died; stop sampling rather than spin on errors.
                    let Ok(m) = mem(pid) else { break };
                    latest.store(m.rss_kib, Ordering::Relaxed);
                    max.fetch_max(m.rss_kib, Ordering::Relaxed);
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        });
        Self {
            latest_kib,
            max_kib,
            samples,
            stop: Some(stop),
            task,
        }
    }

    /// Stops sampling; returns the maximum sampled RSS in KiB and the number of samples.
    pub async fn finish(mut self) -> (u64, u64) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        (
            self.max_kib.load(Ordering::Relaxed),
            self.samples.load(Ordering::Relaxed),
        )
    }
}

/// KiB to MiB, rounded for reports.
pub fn mib(kib: u64) -> f64 {
    crate::report::round3(kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process() {
        let pid = std::process::id();
        let m = mem(pid).expect("status");
        assert!(m.rss_kib > 0 && m.hwm_kib >= m.rss_kib);
        assert!(cpu_s(pid).expect("stat") >= 0.0);
        assert!(open_files_limit().is_some());
    }
}
