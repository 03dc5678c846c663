//! The standard process metrics (`process_open_fds`, `process_max_fds`,
//! `process_resident_memory_bytes`, `process_cpu_seconds_total`, `process_start_time_seconds`),
//! read from `/proc/self` at each scrape, as Prometheus's own clients name them. Where a figure
//! cannot be read (not Linux, `/proc` not mounted) its series is left out rather than made up.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second in `/proc/*/stat` (Linux's `USER_HZ`): 100 on every architecture
/// the hub builds for, whatever the kernel's own tick rate.
const USER_HZ: f64 = 100.0;

#[derive(Debug, Default)]
pub struct ProcessMetrics;

/// One reading of the process's figures.
#[derive(Debug, Default, PartialEq)]
struct Reading {
    open_fds: Option<i64>,
    max_fds: Option<i64>,
    resident_bytes: Option<i64>,
    cpu_seconds: Option<f64>,
    start_time_seconds: Option<f64>,
}

fn read() -> Reading {
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .as_deref()
        .and_then(|s| s.rsplit_once(')'))
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // `fields[0]` is field 3 of proc(5): utime is field 14, stime 15, starttime 22.
    let ticks = |field: usize| fields.get(field - 3).and_then(|v| v.parse::<u64>().ok());
    let cpu_seconds = match (ticks(14), ticks(15)) {
        (Some(user), Some(system)) => Some((user + system) as f64 / USER_HZ),
        _ => None,
    };
    let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    });
    let start_time_seconds = match (boot_time, ticks(22)) {
        (Some(boot), Some(start)) => Some(boot as f64 + start as f64 / USER_HZ),
        _ => None,
    };
    let resident_bytes = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        })
        .map(|kb| kb.saturating_mul(1024));
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|dir| i64::try_from(dir.count()).unwrap_or(i64::MAX));
    let max_fds = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .ok()
        .map(|(soft, _)| i64::try_from(soft).unwrap_or(i64::MAX));
    Reading {
        open_fds,
        max_fds,
        resident_bytes,
        cpu_seconds,
        start_time_seconds,
    }
}

fn gauge<N>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: Option<N>,
) -> Result<(), std::fmt::Error>
where
    ConstGauge<N>: EncodeMetric,
{
    let Some(value) = value else {
        return Ok(());
    };
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for ProcessMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let r = read();
        gauge(
            &mut encoder,
            "process_open_fds",
            "Open file descriptors",
            r.open_fds,
        )?;
        gauge(
            &mut encoder,
            "process_max_fds",
            "The open file descriptor limit (soft)",
            r.max_fds,
        )?;
        gauge(
            &mut encoder,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            r.resident_bytes,
        )?;
        if let Some(cpu) = r.cpu_seconds {
            // Counters get their `_total` suffix from the encoder.
            let metric = ConstCounter::new(cpu);
            metric.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent, in seconds",
                None,
                metric.metric_type(),
            )?)?;
        }
        gauge(
            &mut encoder,
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds",
            r.start_time_seconds,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On Linux every figure is read, and each is plausible for a running test process.
    #[test]
    fn every_figure_is_read_on_linux() {
        let r = read();
        let now = crate::clock::unix_seconds() as f64;
        assert!(r.open_fds.is_some_and(|n| n >= 3), "{r:?}");
        assert!(
            r.max_fds.is_some_and(|n| n >= r.open_fds.unwrap_or(0)),
            "{r:?}"
        );
        assert!(r.resident_bytes.is_some_and(|b| b > 1 << 20), "{r:?}");
        assert!(r.cpu_seconds.is_some_and(|s| s >= 0.0), "{r:?}");
        assert!(
            r.start_time_seconds
                .is_some_and(|t| t <= now + 1.0 && t > now - 24.0 * 3600.0),
            "{r:?}"
        );
    }
}
