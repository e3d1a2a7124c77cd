//! State shared by the sessions of one process: [`Live`] (the configuration
//! in force and what is built from it, replaced whole by a reload),
//! [`Shared`] (live config, generation, cancel registry, connection slots,
//! memory budget) and the pre-authentication [`Admission`]. Kept apart from
//! the listener (`server`) so that `session`, `reload` and `swap` use it
//! without depending on the listener that spawns them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::cancel::CancelRegistry;
use crate::config::{ClientTlsMode, Config};
use crate::net::tls::{self, ServerTls};
use crate::net::upstream::UpstreamConnector;
use crate::session::Engine;

/// What a reload replaces: the configuration and everything built from it.
/// A session reads one snapshot when it starts ([`Shared::live`]) and keeps
/// it for its login; its policy engine moves to a newer snapshot's at a
/// transaction boundary (`super::swap`).
pub struct Live {
    pub config: Config,
    pub server_tls: Option<ServerTls>,
    pub upstream: UpstreamConnector,
    /// The session layer, when a policy is configured.
    pub engine: Option<Arc<Engine>>,
}

/// A problem building [`Live`] from a config: the config key it concerns
/// (for the file:line of the message) and what is wrong.
#[derive(Debug, Clone)]
pub struct LiveError {
    pub key: &'static [&'static str],
    pub message: String,
}

impl Live {
    /// Build the TLS identities and the upstream connector of `config`.
    pub fn new(config: Config, engine: Option<Arc<Engine>>) -> Result<Live, LiveError> {
        let at = |key: &'static [&'static str]| move |message: String| LiveError { key, message };
        let server_tls = match (
            &config.client_tls.mode,
            &config.client_tls.cert_file,
            &config.client_tls.key_file,
        ) {
            (ClientTlsMode::Disable, _, _) => None,
            (_, Some(cert), Some(key)) => Some(
                tls::server_config(
                    &config.resolve(cert.as_str()),
                    &config.resolve(key.as_str()),
                )
                .map_err(at(&["client_tls", "cert_file"]))?,
            ),
            (ClientTlsMode::Prefer, None, None) => None,
            (ClientTlsMode::Prefer, _, _) => {
                return Err(at(&["client_tls"])(
                    "client_tls: give both cert_file and key_file, or neither".into(),
                ));
            }
            (ClientTlsMode::Require, _, _) => {
                return Err(at(&["client_tls", "mode"])(
                    "client_tls.mode is require but cert_file/key_file are missing".into(),
                ));
            }
        };
        let mut upstream = UpstreamConnector::from_config(&config.upstream, |p| config.resolve(p))
            .map_err(at(&["upstream"]))?;
        upstream.keepalive = config.tcp_keepalive.clone();
        Ok(Live {
            config,
            server_tls,
            upstream,
            engine,
        })
    }
}

/// State shared by every session of one pgveil process.
pub struct Shared {
    /// The configuration in force (replaced whole by a reload).
    live: RwLock<Arc<Live>>,
    /// Bumped by every reload that replaced `live`.
    generation: AtomicU64,
    pub cancel: CancelRegistry,
    /// Slots for authenticated sessions (`limits.max_connections`).
    pub sessions: Arc<Semaphore>,
    /// Slots for connections still logging in, and their count per client
    /// address.
    pub admission: Arc<Admission>,
    /// The memory budget for messages held whole.
    pub budget: crate::wire::budget::Budget,
    /// SIGTERM/SIGINT arrived: sessions drain, `/readyz` says so.
    pub draining: AtomicBool,
}

/// Pre-authentication admission: `limits.max_pending_logins` and
/// `limits.max_pending_logins_per_ip`.
pub struct Admission {
    pending: Arc<Semaphore>,
    per_ip_cap: usize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a new connection was refused before it could log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    PendingLogins,
    PendingLoginsPerIp,
}

impl Admission {
    /// Admission of at most `max_pending` logins at once, `per_ip_cap` of them from one address.
    pub fn new(max_pending: usize, per_ip_cap: usize) -> Arc<Admission> {
        Arc::new(Admission {
            pending: Arc::new(Semaphore::new(max_pending)),
            per_ip_cap,
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    /// Admit a connection from `ip` to log in, or say which cap it hit.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<PendingLogin, Refused> {
        let permit = self
            .pending
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::PendingLogins)?;
        if self.per_ip_cap > 0 {
            let mut m = self.per_ip.lock().expect("per-ip map");
            let n = m.entry(ip).or_insert(0);
            if *n >= self.per_ip_cap {
                return Err(Refused::PendingLoginsPerIp);
            }
            *n += 1;
        }
        metrics::gauge!("pgveil_logins_pending").increment(1.0);
        Ok(PendingLogin {
            admission: self.clone(),
            ip,
            _permit: permit,
        })
    }
}

/// A connection that has not completed authentication; dropping it gives
/// its pending-login slot back.
pub struct PendingLogin {
    admission: Arc<Admission>,
    ip: IpAddr,
    _permit: OwnedSemaphorePermit,
}

impl Drop for PendingLogin {
    fn drop(&mut self) {
        metrics::gauge!("pgveil_logins_pending").decrement(1.0);
        if self.admission.per_ip_cap > 0 {
            let mut m = self.admission.per_ip.lock().expect("per-ip map");
            if let Some(n) = m.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&self.ip);
                }
            }
        }
    }
}

impl Shared {
    /// Shared state for `config`; limits (connection slots, admission, the
    /// memory budget) are sized now and keep their size until a restart.
    pub fn new(config: Config) -> Result<Shared, String> {
        let l = config.limits.clone();
        let live = Live::new(config, None).map_err(|e| e.message)?;
        Ok(Shared {
            live: RwLock::new(Arc::new(live)),
            generation: AtomicU64::new(0),
            sessions: Arc::new(Semaphore::new(l.max_connections)),
            admission: Admission::new(l.max_pending_logins, l.max_pending_logins_per_ip),
            budget: crate::wire::budget::Budget::new(l.max_buffered_bytes, l.buffer_wait.0),
            cancel: CancelRegistry::new(),
            draining: AtomicBool::new(false),
        })
    }

    /// Serve with this policy engine (`None`: pass-through).
    pub fn with_engine(self, engine: Option<Arc<Engine>>) -> Shared {
        {
            let mut live = self.live.write().expect("live config");
            let l = Arc::get_mut(&mut live).expect("not shared yet");
            l.engine = engine;
        }
        self
    }

    /// The configuration in force now.
    pub fn live(&self) -> Arc<Live> {
        self.live.read().expect("live config").clone()
    }

    /// How many reloads replaced the configuration so far.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Put a reloaded configuration in force for new sessions (and, at
    /// their next transaction boundary, for the engines of open ones).
    pub fn install(&self, live: Live) -> u64 {
        *self.live.write().expect("live config") = Arc::new(live);
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }
}
