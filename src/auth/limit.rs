//! Rate limit on failed logins per client IP address: a token bucket of
//! `max_failures` tokens that refills at `max_failures` per `window`. Every
//! failed login takes a token; while the bucket is empty, new logins from
//! that address are refused before any exchange (SQLSTATE 53300) until a
//! token has refilled. Successful logins cost nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Above this many tracked addresses, buckets that have refilled are dropped.
const PRUNE_ABOVE: usize = 10_000;

/// `auth.max_failures` and `auth.failure_window`: the size and refill time of each address's bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitConfig {
    /// Failures allowed in a burst; 0 disables the limit.
    pub max_failures: u32,
    /// Time for an empty bucket to refill completely.
    pub window: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets of failed logins, one per client IP address that has failed.
#[derive(Default)]
pub struct FailureLimiter {
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl LimitConfig {
    fn rate_per_sec(&self) -> f64 {
        f64::from(self.max_failures) / self.window.as_secs_f64().max(1e-3)
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let cap = f64::from(self.max_failures);
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + dt * self.rate_per_sec()).min(cap);
        b.at = now;
    }
}

impl FailureLimiter {
    /// A limiter with no address tracked.
    pub fn new() -> FailureLimiter {
        FailureLimiter::default()
    }

    /// `Err(wait)` when `ip` has used up its failures: refuse the login;
    /// another attempt is possible after `wait`.
    pub fn check(&self, ip: IpAddr, now: Instant, cfg: LimitConfig) -> Result<(), Duration> {
        if cfg.max_failures == 0 {
            return Ok(());
        }
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let Some(b) = map.get_mut(&ip) else {
            return Ok(());
        };
        cfg.refill(b, now);
        if b.tokens >= 1.0 {
            Ok(())
        } else {
            let missing = 1.0 - b.tokens;
            Err(Duration::from_secs_f64(missing / cfg.rate_per_sec()).max(Duration::from_secs(1)))
        }
    }

    /// Take a token for a failed login from `ip`.
    pub fn record_failure(&self, ip: IpAddr, now: Instant, cfg: LimitConfig) {
        if cfg.max_failures == 0 {
            return;
        }
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > PRUNE_ABOVE {
            let cap = f64::from(cfg.max_failures);
            map.retain(|_, b| {
                cfg.refill(b, now);
                b.tokens < cap
            });
        }
        let b = map.entry(ip).or_insert(Bucket {
            tokens: f64::from(cfg.max_failures),
            at: now,
        });
        cfg.refill(b, now);
        b.tokens = (b.tokens - 1.0).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_empties_and_refills() {
        let l = FailureLimiter::new();
        let cfg = LimitConfig {
            max_failures: 3,
            window: Duration::from_secs(30),
        };
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        assert!(l.check(ip, t0, cfg).is_ok());
        for _ in 0..3 {
            assert!(l.check(ip, t0, cfg).is_ok());
            l.record_failure(ip, t0, cfg);
        }
        let wait = l.check(ip, t0, cfg).unwrap_err();
        assert!(
            wait >= Duration::from_secs(9) && wait <= Duration::from_secs(11),
            "{wait:?}"
        );
        // Other addresses are not affected.
        assert!(l.check(other, t0, cfg).is_ok());
        // One token back after window / max_failures.
        assert!(l.check(ip, t0 + Duration::from_secs(5), cfg).is_err());
        assert!(l.check(ip, t0 + Duration::from_secs(10), cfg).is_ok());
        l.record_failure(ip, t0 + Duration::from_secs(10), cfg);
        assert!(l.check(ip, t0 + Duration::from_secs(11), cfg).is_err());
        // Fully refilled after the window.
        assert!(l.check(ip, t0 + Duration::from_secs(60), cfg).is_ok());
    }

    #[test]
    fn zero_disables() {
        let l = FailureLimiter::new();
        let cfg = LimitConfig {
            max_failures: 0,
            window: Duration::from_secs(30),
        };
        let ip: IpAddr = "::1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..100 {
            l.record_failure(ip, t0, cfg);
        }
        assert!(l.check(ip, t0, cfg).is_ok());
    }
}
