//! Capped exponential backoff with jitter, reset only when the link is healthy again.

use std::time::Duration;

pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The wait before the next attempt: doubling from `base`, never over `cap`, with up to a
    /// quarter of jitter so that many nodes do not reconnect in step.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(16));
        self.attempt = self.attempt.saturating_add(1);
        let capped = exp.min(self.cap);
        let mut byte = [0u8; 1];
        let jitter = match getrandom::fill(&mut byte) {
            Ok(()) => capped.mul_f64(f64::from(byte[0]) / 255.0 / 4.0),
            Err(_) => Duration::ZERO,
        };
        (capped - jitter).max(self.base.min(capped))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        assert!(delays[9] >= Duration::from_millis(1500));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
