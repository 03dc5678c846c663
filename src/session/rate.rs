//! The per-connection request rate: a token bucket refilled at `HUB_CLIENT_RATE` per second,
//! holding at most twice that (the burst).

use std::time::Instant;

#[derive(Debug)]
pub struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate_per_s: u32, now: Instant) -> Self {
        let rate = f64::from(rate_per_s);
        TokenBucket {
            tokens: rate * 2.0,
            rate,
            burst: rate * 2.0,
            last: now,
        }
    }

    /// Takes one token; `false` when the request must be dropped.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_a_burst_of_twice_the_rate_then_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, t0);
        assert_eq!((0..25).filter(|_| b.take(t0)).count(), 20);
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(150)));
    }
}
