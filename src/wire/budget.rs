//! The process-wide memory budget for protocol messages pgveil holds whole
//! (`limits.max_buffered_bytes`).
//!
//! A frame larger than [`Budget::FREE_BYTES`] is charged before its body is
//! read: the charge is the frame times the holding factor of the side that
//! reads it (the bytes held plus what is built from them, see
//! `FrameReader::set_budget`). A charge that does not fit waits for others
//! to be released, up to `limits.buffer_wait`; one that can never fit, or
//! that waited too long, is refused, and the reader discards the frame's
//! bytes as they arrive instead of holding them. Small frames are never
//! charged: a reader holds at most one of them plus one read chunk.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Accounting unit: 1 KiB, so that a charge of several GiB fits the
/// semaphore's `u32` request.
const UNIT: usize = 1024;

/// The shared budget (a clone shares it); unlimited when not configured.
#[derive(Clone)]
pub struct Budget {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    sem: Arc<Semaphore>,
    units: usize,
    wait: Duration,
}

/// Why a charge was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Larger than the whole budget: it could never be held.
    TooLarge,
    /// The budget stayed full for `limits.buffer_wait`.
    Busy,
}

/// Bytes held against the budget; released on drop.
#[derive(Debug)]
pub struct Charge {
    bytes: usize,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self._permit.is_some() {
            metrics::gauge!("pgveil_buffered_bytes").decrement(self.bytes as f64);
        }
    }
}

/// PostgreSQL's wording for 53200, with what pgveil's limit was (no value
/// of the message, only its size).
pub fn refusal_message(len: usize, why: Refusal) -> String {
    match why {
        Refusal::TooLarge => format!(
            "out of memory: pgveil: a message of {len} bytes is more than limits.max_buffered_bytes can ever hold with its rewrite; send less at once"
        ),
        Refusal::Busy => format!(
            "out of memory: pgveil: a message of {len} bytes did not fit in limits.max_buffered_bytes within limits.buffer_wait (other sessions hold it); retry later"
        ),
    }
}

impl Budget {
    /// Frames up to this size are never charged.
    pub const FREE_BYTES: usize = 256 * 1024;

    /// A budget of `max_bytes`; a charge waits up to `wait` for room.
    pub fn new(max_bytes: usize, wait: Duration) -> Budget {
        let units = (max_bytes / UNIT).clamp(1, Semaphore::MAX_PERMITS);
        Budget {
            inner: Some(Arc::new(Inner {
                sem: Arc::new(Semaphore::new(units)),
                units,
                wait,
            })),
        }
    }

    /// No budget: every charge succeeds at once (tests, and readers whose
    /// frames are bounded otherwise).
    pub fn unlimited() -> Budget {
        Budget { inner: None }
    }

    /// Charge `bytes`, waiting up to `limits.buffer_wait` for room.
    pub async fn charge(&self, bytes: usize) -> Result<Charge, Refusal> {
        let Some(inner) = &self.inner else {
            return Ok(Charge {
                bytes,
                _permit: None,
            });
        };
        let units = bytes.div_ceil(UNIT).max(1);
        if units > inner.units || units > u32::MAX as usize {
            metrics::counter!("pgveil_buffer_refusals_total", "reason" => "too_large").increment(1);
            return Err(Refusal::TooLarge);
        }
        let permit = match inner.sem.clone().try_acquire_many_owned(units as u32) {
            Ok(p) => p,
            Err(_) => {
                metrics::counter!("pgveil_buffer_waits_total").increment(1);
                let acquire = inner.sem.clone().acquire_many_owned(units as u32);
                match tokio::time::timeout(inner.wait, acquire).await {
                    Ok(Ok(p)) => p,
                    _ => {
                        metrics::counter!("pgveil_buffer_refusals_total", "reason" => "busy")
                            .increment(1);
                        return Err(Refusal::Busy);
                    }
                }
            }
        };
        metrics::gauge!("pgveil_buffered_bytes").increment(bytes as f64);
        Ok(Charge {
            bytes,
            _permit: Some(permit),
        })
    }

    /// Bytes free now (for tests and logs).
    pub fn available(&self) -> Option<usize> {
        self.inner
            .as_ref()
            .map(|i| i.sem.available_permits() * UNIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn charges_wait_for_room_and_refuse_what_never_fits() {
        let b = Budget::new(10 * UNIT, Duration::from_millis(50));
        assert_eq!(b.charge(11 * UNIT).await.unwrap_err(), Refusal::TooLarge);
        let a = b.charge(6 * UNIT).await.unwrap();
        assert_eq!(b.available(), Some(4 * UNIT));
        // Does not fit while `a` is held: refused after the wait.
        assert_eq!(b.charge(6 * UNIT).await.unwrap_err(), Refusal::Busy);
        // Fits once `a` is released while waiting.
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.charge(6 * UNIT).await.map(|_| ()) });
        tokio::task::yield_now().await;
        drop(a);
        assert!(waiter.await.unwrap().is_ok());
        assert_eq!(b.available(), Some(10 * UNIT));
        assert!(Budget::unlimited().charge(usize::MAX / 2).await.is_ok());
    }
}
