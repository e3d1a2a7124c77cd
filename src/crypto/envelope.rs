//! The envelope: a versioned, self-describing AES-256-GCM ciphertext.
//!
//! ```text
//! offset  size  field
//!      0     2  magic "pv" (0x70 0x76)
//!      2     1  format version (0x01)
//!      3     4  data-key id, u32 big-endian (one per table [+ tenant], see keys)
//!      7     4  data-key version, u32 big-endian
//!     11     1  tenant id length t (0 = table without tenant)
//!     12     t  tenant id, UTF-8
//!   12+t    12  nonce (random, from the OS CSPRNG)
//!   24+t     4  ciphertext length n, u32 big-endian
//!   28+t     n  ciphertext
//! 28+t+n    16  GCM tag
//! ```
//!
//! AES-256-GCM directly under the data key with a fresh random 96-bit nonce
//! and the associated data described at [`aad`]; the whole header (28 + t
//! bytes) is in the AAD. A data key is retired before 2^32 encryptions (the
//! keystore counts them), as NIST SP 800-38D requires for random nonces.
//! See docs/crypto.md for the rationale and test vectors.

use std::fmt;

use std::cell::RefCell;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use base64::Engine;
use zeroize::Zeroizing;

use super::{ColumnContext, CryptoError};

/// First two bytes of every envelope, `pv`.
pub const MAGIC: [u8; 2] = *b"pv";
/// Envelope format version this build writes and reads.
pub const VERSION: u8 = 1;
/// AES-GCM nonce length in bytes (96 bits).
pub const NONCE_LEN: usize = 12;
/// AES-GCM authentication tag length in bytes.
pub const TAG_LEN: usize = 16;
/// Header length without the tenant id.
pub const HEADER_LEN: usize = 2 + 1 + 4 + 4 + 1 + NONCE_LEN + 4;
/// Bytes an envelope adds to the canonical plaintext (plus the tenant id).
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Longest tenant id an envelope can name.
pub const MAX_TENANT_LEN: usize = 255;
/// Prefix of the printable form stored in `text` columns.
pub const TEXT_PREFIX: &str = "pgv1:";

const AAD_LABEL: &[u8] = b"pgveil/v1/aad";

/// Which data key (and version) encrypted a value, and for which tenant.
/// Data keys are numbered by the keystore: one `key_id` per table (and
/// tenant), new `version`s on rotation. The tenant is carried in the header
/// so that a reader can decrypt without the row's tenant column (it is still
/// authenticated: the header is in the AAD).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyRef {
    /// Data-key id as numbered by the keystore (one per table, or table and tenant).
    pub key_id: u32,
    /// Version of that data key; rotation adds a new one.
    pub version: u32,
    /// Tenant id the data key belongs to (`None` for a table without tenants).
    pub tenant: Option<String>,
}

impl KeyRef {
    /// The tenant id, borrowed.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "data key {} v{}", self.key_id, self.version)?;
        if let Some(t) = &self.tenant {
            write!(f, " (tenant {t:?})")?;
        }
        Ok(())
    }
}

/// An unwrapped 256-bit data key with its AES-GCM context (key schedule
/// and GHASH table computed once per key, not per value). Zeroized on drop:
/// the raw bytes by `zeroize`, the AES-GCM context by AWS-LC, whose
/// `OPENSSL_free` cleanses every allocation it frees. Never printed.
pub struct DataKey {
    bytes: Zeroizing<[u8; 32]>,
    aead: LessSafeKey,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

impl DataKey {
    /// Length of a data key in bytes (AES-256).
    pub const LEN: usize = 32;

    /// A data key from its 32 raw bytes (an unwrapped key); any other length is refused.
    pub fn from_bytes(b: &[u8]) -> Result<DataKey, CryptoError> {
        let arr: [u8; 32] = b
            .try_into()
            .map_err(|_| CryptoError::InvalidKey("a data key must be 32 bytes"))?;
        let bytes = Zeroizing::new(arr);
        let unbound = UnboundKey::new(&AES_256_GCM, &bytes[..]).expect("32-byte AES key");
        Ok(DataKey {
            bytes,
            aead: LessSafeKey::new(unbound),
        })
    }

    /// A fresh random key from AWS-LC's CSPRNG (seeded from the OS).
    pub fn generate() -> DataKey {
        let mut b = Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(&mut b[..]).expect("AWS-LC CSPRNG failed");
        DataKey::from_bytes(&b[..]).expect("32 bytes")
    }

    /// The raw key, for wrapping by a master-key provider only.
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.bytes
    }
}

/// Nonces come straight from the OS CSPRNG (`getrandom(2)`), fetched in
/// blocks of 4 KiB per thread so that the syscall (about 1 µs here) is paid
/// once per 341 values instead of once per value. Every byte is used once;
/// nonces are public, so holding them in memory before use exposes nothing.
/// pgveil never forks (a forked child would share the unused block).
const NONCE_POOL: usize = NONCE_LEN * 341;

struct NoncePool {
    buf: [u8; NONCE_POOL],
    pos: usize,
}

thread_local! {
    static NONCES: RefCell<NoncePool> = const {
        RefCell::new(NoncePool { buf: [0; NONCE_POOL], pos: NONCE_POOL })
    };
}

/// A fresh 96-bit nonce from the OS CSPRNG.
pub fn fresh_nonce() -> [u8; NONCE_LEN] {
    NONCES.with(|p| {
        let mut p = p.borrow_mut();
        if p.pos == NONCE_POOL {
            getrandom::fill(&mut p.buf).expect("the OS random source (getrandom) failed");
            p.pos = 0;
        }
        let at = p.pos;
        p.pos += NONCE_LEN;
        p.buf[at..at + NONCE_LEN].try_into().unwrap()
    })
}

/// Append `x` with a u32 big-endian length prefix.
pub(crate) fn lp(out: &mut Vec<u8>, x: &[u8]) {
    out.extend_from_slice(&(x.len() as u32).to_be_bytes());
    out.extend_from_slice(x);
}

/// The associated data:
/// `lp("pgveil/v1/aad") || lp(header) || tenant || lp(schema) || lp(table) ||
/// lp(column) || lp(type name)`, where `lp(x)` is `x` prefixed by its u32
/// big-endian length and `tenant` is `0x00` (no tenant) or
/// `0x01 || lp(tenant id)`.
pub fn aad(header: &[u8], ctx: &ColumnContext) -> Vec<u8> {
    let mut a = Vec::with_capacity(
        64 + header.len()
            + ctx.tenant.as_ref().map_or(0, |t| t.len())
            + ctx.schema.len()
            + ctx.table.len()
            + ctx.column.len(),
    );
    lp(&mut a, AAD_LABEL);
    lp(&mut a, header);
    match &ctx.tenant {
        None => a.push(0),
        Some(t) => {
            a.push(1);
            lp(&mut a, t.as_bytes());
        }
    }
    names_into(&mut a, ctx);
    a
}

/// Encrypt a canonical plaintext for `ctx` under `dek` (named `key_ref`).
/// Fails only if `key_ref.tenant` differs from `ctx.tenant` or is empty or
/// longer than 255 bytes, or the value is 4 GiB or more.
pub fn encrypt(
    dek: &DataKey,
    key_ref: &KeyRef,
    ctx: &ColumnContext,
    canonical: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    encrypt_with(dek, key_ref, ctx, canonical, &fresh_nonce())
}

/// [`encrypt`] with a caller-chosen nonce: for test vectors only. Reusing a
/// nonce under one data key breaks confidentiality and authenticity.
#[doc(hidden)]
pub fn encrypt_with(
    dek: &DataKey,
    key_ref: &KeyRef,
    ctx: &ColumnContext,
    canonical: &[u8],
    nonce: &[u8; NONCE_LEN],
) -> Result<Vec<u8>, CryptoError> {
    if key_ref.tenant != ctx.tenant {
        return Err(CryptoError::Malformed(
            "the data key belongs to another tenant than the value",
        ));
    }
    let tenant = key_ref.tenant.as_deref().unwrap_or("").as_bytes();
    if tenant.len() > MAX_TENANT_LEN || key_ref.tenant.as_deref() == Some("") {
        return Err(CryptoError::Malformed(
            "tenant ids must be 1 to 255 bytes long",
        ));
    }
    let n = u32::try_from(canonical.len())
        .map_err(|_| CryptoError::Malformed("values of 4 GiB or more cannot be encrypted"))?;
    let hlen = HEADER_LEN + tenant.len();
    let mut out = Vec::with_capacity(OVERHEAD + tenant.len() + canonical.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&key_ref.key_id.to_be_bytes());
    out.extend_from_slice(&key_ref.version.to_be_bytes());
    out.push(tenant.len() as u8);
    out.extend_from_slice(tenant);
    out.extend_from_slice(nonce);
    out.extend_from_slice(&n.to_be_bytes());
    let aad = aad(&out[..hlen], ctx);
    out.extend_from_slice(canonical);
    let tag = dek
        .aead
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(*nonce),
            Aad::from(&aad[..]),
            &mut out[hlen..],
        )
        .expect("AES-GCM seal");
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// A parsed envelope header, borrowing from the envelope.
#[derive(Debug, Clone, Copy)]
pub struct Header<'a> {
    /// Data-key id as numbered by the keystore (one per table, or table and tenant).
    pub key_id: u32,
    /// Version of that data key.
    pub version: u32,
    /// Tenant id from the header (`None`: table without tenants).
    pub tenant: Option<&'a str>,
    nonce: [u8; NONCE_LEN],
    /// Header bytes (everything before the ciphertext): the AAD covers them.
    header: &'a [u8],
    /// Ciphertext followed by the tag.
    sealed: &'a [u8],
}

impl Header<'_> {
    /// The data key this envelope names, as an owned [`KeyRef`].
    pub fn key_ref(&self) -> KeyRef {
        KeyRef {
            key_id: self.key_id,
            version: self.version,
            tenant: self.tenant.map(str::to_string),
        }
    }
}

/// Parse and check the header: magic, version, tenant id, and that the
/// length field matches the total length. Nothing is authenticated yet.
pub fn parse_header(env: &[u8]) -> Result<Header<'_>, CryptoError> {
    if env.len() < 3 || env[..2] != MAGIC {
        return Err(CryptoError::Malformed("not a pgveil envelope (bad magic)"));
    }
    if env[2] != VERSION {
        return Err(CryptoError::UnsupportedVersion(env[2]));
    }
    if env.len() < OVERHEAD {
        return Err(CryptoError::Malformed("envelope too short"));
    }
    let u32_at = |i: usize| u32::from_be_bytes(env[i..i + 4].try_into().unwrap());
    let t = env[11] as usize;
    if env.len() < OVERHEAD + t {
        return Err(CryptoError::Malformed("envelope too short"));
    }
    let tenant = match t {
        0 => None,
        _ => Some(
            std::str::from_utf8(&env[12..12 + t])
                .map_err(|_| CryptoError::Malformed("tenant id in envelope is not UTF-8"))?,
        ),
    };
    let p = 12 + t;
    let n = u32_at(p + NONCE_LEN) as usize;
    if env.len() != OVERHEAD + t + n {
        return Err(CryptoError::Malformed(
            "envelope length does not match its header",
        ));
    }
    let hlen = HEADER_LEN + t;
    Ok(Header {
        key_id: u32_at(3),
        version: u32_at(7),
        tenant,
        nonce: env[p..p + NONCE_LEN].try_into().unwrap(),
        header: &env[..hlen],
        sealed: &env[hlen..],
    })
}

/// The data key an envelope names (header only; nothing is authenticated
/// until [`decrypt`]).
pub fn peek_key(env: &[u8]) -> Result<KeyRef, CryptoError> {
    parse_header(env).map(|h| h.key_ref())
}

/// True if `bytes` has a well-formed envelope header and matching length.
pub fn is_envelope(bytes: &[u8]) -> bool {
    parse_header(bytes).is_ok()
}

/// Decrypt and authenticate an envelope for `ctx` under `dek`. Fails if
/// any byte was changed, or the value belongs to another column, tenant or
/// type, or `dek` is not the key the header names.
pub fn decrypt(
    dek: &DataKey,
    ctx: &ColumnContext,
    env: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let h = parse_header(env)?;
    let names = aad_names(ctx);
    let mut aad_buf = Vec::with_capacity(32 + h.header.len() + names.len() + 256);
    let mut buf = Zeroizing::new(Vec::with_capacity(h.sealed.len()));
    open_into(
        dek,
        &h,
        ctx.tenant.as_deref(),
        &names,
        &mut aad_buf,
        &mut buf,
    )
    .map_err(|_| CryptoError::DecryptFailed {
        column: format!("{}.{}.{}", ctx.schema, ctx.table, ctx.column),
        key: h.key_ref().to_string(),
    })?;
    Ok(buf)
}

/// The column part of the AAD, `lp(schema) || lp(table) || lp(column) ||
/// lp(type name)`: computed once per result column by readers that decrypt
/// many values of one column ([`open_into`]).
pub fn aad_names(ctx: &ColumnContext) -> Vec<u8> {
    let mut a = Vec::with_capacity(32 + ctx.schema.len() + ctx.table.len() + ctx.column.len());
    names_into(&mut a, ctx);
    a
}

fn names_into(a: &mut Vec<u8>, ctx: &ColumnContext) {
    lp(a, ctx.schema.as_bytes());
    lp(a, ctx.table.as_bytes());
    lp(a, ctx.column.as_bytes());
    lp(a, ctx.ty.name().as_bytes());
}

/// The tag did not verify: wrong key, wrong column/tenant/type, or a
/// changed byte. Callers name the column and key in their own error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unauthentic;

impl fmt::Display for Unauthentic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("authentication failed")
    }
}

impl std::error::Error for Unauthentic {}

/// The allocation-free core of [`decrypt`] for hot loops: opens the
/// envelope whose header is `h` under `dek` for `tenant` and the column
/// described by `names` (from [`aad_names`]), leaving the plaintext in
/// `out` (cleared first). `aad_buf` is scratch space. On failure `out` is
/// empty; the caller names the column and key in its error.
pub fn open_into(
    dek: &DataKey,
    h: &Header<'_>,
    tenant: Option<&str>,
    names: &[u8],
    aad_buf: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<(), Unauthentic> {
    zeroize::Zeroize::zeroize(&mut out[..]);
    out.clear();
    out.extend_from_slice(h.sealed);
    let n = open_in_place(dek, h, tenant, names, aad_buf, &mut out[..])?;
    out.truncate(n);
    Ok(())
}

/// [`open_into`] on a caller-provided buffer that holds a copy of the
/// envelope's ciphertext and tag (`h.sealed`): decrypts in place and returns
/// the plaintext length (the first bytes of `buf`). The tag bytes after the
/// plaintext are zeroed; on failure the whole buffer is.
pub fn open_in_place(
    dek: &DataKey,
    h: &Header<'_>,
    tenant: Option<&str>,
    names: &[u8],
    aad_buf: &mut Vec<u8>,
    buf: &mut [u8],
) -> Result<usize, Unauthentic> {
    aad_buf.clear();
    lp(aad_buf, AAD_LABEL);
    lp(aad_buf, h.header);
    match tenant {
        None => aad_buf.push(0),
        Some(t) => {
            aad_buf.push(1);
            lp(aad_buf, t.as_bytes());
        }
    }
    aad_buf.extend_from_slice(names);
    match dek.aead.open_in_place(
        Nonce::assume_unique_for_key(h.nonce),
        Aad::from(&aad_buf[..]),
        buf,
    ) {
        Ok(pt) => {
            let n = pt.len();
            buf[n..].fill(0);
            Ok(n)
        }
        Err(_) => {
            zeroize::Zeroize::zeroize(buf);
            Err(Unauthentic)
        }
    }
}

/// Ciphertext plus tag of a parsed envelope (what [`open_in_place`] opens).
impl Header<'_> {
    /// Ciphertext followed by the GCM tag.
    pub fn sealed(&self) -> &[u8] {
        self.sealed
    }
}

/// The printable form stored in `text` columns: `pgv1:` + unpadded
/// base64url of the envelope bytes.
pub fn to_text(env: &[u8]) -> String {
    let mut s = String::with_capacity(TEXT_PREFIX.len() + env.len().div_ceil(3) * 4);
    s.push_str(TEXT_PREFIX);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(env, &mut s);
    s
}

/// Inverse of [`to_text`]; `None` unless the prefix is present, the base64
/// is valid and the bytes are a well-formed envelope.
pub fn from_text(s: &str) -> Option<Vec<u8>> {
    let b64 = s.strip_prefix(TEXT_PREFIX)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64)
        .ok()?;
    is_envelope(&bytes).then_some(bytes)
}

/// True if a `text` column value is a stored envelope.
pub fn is_text_envelope(s: &str) -> bool {
    from_text(s).is_some()
}
