//! Shared harness of the pgveil fuzz targets (`fuzz_targets/*.rs` are thin
//! wrappers around [`frontend`], [`backend`] and [`analyzer`]).
//!
//! The policy is the reference policy or a small variant, the catalog is a
//! fixed set of rows in the shape of `Catalog::simple_query`'s result, and
//! the key manager has a local master key and a real keystore, so
//! encryption and decryption succeed and the success paths are fuzzed too:
//! the keystore is the PostgreSQL at `PGVEIL_FUZZ_KEYSTORE` (a libpq-style
//! connection string) if set, else a throwaway PostgreSQL cluster the
//! harness starts once per process on a Unix socket (binaries from
//! `/usr/lib/postgresql/15/bin`, the newest `/usr/lib/postgresql/*/bin`, or
//! `PATH`; as root it runs as the `postgres` user) and that stops and is
//! removed when the process exits.
//!
//! Input layouts (first byte = control byte, see each function):
//!
//! - frontend: `ctl`, then the client's byte stream. Property: no value
//!   pgveil had to encrypt or blind-index (a parameter or literal for a
//!   protected column, 8 bytes or more, occurring once in the input) is in
//!   what pgveil sends upstream.
//! - backend:  `ctl`, `u16` BE length `n`, `n` bytes of client frames (to
//!   put requests in flight), then the server's byte stream.
//! - analyzer: `ctl`, declared parameter type codes, then SQL text.

use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};
use zeroize::Zeroizing;

use pgveil::auth::scram;
use pgveil::crypto::BlindIndexRoot;
use pgveil::keys::{KeyManager, KeyManagerOptions, Keystore, LocalProvider};
use pgveil::policy::Policy;
use pgveil::policy::catalog::Catalog;
use pgveil::session::backend::Backend;
use pgveil::session::frontend::{Flow, Frontend};
use pgveil::session::values::ValueCrypto;
use pgveil::session::{CatalogEntry, CatalogRows, Engine, Exchange, Identity, Pending};
use pgveil::sql::{Analyzer, Mode, Segment, StatementPlan};
use pgveil::wire::codec::{Frame, FrameReader, complete_frame_len, read_startup};
use pgveil::wire::query::{
    BindMsg, ParseMsg, decode_execute, decode_target, encode_binary_array, encode_execute,
};
use pgveil::wire::result::{
    decode_data_row, decode_parameter_description, decode_row_description, encode_data_row,
    encode_parameter_description, encode_row_description,
};
use pgveil::wire::{auth, error, startup};

/// `limits.max_message_bytes` for the fuzzed readers: small enough that the
/// "too large" paths are reachable.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// The reference policy, unchanged.
pub const REFERENCE_POLICY: &str = include_str!("../../policies/calmony.yaml");

/// A small variant: every plaintext type, a text tenant, `text` storage,
/// a blind index in rotation (`next`), and the write/search/none levels.
pub const VARIANT_POLICY: &str = "\
version: 1
groups:
  readers: [v_reader, calmony_app]
tables:
  public.vault:
    tenant: org
    columns:
      t:
        type: text
        blind_index: { column: t_bidx, normalize: [trim, lowercase], next: t_bidx2 }
        access: { readers: read, v_writer: write, v_search: search }
      vc:  { type: varchar, access: { readers: read } }
      i2:  { type: int2, access: { readers: read } }
      i4:
        type: int4
        blind_index: { column: i4_bidx }
        access: { readers: read, v_search: search }
      i8:  { type: int8, access: { readers: read } }
      n:   { type: numeric, access: { readers: read } }
      b:   { type: bool, access: { readers: read } }
      d:
        type: date
        blind_index: { column: d_bidx }
        access: { readers: read }
      ts:  { type: timestamp, access: { readers: read } }
      tz:  { type: timestamptz, access: { readers: read } }
      u:
        type: uuid
        blind_index: { column: u_bidx }
        access: { readers: read, v_search: search }
      j:   { type: jsonb, access: { readers: read } }
      by:
        type: bytea
        blind_index: { column: by_bidx, normalize: [strip_spaces] }
        access: { readers: read }
      note: { type: text, access: { readers: read, v_writer: write } }
  app.people:
    columns:
      email:
        type: text
        blind_index: { column: email_bidx, normalize: [trim, lowercase] }
        access: { readers: read, v_writer: write }
";

/// Login roles the control byte chooses from (3 bits): roles of both
/// policies with every access level, and `dba`, listed nowhere.
pub const ROLES: [&str; 8] = [
    "calmony_app",
    "support_agent",
    "signup",
    "clinician",
    "intake",
    "v_writer",
    "v_search",
    "dba",
];

/// Bytes per read of the in-memory socket (3 bits of the control byte).
const CHUNKS: [usize; 8] = [1, 2, 3, 7, 64, 512, 4096, usize::MAX];

/// A SCRAM client nonce the backend target pretends to have sent (seeds
/// use it so that server-first-message parsing gets past the nonce check).
pub const CLIENT_NONCE: &str = "fyko+d2lbbFgONRv9qkxdawL";

type Row = Vec<Option<String>>;

fn row(oid: u32, attnum: i16, schema: &str, rel: &str, kind: char, att: &str, ty: &str) -> Row {
    vec![
        Some(oid.to_string()),
        Some(attnum.to_string()),
        Some(schema.into()),
        Some(rel.into()),
        Some(kind.to_string()),
        Some(att.into()),
        Some(ty.into()),
        None,
    ]
}

fn table(oid: u32, schema: &str, rel: &str, cols: &[(&str, &str)]) -> Vec<Row> {
    cols.iter()
        .enumerate()
        .map(|(i, (att, ty))| row(oid, i as i16 + 1, schema, rel, 'r', att, ty))
        .collect()
}

fn view(oid: u32, schema: &str, rel: &str, cols: &[(&str, &str)], def: &str) -> Vec<Row> {
    let mut rows: Vec<Row> = cols
        .iter()
        .enumerate()
        .map(|(i, (att, ty))| row(oid, i as i16 + 1, schema, rel, 'v', att, ty))
        .collect();
    rows[0][7] = Some(def.into());
    rows
}

/// Catalog rows for `policies/calmony.sql`, plus a view over `users`.
pub fn reference_catalog() -> CatalogRows {
    let b = "bytea";
    let mut rows = vec![];
    rows.extend(table(
        16400,
        "public",
        "users",
        &[
            ("id", "bigint"),
            ("email", b),
            ("email_bidx", b),
            ("name", "text"),
            ("plan", "text"),
            ("created_at", "timestamp with time zone"),
        ],
    ));
    rows.extend(table(
        16410,
        "public",
        "pay_customers",
        &[
            ("id", "bigint"),
            ("org_id", "bigint"),
            ("email", b),
            ("email_bidx", b),
            ("name", b),
            ("phone", b),
            ("line1", b),
            ("line2", b),
            ("city", b),
            ("state", b),
            ("postal_code", b),
            ("postal_code_bidx", b),
            ("country", b),
        ],
    ));
    rows.extend(table(
        16420,
        "public",
        "pay_payment_methods",
        &[
            ("id", "bigint"),
            ("customer_id", "bigint"),
            ("billing_name", b),
            ("billing_email", b),
        ],
    ));
    rows.extend(table(
        16430,
        "public",
        "pay_webhook_endpoints",
        &[("id", "bigint"), ("url", "text"), ("secret", b)],
    ));
    rows.extend(table(
        16440,
        "phi",
        "member_profile",
        &[
            ("id", "bigint"),
            ("legal_name", b),
            ("date_of_birth", b),
            ("ssn", b),
            ("ssn_bidx", b),
            ("risk_score", b),
            ("note", "text"),
        ],
    ));
    rows.extend(view(
        16450,
        "public",
        "people",
        &[("id", "bigint"), ("email", b), ("email_bidx", b), ("plan", "text")],
        " SELECT users.id,\n    users.email,\n    users.email_bidx,\n    users.plan\n   FROM users;",
    ));
    rows
}

/// Catalog rows for [`VARIANT_POLICY`], plus a view over `vault`.
pub fn variant_catalog() -> CatalogRows {
    let b = "bytea";
    let mut rows = vec![];
    rows.extend(table(
        20000,
        "public",
        "vault",
        &[
            ("id", "bigint"),
            ("org", "text"),
            ("t", b),
            ("t_bidx", b),
            ("t_bidx2", b),
            ("vc", b),
            ("i2", b),
            ("i4", b),
            ("i4_bidx", b),
            ("i8", b),
            ("n", b),
            ("b", b),
            ("d", b),
            ("d_bidx", b),
            ("ts", b),
            ("tz", b),
            ("u", b),
            ("u_bidx", b),
            ("j", b),
            ("by", b),
            ("by_bidx", b),
            ("note", "text"),
        ],
    ));
    rows.extend(table(
        20010,
        "app",
        "people",
        &[("id", "integer"), ("email", "text"), ("email_bidx", b)],
    ));
    rows.extend(view(
        20020,
        "public",
        "vault_view",
        &[("id", "bigint"), ("org", "text"), ("t", b), ("i4", b)],
        " SELECT vault.id,\n    vault.org,\n    vault.t,\n    vault.i4\n   FROM vault;",
    ));
    rows
}

/// One policy with its engine and installed catalog.
pub struct Env {
    pub policy: Arc<Policy>,
    pub engine: Arc<Engine>,
    pub entry: Arc<CatalogEntry>,
}

impl Env {
    fn build(name: &str, text: &str, rows: CatalogRows) -> Env {
        let policy = Arc::new(
            Policy::from_text(Path::new(name), text)
                .unwrap_or_else(|e| panic!("fuzz policy {name}: {e}")),
        );
        let provider = LocalProvider::new(vec![("k1".into(), Zeroizing::new([0x11; 32]))])
            .expect("local master key");
        let keystore = Keystore::new_no_tls(&keystore_url()).expect("keystore URL");
        let keys = KeyManager::new(Arc::new(provider), keystore, KeyManagerOptions::default());
        let bidx = BlindIndexRoot::from_bytes(&[0x22; 32]).expect("blind-index root");
        let crypto = Arc::new(ValueCrypto::new(keys, Some(bidx)));
        let engine = Arc::new(Engine::new(policy.clone(), crypto, None));
        // `Engine::install` takes the rows of `Catalog::simple_query`, whose
        // name and text columns are hex of their UTF-8 bytes.
        let rows: CatalogRows = rows
            .into_iter()
            .map(|r| {
                r.into_iter()
                    .enumerate()
                    .map(|(i, v)| match i {
                        2 | 3 | 5 | 6 | 7 => {
                            v.map(|v| v.bytes().map(|b| format!("{b:02x}")).collect::<String>())
                        }
                        _ => v,
                    })
                    .collect()
            })
            .collect();
        let entry = engine.install("app", rows);
        assert!(
            entry.catalog.problems.is_empty(),
            "fuzz catalog does not match {name}: {:?}",
            entry.catalog.problems
        );
        Env {
            policy,
            engine,
            entry,
        }
    }

    /// The reference policy (`which` even) or the variant (odd).
    pub fn get(which: u8) -> &'static Env {
        static REF: OnceLock<Env> = OnceLock::new();
        static VAR: OnceLock<Env> = OnceLock::new();
        if which & 1 == 0 {
            REF.get_or_init(|| Env::build("calmony.yaml", REFERENCE_POLICY, reference_catalog()))
        } else {
            VAR.get_or_init(|| Env::build("variant.yaml", VARIANT_POLICY, variant_catalog()))
        }
    }

    /// The two halves of a fresh session for `role`.
    pub fn session(&self, role: &str) -> (Frontend, Backend) {
        let shared = Arc::new(Exchange::new(self.entry.clone()));
        let id = Identity {
            login_role: role.to_string(),
            database: "app".into(),
            client_addr: "127.0.0.1:5432".into(),
        };
        let mut fe = Frontend::new(id.clone(), shared.clone(), self.engine.clone());
        // No server answers here: nothing to wait for.
        fe.set_answers_wait(std::time::Duration::ZERO);
        (fe, Backend::new(id, shared, self.engine.clone()))
    }
}

/// The keystore's connection string: `PGVEIL_FUZZ_KEYSTORE`, else a
/// throwaway cluster (see the crate doc).
pub fn keystore_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| match std::env::var("PGVEIL_FUZZ_KEYSTORE") {
        Ok(url) if !url.is_empty() => url,
        _ => throwaway_cluster(),
    })
    .clone()
}

fn pg_bin_dir() -> std::path::PathBuf {
    let preferred = Path::new("/usr/lib/postgresql/15/bin");
    if preferred.join("initdb").exists() {
        return preferred.to_path_buf();
    }
    let mut found: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists())
        .collect();
    found.sort();
    if let Some(b) = found.pop() {
        return b;
    }
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p).find(|d| d.join("initdb").exists())
        })
        .expect("PostgreSQL server binaries (initdb, postgres) for the fuzz keystore, or set PGVEIL_FUZZ_KEYSTORE")
}

/// initdb + postgres on a Unix socket in a new temporary directory. The
/// server runs under a shell that waits on a pipe from this process: when
/// the process exits (libFuzzer ends with `exit`), the pipe closes and the
/// shell stops the server and removes the directory.
fn throwaway_cluster() -> String {
    use std::process::{Command, Stdio};
    let bin = pg_bin_dir();
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let dir = std::env::temp_dir().join(format!(
        "pgveil-fuzz-keystore-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).expect("keystore directory");
    if root {
        let st = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .status()
            .expect("chown");
        assert!(st.success(), "chown postgres {}", dir.display());
    }
    let as_pg = |prog: &str| {
        if root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", prog]);
            c
        } else {
            Command::new(prog)
        }
    };
    let data = dir.join("data");
    let out = as_pg(bin.join("initdb").to_str().unwrap())
        .args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
            "-D",
        ])
        .arg(&data)
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb for the fuzz keystore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = format!(
        "'{pg}' -D '{data}' -k '{dir}' -c listen_addresses='' -c fsync=off -p 5432 \
         >'{dir}/postgresql.log' 2>&1 & pid=$!; read _; kill -INT $pid; wait $pid; rm -rf '{dir}'",
        pg = bin.join("postgres").display(),
        data = data.display(),
        dir = dir.display()
    );
    let child = as_pg("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the fuzz keystore");
    // Keep the pipe open for the life of the process.
    std::mem::forget(child);
    let log = dir.join("postgresql.log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("ready to accept connections")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the fuzz keystore did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    format!(
        "host={} port=5432 user=postgres dbname=postgres",
        dir.display()
    )
}

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// An in-memory socket that hands out at most `chunk` bytes per read, so
/// frames arrive split at every possible point.
pub struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl<'a> Chunked<'a> {
    pub fn new(data: &'a [u8], chunk: usize) -> Self {
        Chunked { data, chunk }
    }
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.data.len().min(self.chunk).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

/// What pgveil writes must be a sequence of whole, well-framed messages.
pub fn assert_well_framed(out: &[u8], what: &str) {
    let mut off = 0;
    while off < out.len() {
        match complete_frame_len(&out[off..], usize::MAX) {
            Ok(Some(n)) => off += n,
            other => panic!(
                "{what}: pgveil produced a malformed frame at byte {off}: {other:?} ({:?})",
                &out[off..out.len().min(off + 16)]
            ),
        }
    }
}

/// The untyped first packet, as `proxy::login` parses it.
pub fn check_first_packet(raw: &[u8]) -> Option<startup::FirstPacket> {
    let p = startup::parse_first_packet(raw).ok()?;
    if let startup::FirstPacket::Startup(s) = &p {
        let again = startup::parse_first_packet(&s.encode()).expect("re-encoded startup parses");
        assert_eq!(&again, &p, "startup message round trip");
        let _ = (s.user(), s.database());
    }
    Some(p)
}

/// Every decoder pgveil has for a client message, with round trips where
/// an encoder exists.
pub fn check_frontend_frame(f: &Frame) {
    let body = f.raw.slice(5..);
    match f.tag {
        b'P' => {
            if let Some(p) = ParseMsg::decode(&body) {
                let mut out = BytesMut::new();
                p.encode(&mut out);
                assert_eq!(
                    ParseMsg::decode(&out[5..]).as_ref(),
                    Some(&p),
                    "Parse round trip"
                );
            }
        }
        b'B' => {
            if let Some(b) = BindMsg::decode(&body) {
                let mut out = BytesMut::new();
                b.encode(&mut out);
                let again = BindMsg::decode(&Bytes::copy_from_slice(&out[5..]));
                assert_eq!(again.as_ref(), Some(&b), "Bind round trip");
                for (i, p) in b.params.iter().enumerate() {
                    let _ = b.param_format(i);
                    if let Some(v) = p {
                        check_array_param(v);
                    }
                }
            }
        }
        b'D' | b'C' => {
            let _ = decode_target(&body);
        }
        b'E' => {
            if let Some((portal, max)) = decode_execute(&body) {
                let mut out = BytesMut::new();
                encode_execute(&mut out, &portal, max);
                assert_eq!(
                    decode_execute(&out[5..]),
                    Some((portal, max)),
                    "Execute round trip"
                );
            }
        }
        b'p' => {
            // SASLInitialResponse, SASLResponse or a password.
            if let Some((mech, data)) = auth::parse_sasl_initial_response(&body) {
                let again = auth::sasl_initial_response(&mech, &data);
                assert_eq!(
                    auth::parse_sasl_initial_response(&again[5..]),
                    Some((mech.clone(), data.clone())),
                    "SASLInitialResponse round trip"
                );
                let _ = scram::parse_client_first(&data, mech.ends_with("-PLUS"));
            }
            let _ = scram::parse_client_first(&body, false);
            let _ = scram::parse_client_final(&body);
        }
        _ => {}
    }
}

/// Array parameters (`= ANY($1)`, `UNNEST($1::text[])`) in both formats:
/// what the strict readers accept survives pgveil's own encoding, and text
/// literals render back to the same elements.
fn check_array_param(v: &[u8]) {
    use pgveil::sql::array;
    if let Ok(a) = array::decode_binary(v) {
        let enc = encode_binary_array(a.elem_oid, &a.items);
        let back = array::decode_binary(&enc).expect("pgveil's own array encoding reads back");
        assert_eq!(back.items, a.items, "binary array round trip");
    }
    if let Ok(s) = std::str::from_utf8(v)
        && let Ok(items) = array::parse_text(s)
    {
        assert_eq!(
            array::parse_text(&array::render_text(&items)),
            Ok(items),
            "text array round trip"
        );
    }
}

/// Every decoder pgveil has for a server message, with round trips where
/// an encoder exists.
pub fn check_backend_frame(f: &Frame) {
    let body = f.raw.slice(5..);
    match f.tag {
        b'T' => {
            if let Some(fields) = decode_row_description(&body) {
                let mut out = BytesMut::new();
                encode_row_description(&mut out, &fields);
                assert_eq!(
                    decode_row_description(&out[5..]),
                    Some(fields),
                    "RowDescription round trip"
                );
            }
        }
        b'D' => {
            if let Some(cols) = decode_data_row(&body) {
                let mut out = BytesMut::new();
                encode_data_row(&mut out, &cols);
                let again = decode_data_row(&Bytes::copy_from_slice(&out[5..]));
                assert_eq!(again, Some(cols), "DataRow round trip");
            }
        }
        b't' => {
            if let Some(types) = decode_parameter_description(&body) {
                let mut out = BytesMut::new();
                encode_parameter_description(&mut out, &types);
                assert_eq!(
                    decode_parameter_description(&out[5..]),
                    Some(types),
                    "ParameterDescription round trip"
                );
            }
        }
        b'E' | b'N' => {
            let fields = error::parse_error_fields(&body);
            assert!(fields.iter().all(|(c, _)| *c != 0));
            let code = error::error_code(&body);
            assert_eq!(
                code.is_some(),
                fields.iter().any(|(c, _)| *c == b'C'),
                "error_code agrees with the fields"
            );
        }
        b'R' => match auth::auth_code(&body) {
            Some(auth::AUTH_SASL) => {
                let mechs = auth::sasl_mechanisms(&body);
                assert!(mechs.iter().all(|m| !m.is_empty() && !m.contains('\0')));
            }
            Some(auth::AUTH_SASL_CONTINUE) => {
                let _ = scram::parse_server_first(&body[4..], CLIENT_NONCE);
            }
            Some(auth::AUTH_SASL_FINAL) => {
                let _ = scram::parse_server_final(&body[4..]);
            }
            _ => {}
        },
        _ => {}
    }
}

/// Split `control | u16 len | client bytes | server bytes`.
fn split_backend_input(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&ctl, rest) = data.split_first()?;
    let (len, rest) = rest.split_first_chunk::<2>()?;
    let n = (u16::from_be_bytes(*len) as usize).min(rest.len());
    let (client, server) = rest.split_at(n);
    Some((ctl, client, server))
}

/// Client traffic through the proxy's own path: the startup packets
/// (`read_startup` + `parse_first_packet`, as `proxy::login` does), then
/// `FrameReader` and `Frontend::on_frame` for every frame, with every
/// client-message decoder applied to each frame on the side.
///
/// Control byte: bits 0-2 role ([`ROLES`]), bit 3 policy (reference /
/// variant), bit 4 read startup packets first, bits 5-7 read size.
pub fn frontend(data: &[u8]) {
    let Some((&ctl, stream)) = data.split_first() else {
        return;
    };
    let env = Env::get(ctl >> 3);
    let role = ROLES[(ctl & 7) as usize];
    let chunk = CHUNKS[(ctl >> 5) as usize];
    rt().block_on(async {
        let mut sock = Chunked::new(stream, chunk);
        if ctl & 0x10 != 0 {
            // SSLRequest / GSSENCRequest are answered `N` and the client
            // tries again; anything else ends negotiation.
            loop {
                let Ok(raw) = read_startup(&mut sock, MAX_MESSAGE).await else {
                    return;
                };
                match check_first_packet(&raw) {
                    Some(
                        startup::FirstPacket::SslRequest | startup::FirstPacket::GssEncRequest,
                    ) => {}
                    Some(startup::FirstPacket::Startup(_)) => break,
                    _ => return,
                }
            }
        }
        let (mut fe, _be) = env.session(role);
        let mut reader = FrameReader::new(sock, MAX_MESSAGE);
        let mut out = BytesMut::new();
        let mut secrets = Secrets::default();
        'read: while reader.fill().await.is_ok() {
            loop {
                let f = match reader.try_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(_) => break 'read,
                };
                check_frontend_frame(&f);
                secrets.note(env, role, &f);
                let flow = fe.on_frame(f, &mut out).await;
                if flow == Flow::Terminate {
                    break 'read;
                }
            }
        }
        assert_well_framed(&out, "client → server");
        secrets.assert_not_sent(stream, &out);
    });
}

/// Values of the client's traffic that pgveil must never send upstream as
/// they are: parameters and literals the statement's plan encrypts or
/// blind-indexes (the plan as pgveil's own analyzer makes it).
#[derive(Default)]
pub struct Secrets {
    /// Prepared statements: name → protected parameter positions.
    stmts: std::collections::HashMap<String, Vec<usize>>,
    values: Vec<Vec<u8>>,
}

/// Shorter values occur by chance in other bytes.
const MIN_SECRET: usize = 8;

fn protects(op: &pgveil::sql::SlotOp) -> bool {
    use pgveil::sql::SlotOp;
    matches!(
        op,
        SlotOp::Encrypt | SlotOp::BlindIndex | SlotOp::BlindIndexNext
    )
}

impl Secrets {
    pub fn note(&mut self, env: &Env, role: &str, f: &Frame) {
        use pgveil::sql::ParamAction;
        let body = f.raw.slice(5..);
        match f.tag {
            b'P' => {
                let Some(p) = ParseMsg::decode(&body) else {
                    return;
                };
                let plans = env.entry.plan(
                    &p.query,
                    role,
                    Mode::Extended {
                        param_types: &p.param_types,
                    },
                );
                let mut protected = vec![];
                for plan in plans.iter() {
                    if let StatementPlan::Rewrite(r) = plan {
                        for a in &r.params {
                            if matches!(
                                a,
                                ParamAction::Encrypt { .. }
                                    | ParamAction::BlindIndex { .. }
                                    | ParamAction::BlindIndexNext { .. }
                                    | ParamAction::EncryptArray { .. }
                                    | ParamAction::BlindIndexArray { .. }
                            ) {
                                protected.push(a.orig());
                            }
                        }
                    }
                }
                self.stmts.insert(p.name, protected);
            }
            b'B' => {
                let Some(b) = BindMsg::decode(&body) else {
                    return;
                };
                if let Some(pos) = self.stmts.get(&b.statement) {
                    for &i in pos {
                        if let Some(Some(v)) = b.params.get(i) {
                            self.values.push(v.to_vec());
                        }
                    }
                }
            }
            b'Q' => {
                let Some(sql) = body.strip_suffix(b"\0") else {
                    return;
                };
                let Ok(sql) = std::str::from_utf8(sql) else {
                    return;
                };
                for plan in env.entry.plan(sql, role, Mode::Simple).iter() {
                    if let StatementPlan::Rewrite(r) = plan {
                        for l in &r.literals {
                            if let (Some(v), true) = (&l.value, protects(&l.op)) {
                                self.values.push(v.as_bytes().to_vec());
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// No protected value that occurs once in the client's input (so that
    /// any copy upstream can only be that value) is in `upstream`.
    pub fn assert_not_sent(&self, input: &[u8], upstream: &[u8]) {
        let count = |hay: &[u8], v: &[u8]| hay.windows(v.len()).filter(|w| *w == v).count();
        // Text pgveil writes itself (the DO block that raises a refusal):
        // a "value" that is part of it proves nothing.
        const OWN: &[u8] =
            b"DO $pgveil$ BEGIN RAISE EXCEPTION USING ERRCODE = '', MESSAGE = ''; END $pgveil$\0";
        for v in &self.values {
            // A value that carries `$pgveil$` is entangled with that text
            // (raise_sql strips the tag from messages, so no client value
            // reaches the DO block with it).
            if v.len() < MIN_SECRET
                || count(input, v) != 1
                || count(OWN, v) > 0
                || count(v, b"$pgveil$") > 0
            {
                continue;
            }
            assert!(
                count(upstream, v) == 0,
                "a protected value was sent upstream in plaintext: {:?}",
                String::from_utf8_lossy(v)
            );
        }
    }
}

/// Server traffic through `Backend::on_frame`, after the client frames of
/// the input's first part went through `Frontend::on_frame` (so requests of
/// every kind are in flight), with every server-message decoder applied to
/// each frame on the side. With bit 4 of the control byte, a catalog reload
/// is in flight first (as `proxy::relay` starts one): the rows the server
/// sends for it are turned into a `Catalog` and a `CatalogEntry` (views'
/// definitions are parsed there).
///
/// Control byte: bits 0-2 role, bit 3 policy, bit 4 catalog reload, bits
/// 5-7 read size.
pub fn backend(data: &[u8]) {
    let Some((ctl, client, server)) = split_backend_input(data) else {
        return;
    };
    let env = Env::get(ctl >> 3);
    let role = ROLES[(ctl & 7) as usize];
    let chunk = CHUNKS[(ctl >> 5) as usize];
    rt().block_on(async {
        let (mut fe, mut be) = env.session(role);
        let catalog = if ctl & 0x10 != 0 {
            let (tx, rx) = tokio::sync::oneshot::channel();
            fe.exchange.push(Pending::Catalog { done: Some(tx) });
            Some(rx)
        } else {
            None
        };
        // The client's requests, as whole frames (a trailing partial frame
        // is dropped, as the relay would wait for the rest).
        let mut up = BytesMut::new();
        let mut off = 0;
        while let Ok(Some(n)) = complete_frame_len(&client[off..], MAX_MESSAGE) {
            let raw = Bytes::copy_from_slice(&client[off..off + n]);
            off += n;
            let f = Frame { tag: raw[0], raw };
            if fe.on_frame(f, &mut up).await == Flow::Terminate {
                break;
            }
        }
        assert_well_framed(&up, "client → server");

        let mut reader = FrameReader::new(Chunked::new(server, chunk), MAX_MESSAGE);
        let mut out = BytesMut::new();
        'read: while reader.fill().await.is_ok() {
            loop {
                let f = match reader.try_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(_) => break 'read,
                };
                check_backend_frame(&f);
                be.on_frame(f, &mut out).await;
            }
        }
        assert_well_framed(&out, "server → client");

        if let Some(Ok(Some(rows))) = catalog.map(|mut rx| rx.try_recv()) {
            let cat = Catalog::from_hex_rows(&env.policy, rows);
            let entry = CatalogEntry::new(env.policy.clone(), cat, 0);
            for sql in [
                "select * from users",
                "select * from vault_view where t = $1",
            ] {
                let _ = entry.plan(sql, role, Mode::Extended { param_types: &[] });
            }
        }
    });
}

/// Parameter types a Parse may declare (4 bits of a type code byte).
const PARAM_TYPES: [u32; 16] = [
    0, 25, 23, 20, 21, 16, 1082, 1184, 1114, 2950, 3802, 17, 1043, 1700, 1009, 705,
];

/// SQL text and a policy through `Analyzer::plan`, checking:
///
/// - the pre-check has no false negatives: when `may_touch_protected` says
///   no, every plan is a passthrough, and sqlparser finds no relation named
///   like a protected table or view;
/// - every plan's ranges and slot indices are in bounds;
/// - a changed statement, with its literal slots filled in as pgveil fills
///   them (`'\x…'::bytea`), parses again as exactly one statement; an
///   unchanged one is the original text.
///
/// Control byte: bits 0-2 role, bit 3 policy, bit 4 extended protocol,
/// bits 5-7 number of declared parameter types (one code byte each).
pub fn analyzer(data: &[u8]) {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let env = Env::get(ctl >> 3);
    let role = ROLES[(ctl & 7) as usize];
    let ntypes = ((ctl >> 5) as usize).min(rest.len());
    let (codes, text) = rest.split_at(ntypes);
    let types: Vec<u32> = codes
        .iter()
        .map(|c| PARAM_TYPES[(c & 15) as usize])
        .collect();
    let sql = String::from_utf8_lossy(text);
    let mode = if ctl & 0x10 != 0 {
        Mode::Extended {
            param_types: &types,
        }
    } else {
        Mode::Simple
    };
    let an: &Analyzer = &env.entry.analyzer;
    let touches = an.may_touch_protected(&sql);
    let plans = an.plan(&sql, role, mode);
    for p in &plans {
        check_plan(&sql, p, touches);
        // A statement that names a protected table or view is planned or
        // refused, never passed through unexamined.
        if let StatementPlan::Passthrough { sql: text } = p {
            assert_no_protected_relation(env, text);
        }
    }
    if !touches {
        assert_no_protected_relation(env, &sql);
    }
}

fn check_plan(sql: &str, p: &StatementPlan, touches: bool) {
    match p {
        StatementPlan::Passthrough { .. } => {}
        _ if !touches => panic!("pre-check said no, but the plan is {p:?}"),
        StatementPlan::Reject { sqlstate, .. } => {
            assert!(matches!(*sqlstate, "42501" | "0A000"), "{sqlstate}");
        }
        StatementPlan::Copy(c) => {
            assert!(sql.get(c.source.clone()).is_some(), "COPY source range");
            for (_, i, _) in &c.appended {
                assert!(*i < c.fields.len(), "appended COPY field index");
            }
        }
        StatementPlan::Rewrite(r) => {
            let original = sql.get(r.source.clone()).expect("rewrite source range");
            assert_eq!(r.params.len(), r.parse_param_types.len());
            for s in &r.sql {
                if let Segment::Literal(i) = s {
                    assert!(*i < r.literals.len(), "literal slot index");
                }
            }
            let rendered = r.render(|_, _| "'\\x7076'::bytea".to_string());
            if r.unchanged {
                assert_eq!(rendered, original, "unchanged rewrite is the original");
                assert!(r.edits.is_empty(), "an unchanged rewrite has no edits");
            } else {
                check_splice(original, &r.edits, &rendered);
                let dialect = sqlparser::dialect::PostgreSqlDialect {};
                match sqlparser::parser::Parser::parse_sql(&dialect, &rendered) {
                    Ok(v) => assert_eq!(v.len(), 1, "rewritten statement count: {rendered}"),
                    Err(e) => panic!("rewritten statement does not parse ({e}):\n{rendered}"),
                }
            }
        }
    }
}

/// The splice invariant: outside the announced edit spans, the statement
/// sent is the client's text byte for byte and in order (the first kept
/// piece starts it, the last ends it, the others appear in order between
/// the edits' replacements).
fn check_splice(original: &str, edits: &[std::ops::Range<usize>], rendered: &str) {
    let mut kept = vec![];
    let mut at = 0;
    for e in edits {
        assert!(
            e.start >= at && e.end >= e.start && e.end <= original.len(),
            "edit spans in order"
        );
        kept.push(&original[at..e.start]);
        at = e.end;
    }
    kept.push(&original[at..]);
    let mut pos = 0;
    let last = kept.len() - 1;
    for (i, piece) in kept.iter().enumerate() {
        if i == 0 {
            assert!(
                rendered.starts_with(piece),
                "kept prefix:\n{original}\n{rendered}"
            );
            pos = piece.len();
        } else if i == last {
            assert!(
                rendered[pos..].ends_with(piece),
                "kept suffix:\n{original}\n{rendered}"
            );
        } else {
            let found = rendered[pos..]
                .find(piece)
                .unwrap_or_else(|| panic!("kept piece {piece:?} missing:\n{original}\n{rendered}"));
            pos += found + piece.len();
        }
    }
}

/// The pre-check's promise: no false negatives.
fn assert_no_protected_relation(env: &Env, sql: &str) {
    use sqlparser::ast::{ObjectNamePart, visit_relations};
    let dialect = sqlparser::dialect::PostgreSqlDialect {};
    let Ok(stmts) = sqlparser::parser::Parser::parse_sql(&dialect, sql) else {
        return;
    };
    let mut names: Vec<String> = env
        .policy
        .tables
        .iter()
        .map(|t| t.table.to_lowercase())
        .collect();
    names.extend(
        env.entry
            .catalog
            .views
            .keys()
            .map(|(_, n)| n.to_lowercase()),
    );
    for s in &stmts {
        let _ = visit_relations(s, |rel| {
            if let Some(ObjectNamePart::Identifier(id)) = rel.0.last() {
                assert!(
                    !names.contains(&id.value.to_lowercase()),
                    "pre-check missed relation {rel} in {sql:?}"
                );
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
    }
}
