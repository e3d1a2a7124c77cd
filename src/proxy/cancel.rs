//! CancelRequest routing. Clients see a BackendKeyData that pgveil made up;
//! this registry maps it to the real backend's key and address, so a cancel
//! reaches the right PostgreSQL backend and a client cannot cancel another
//! client's query by guessing the real pid.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// A BackendKeyData's key: what a CancelRequest names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendKey {
    /// The process id (PostgreSQL's, or the one pgveil made up).
    pub pid: u32,
    /// The secret.
    pub secret: u32,
}

/// The keys clients were given, each mapped to the real backend's.
#[derive(Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<(u32, u32), BackendKey>>,
    next_pid: AtomicU32,
}

impl CancelRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        CancelRegistry {
            map: Mutex::new(HashMap::new()),
            next_pid: AtomicU32::new(1),
        }
    }

    /// Register a real backend key; returns the key the client sees. The
    /// secret is random so cancel keys cannot be guessed.
    pub fn register(&self, real: BackendKey) -> BackendKey {
        let pid = self.next_pid.fetch_add(1, Ordering::Relaxed) & 0x7fff_ffff;
        let mut secret = [0u8; 4];
        aws_lc_rs::rand::fill(&mut secret).expect("OS random source");
        let visible = BackendKey {
            pid,
            secret: u32::from_ne_bytes(secret),
        };
        self.map
            .lock()
            .expect("cancel map poisoned")
            .insert((visible.pid, visible.secret), real);
        visible
    }

    /// Forget a key the client was given (its session ended).
    pub fn unregister(&self, visible: BackendKey) {
        self.map
            .lock()
            .expect("cancel map poisoned")
            .remove(&(visible.pid, visible.secret));
    }

    /// The real backend key behind a key a client was given.
    pub fn lookup(&self, pid: u32, secret: u32) -> Option<BackendKey> {
        self.map
            .lock()
            .expect("cancel map poisoned")
            .get(&(pid, secret))
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_visible_to_real() {
        let r = CancelRegistry::new();
        let real = BackendKey {
            pid: 4242,
            secret: 7,
        };
        let v = r.register(real);
        assert_ne!(v, real);
        assert_eq!(r.lookup(v.pid, v.secret), Some(real));
        assert_eq!(r.lookup(v.pid, v.secret ^ 1), None);
        r.unregister(v);
        assert_eq!(r.lookup(v.pid, v.secret), None);
    }
}
