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
//!   12+t    16  salt (random) for the per-value key
//!   28+t    12  nonce (random)
//!   40+t     4  ciphertext length n, u32 big-endian
//!   44+t     n  ciphertext
//! 44+t+n    16  GCM tag
//! ```
//!
//! Per-value key: `K_v = HKDF-Expand(PRK, "pgveil/v1/value-key" || salt, 32)`
//! with `PRK = HKDF-Extract(salt = "pgveil/v1/envelope", IKM = data key)`
//! (computed once per data key). AES-256-GCM under `K_v` with the random
//! nonce and the associated data described at [`aad`]. The whole header
//! (44 + t bytes) is in the AAD. See docs/crypto.md for the rationale and vectors.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::hmac;
use base64::Engine;
use zeroize::Zeroizing;

use super::{ColumnContext, CryptoError};

pub const MAGIC: [u8; 2] = *b"pv";
pub const VERSION: u8 = 1;
pub const SALT_LEN: usize = 16;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// Header length without the tenant id.
pub const HEADER_LEN: usize = 2 + 1 + 4 + 4 + 1 + SALT_LEN + NONCE_LEN + 4;
/// Bytes an envelope adds to the canonical plaintext (plus the tenant id).
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Longest tenant id an envelope can name.
pub const MAX_TENANT_LEN: usize = 255;
/// Prefix of the printable form stored in `text` columns.
pub const TEXT_PREFIX: &str = "pgv1:";

const PRK_SALT: &[u8] = b"pgveil/v1/envelope";
const VALUE_KEY_INFO: &[u8] = b"pgveil/v1/value-key";
const AAD_LABEL: &[u8] = b"pgveil/v1/aad";

/// Which data key (and version) encrypted a value, and for which tenant.
/// Data keys are numbered by the keystore: one `key_id` per table (and
/// tenant), new `version`s on rotation. The tenant is carried in the header
/// so that a reader can decrypt without the row's tenant column (it is still
/// authenticated: the header is in the AAD).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyRef {
    pub key_id: u32,
    pub version: u32,
    pub tenant: Option<String>,
}

impl KeyRef {
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

/// An unwrapped 256-bit data key. Zeroized on drop (the raw bytes by
/// `zeroize`, the derived HMAC state by AWS-LC's cleanup); never printed.
pub struct DataKey {
    bytes: Zeroizing<[u8; 32]>,
    /// HMAC keyed with the PRK: per-value key derivation is one HMAC.
    value_kdf: hmac::Key,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

impl DataKey {
    pub const LEN: usize = 32;

    pub fn from_bytes(b: &[u8]) -> Result<DataKey, CryptoError> {
        let arr: [u8; 32] = b
            .try_into()
            .map_err(|_| CryptoError::InvalidKey("a data key must be 32 bytes"))?;
        let bytes = Zeroizing::new(arr);
        let mut prk_bytes = Zeroizing::new([0u8; 32]);
        hmac::sign_to_buffer(
            &hmac::Key::new(hmac::HMAC_SHA256, PRK_SALT),
            &bytes[..],
            &mut prk_bytes[..],
        )
        .expect("HMAC-SHA256");
        let value_kdf = hmac::Key::new(hmac::HMAC_SHA256, &prk_bytes[..]);
        Ok(DataKey { bytes, value_kdf })
    }

    /// A fresh random key from AWS-LC's CSPRNG (seeded from the OS).
    pub fn generate() -> DataKey {
        let mut b = Zeroizing::new([0u8; 32]);
        fill_random(&mut b[..]);
        DataKey::from_bytes(&b[..]).expect("32 bytes")
    }

    /// The raw key, for wrapping by a master-key provider only.
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.bytes
    }

    #[cfg(test)]
    pub(crate) fn value_key_bytes(&self, salt: &[u8; SALT_LEN]) -> [u8; 32] {
        *self.value_key_material(salt)
    }

    fn value_key_material(&self, salt: &[u8; SALT_LEN]) -> Zeroizing<[u8; 32]> {
        // HKDF-Expand(PRK, info, 32) = HMAC(PRK, info || 0x01) (one block).
        let mut info = [0u8; VALUE_KEY_INFO.len() + SALT_LEN + 1];
        info[..VALUE_KEY_INFO.len()].copy_from_slice(VALUE_KEY_INFO);
        info[VALUE_KEY_INFO.len()..VALUE_KEY_INFO.len() + SALT_LEN].copy_from_slice(salt);
        info[VALUE_KEY_INFO.len() + SALT_LEN] = 1;
        let mut okm = Zeroizing::new([0u8; 32]);
        hmac::sign_to_buffer(&self.value_kdf, &info, &mut okm[..]).expect("HMAC-SHA256");
        okm
    }

    fn value_key(&self, salt: &[u8; SALT_LEN]) -> LessSafeKey {
        let okm = self.value_key_material(salt);
        let unbound = UnboundKey::new(&AES_256_GCM, &okm[..]).expect("32-byte AES key");
        LessSafeKey::new(unbound)
    }
}

fn fill_random(b: &mut [u8]) {
    aws_lc_rs::rand::fill(b).expect("AWS-LC CSPRNG failed");
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
        64 + header.len() + ctx.schema.len() + ctx.table.len() + ctx.column.len(),
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
    lp(&mut a, ctx.schema.as_bytes());
    lp(&mut a, ctx.table.as_bytes());
    lp(&mut a, ctx.column.as_bytes());
    lp(&mut a, ctx.ty.name().as_bytes());
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
    let mut rnd = [0u8; SALT_LEN + NONCE_LEN];
    // ChaCha12 CSPRNG seeded from the OS (getrandom) and reseeded every
    // 64 KiB of output: a getrandom syscall per value costs ~1 µs here.
    rand::Rng::fill_bytes(&mut rand::rng(), &mut rnd);
    let salt: [u8; SALT_LEN] = rnd[..SALT_LEN].try_into().unwrap();
    let nonce: [u8; NONCE_LEN] = rnd[SALT_LEN..].try_into().unwrap();
    encrypt_with(dek, key_ref, ctx, canonical, &salt, &nonce)
}

/// [`encrypt`] with caller-chosen salt and nonce: for test vectors only.
/// Reusing a (salt, nonce) pair under one data key breaks confidentiality.
#[doc(hidden)]
pub fn encrypt_with(
    dek: &DataKey,
    key_ref: &KeyRef,
    ctx: &ColumnContext,
    canonical: &[u8],
    salt: &[u8; SALT_LEN],
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
    out.extend_from_slice(salt);
    out.extend_from_slice(nonce);
    out.extend_from_slice(&n.to_be_bytes());
    let aad = aad(&out[..hlen], ctx);
    out.extend_from_slice(canonical);
    let key = dek.value_key(salt);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(*nonce),
            Aad::from(&aad[..]),
            &mut out[hlen..],
        )
        .expect("AES-GCM seal");
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

struct Header<'a> {
    key_id: u32,
    version: u32,
    tenant: Option<&'a str>,
    salt: [u8; SALT_LEN],
    nonce: [u8; NONCE_LEN],
    len: usize,
}

impl Header<'_> {
    fn key_ref(&self) -> KeyRef {
        KeyRef {
            key_id: self.key_id,
            version: self.version,
            tenant: self.tenant.map(str::to_string),
        }
    }
}

/// Parse and check the header: magic, version, tenant id, and that the
/// length field matches the total length.
fn parse_header(env: &[u8]) -> Result<Header<'_>, CryptoError> {
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
    let n = u32_at(p + SALT_LEN + NONCE_LEN) as usize;
    if env.len() != OVERHEAD + t + n {
        return Err(CryptoError::Malformed(
            "envelope length does not match its header",
        ));
    }
    Ok(Header {
        key_id: u32_at(3),
        version: u32_at(7),
        tenant,
        salt: env[p..p + SALT_LEN].try_into().unwrap(),
        nonce: env[p + SALT_LEN..p + SALT_LEN + NONCE_LEN]
            .try_into()
            .unwrap(),
        len: n,
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
    let hlen = env.len() - h.len - TAG_LEN;
    let aad = aad(&env[..hlen], ctx);
    let mut buf = Zeroizing::new(env[hlen..].to_vec());
    let key = dek.value_key(&h.salt);
    let fail = || CryptoError::DecryptFailed {
        column: format!("{}.{}.{}", ctx.schema, ctx.table, ctx.column),
        key: h.key_ref().to_string(),
    };
    let plain_len = key
        .open_in_place(
            Nonce::assume_unique_for_key(h.nonce),
            Aad::from(&aad[..]),
            &mut buf[..],
        )
        .map_err(|_| fail())?
        .len();
    buf.truncate(plain_len);
    Ok(buf)
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
