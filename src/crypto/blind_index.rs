//! Blind indexes: HMAC-SHA256 of the normalised canonical plaintext under a
//! per-column key.
//!
//! ```text
//! PRK        = HKDF-Extract(salt = "pgveil/v1/blind-index", IKM = root key)
//! column key = HKDF-Expand(PRK, lp(schema) || lp(table) || lp(column), 32)
//! index      = HMAC-SHA256(column key, lp(type family) || input)
//! ```
//!
//! `lp(x)` is `x` with a u32 big-endian length prefix. The type family is
//! the type name, except that `text` and `varchar` are both `text`. `input`:
//! - text, varchar: the value after the policy's normalisers, in order;
//! - other types without normalisers: [`canonical::index_form`] (the
//!   canonical bytes; numeric with trailing fractional zeros removed so that
//!   `1.5` and `1.50` match as they do in PostgreSQL);
//! - other types with normalisers: the normalisers applied to the text
//!   rendering of the index form (e.g. `digits_only` on a numeric).
//!
//! The key does not depend on the tenant, so a lookup needs no tenant
//! predicate; the price is that equal values of one column are linkable
//! across tenants (see docs/crypto.md).

use std::fmt;

use aws_lc_rs::{hkdf, hmac};
use zeroize::Zeroizing;

use super::canonical::{self, Format};
use super::envelope::lp;
use super::{CryptoError, Normalizer, PgType, ct_eq};

const PRK_SALT: &[u8] = b"pgveil/v1/blind-index";

/// The root blind-index secret (`keys.blind_index_key`).
pub struct BlindIndexRoot {
    prk: hkdf::Prk,
}

impl fmt::Debug for BlindIndexRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlindIndexRoot(<redacted>)")
    }
}

impl BlindIndexRoot {
    /// At least 32 bytes of secret.
    pub fn from_bytes(b: &[u8]) -> Result<BlindIndexRoot, CryptoError> {
        if b.len() < 32 {
            return Err(CryptoError::InvalidKey(
                "the blind-index key must be at least 32 bytes (64 hex digits); generate one with `pgveil keys generate`",
            ));
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, PRK_SALT).extract(b);
        Ok(BlindIndexRoot { prk })
    }

    /// From hex text (surrounding whitespace ignored), as stored in the
    /// environment variable or file the config names.
    pub fn from_hex(s: &str) -> Result<BlindIndexRoot, CryptoError> {
        let b = Zeroizing::new(
            hex::decode(s.trim())
                .map_err(|_| CryptoError::InvalidKey("the blind-index key is not valid hex"))?,
        );
        BlindIndexRoot::from_bytes(&b)
    }

    /// The key of one column (`schema.table.column`, names as in the policy).
    pub fn column_key(&self, schema: &str, table: &str, column: &str) -> BlindIndexKey {
        let mut info = Vec::new();
        lp(&mut info, schema.as_bytes());
        lp(&mut info, table.as_bytes());
        lp(&mut info, column.as_bytes());
        let mut k = Zeroizing::new([0u8; 32]);
        self.prk
            .expand(&[&info], hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut k[..]))
            .expect("HKDF-Expand of 32 bytes");
        BlindIndexKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, &k[..]),
        }
    }
}

/// A per-column blind-index key. Cheap to clone; never printed.
#[derive(Clone)]
pub struct BlindIndexKey {
    key: hmac::Key,
}

impl fmt::Debug for BlindIndexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlindIndexKey(<redacted>)")
    }
}

fn family(ty: PgType) -> &'static str {
    match ty {
        PgType::Text | PgType::Varchar => "text",
        t => t.name(),
    }
}

/// Apply normalisers in order.
pub fn normalize(normalizers: &[Normalizer], s: &str) -> Zeroizing<String> {
    let mut cur = Zeroizing::new(s.to_string());
    for n in normalizers {
        cur = Zeroizing::new(n.apply(&cur));
    }
    cur
}

impl BlindIndexKey {
    /// The 32-byte index of a canonical value (see the module docs).
    pub fn compute(&self, ty: PgType, normalizers: &[Normalizer], canonical: &[u8]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        let mut head = Vec::with_capacity(16);
        lp(&mut head, family(ty).as_bytes());
        ctx.update(&head);
        let form = canonical::index_form(ty, canonical);
        if normalizers.is_empty() {
            ctx.update(&form);
        } else {
            let text: Zeroizing<Vec<u8>> = match ty {
                PgType::Text | PgType::Varchar => Zeroizing::new(form.to_vec()),
                _ => match canonical::render(ty, Format::Text, &form) {
                    Ok(t) => Zeroizing::new(t),
                    Err(_) => Zeroizing::new(form.to_vec()),
                },
            };
            match std::str::from_utf8(&text) {
                Ok(s) => ctx.update(normalize(normalizers, s).as_bytes()),
                Err(_) => ctx.update(&text),
            }
        }
        let tag = ctx.sign();
        tag.as_ref().try_into().expect("SHA-256 tag is 32 bytes")
    }

    /// Constant-time check of a stored index against a value.
    pub fn matches(
        &self,
        ty: PgType,
        normalizers: &[Normalizer],
        canonical: &[u8],
        stored: &[u8],
    ) -> bool {
        ct_eq(&self.compute(ty, normalizers, canonical), stored)
    }
}
