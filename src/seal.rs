//! The bridge between wire values and the crypto core: canonicalise what a
//! client sent, encrypt it for a column, compute blind indexes, and turn
//! stored ciphertext back into what the client asked for.
//!
//! A value goes from what was sent ([`Sent`]: a Bind parameter, SQL or
//! COPY text, canonical plaintext) to what is stored in one call, so that
//! every path canonicalises it the same way before it is encrypted or
//! indexed: [`ValueCrypto::seal`] (in the [`Form`] the caller sends),
//! [`ValueCrypto::seal_literal`] (an SQL literal), [`ValueCrypto::index`]
//! (a blind index).
//!
//! Errors never carry values: only column names, types and formats.
//!
//! Shared by the session layer (`session::values` re-exports it) and the ops
//! commands, so it sits below both: it uses only `crypto`, `keys`, `policy`
//! and `sql`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use zeroize::Zeroizing;

use crate::crypto::blind_index::{BlindIndexKey, BlindIndexRoot};
use crate::crypto::canonical::{self, Format};
use crate::crypto::envelope;
use crate::crypto::{ColumnContext, Storage};
use crate::keys::KeyManager;
use crate::policy::catalog::ProtectedAttr;
use crate::sql::ColumnRef;

/// Why a value could not be sealed, checked or opened: column names, types
/// and formats, never the value.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("pgveil: value for {column} is not a valid {ty} in {format} format")]
    Invalid {
        column: String,
        ty: &'static str,
        format: &'static str,
    },
    #[error(
        "pgveil: value for {column} is not a pgveil envelope: this role may only copy existing ciphertext into it (ask the security team for write access in the policy)"
    )]
    NotEnvelope { column: String },
    #[error("pgveil: cannot decrypt {column}: {reason}")]
    Decrypt { column: String, reason: String },
    #[error("pgveil: cannot encrypt {column}: {reason}")]
    Encrypt { column: String, reason: String },
    #[error("pgveil: {column} has a blind index but keys.blind_index_key is not configured")]
    NoBlindIndexKey { column: String },
}

impl ValueError {
    /// SQLSTATE for the client.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ValueError::Invalid { .. } => "22P02",
            ValueError::NotEnvelope { .. } => "42501",
            ValueError::Decrypt { .. } => "39000",
            ValueError::Encrypt { .. } | ValueError::NoBlindIndexKey { .. } => "58000",
        }
    }
}

fn fmt_name(f: i16) -> &'static str {
    if f == 1 { "binary" } else { "text" }
}

fn format_of(f: i16) -> Format {
    if f == 1 { Format::Binary } else { Format::Text }
}

/// A value as it was sent, for [`ValueCrypto::seal`] and
/// [`ValueCrypto::index`] to canonicalise.
#[derive(Debug, Clone, Copy)]
pub enum Sent<'a> {
    /// A Bind parameter in `format` (0 text, 1 binary), of the type the
    /// client declared at Parse (0: none; see
    /// [`ValueCrypto::canonical_param`]).
    Param {
        declared: u32,
        format: i16,
        value: &'a [u8],
    },
    /// Text with no declared type: an SQL literal's value, a COPY field.
    Text(&'a [u8]),
    /// Plaintext already canonical (backfill, rotation).
    Canonical(&'a [u8]),
}

/// Canonical plaintext: made from a value as sent (zeroized when dropped),
/// or given canonical by the caller.
enum Canon<'a> {
    Made(Zeroizing<Vec<u8>>),
    Given(&'a [u8]),
}

impl std::ops::Deref for Canon<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Canon::Made(c) => c,
            Canon::Given(c) => c,
        }
    }
}

/// The form [`ValueCrypto::seal`] returns a sealed value in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// The envelope itself (for array literals, which write their own).
    Envelope,
    /// The stored form as a binary wire value: a Bind parameter, a
    /// backfilled value.
    Binary,
    /// The stored form as text (`\x…` hex for `bytea`, the envelope's text
    /// form for `text`): a COPY field, before COPY's own escaping.
    Text,
}

/// Canonicalise, encrypt, blind-index and decrypt the values of protected
/// columns (one per engine; blind-index keys cached per column).
pub struct ValueCrypto {
    pub keys: KeyManager,
    bidx_root: Option<BlindIndexRoot>,
    bidx_keys: Mutex<HashMap<(ColumnRef, bool), Arc<BlindIndexKey>>>,
}

impl ValueCrypto {
    /// Values sealed with data keys from `keys`, blind indexes derived from `bidx_root` (`None`: no blind index can be computed).
    pub fn new(keys: KeyManager, bidx_root: Option<BlindIndexRoot>) -> ValueCrypto {
        ValueCrypto {
            keys,
            bidx_root,
            bidx_keys: Mutex::new(HashMap::new()),
        }
    }

    fn context(attr: &ProtectedAttr, tenant: Option<&str>) -> ColumnContext {
        ColumnContext {
            schema: attr.column.schema.clone(),
            table: attr.column.table.clone(),
            column: attr.column.column.clone(),
            ty: attr.policy.ty,
            tenant: tenant.map(str::to_string),
        }
    }

    /// Canonical plaintext of a client value sent in `format`.
    pub fn canonical(
        &self,
        attr: &ProtectedAttr,
        format: i16,
        wire: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, ValueError> {
        canonical::canonicalize(attr.policy.ty, format_of(format), wire).map_err(|_| {
            ValueError::Invalid {
                column: attr.column.to_string(),
                ty: attr.policy.ty.name(),
                format: fmt_name(format),
            }
        })
    }

    /// Canonical plaintext of a parameter the client declared as `declared`
    /// (an OID from Parse, 0 = unspecified). A value of another type than
    /// the policy's (psycopg sends small ints as int2, for instance) is
    /// converted through its text form, as PostgreSQL's own cast would.
    pub fn canonical_param(
        &self,
        attr: &ProtectedAttr,
        declared: u32,
        format: i16,
        wire: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, ValueError> {
        match crate::crypto::PgType::from_oid(declared) {
            Some(dt) if dt != attr.policy.ty => {
                let invalid = || ValueError::Invalid {
                    column: attr.column.to_string(),
                    ty: attr.policy.ty.name(),
                    format: fmt_name(format),
                };
                let c =
                    canonical::canonicalize(dt, format_of(format), wire).map_err(|_| invalid())?;
                let text = canonical::render(dt, Format::Text, &c).map_err(|_| invalid())?;
                let text = Zeroizing::new(text);
                self.canonical(attr, 0, &text)
            }
            _ => self.canonical(attr, format, wire),
        }
    }

    /// Encrypt canonical plaintext for `attr`; returns the envelope bytes.
    /// The tenant id (as the client wrote it: literal, text or binary
    /// parameter, COPY field) is first put in the canonical text form of the
    /// tenant column's type, the form PostgreSQL stores and shows, so that
    /// every spelling of one tenant selects the same key.
    pub async fn encrypt(
        &self,
        attr: &ProtectedAttr,
        tenant: Option<&str>,
        canonical: &[u8],
    ) -> Result<Vec<u8>, ValueError> {
        let tenant =
            match tenant {
                Some(t) => Some(canonical_tenant(attr.tenant_type.as_deref(), t).ok_or_else(
                    || ValueError::Invalid {
                        column: format!(
                            "the tenant column {} of {}.{}",
                            attr.tenant.as_deref().unwrap_or("?"),
                            attr.column.schema,
                            attr.column.table
                        ),
                        ty: "tenant id",
                        format: "text",
                    },
                )?),
                None => None,
            };
        let ctx = Self::context(attr, tenant.as_deref());
        let (key_ref, dek) =
            self.keys
                .encryption_key(&ctx)
                .await
                .map_err(|e| ValueError::Encrypt {
                    column: attr.column.to_string(),
                    reason: e.to_string(),
                })?;
        let started = crate::metrics::sample_value().then(std::time::Instant::now);
        let env = envelope::encrypt(&dek, &key_ref, &ctx, canonical).map_err(|e| {
            ValueError::Encrypt {
                column: attr.column.to_string(),
                reason: e.to_string(),
            }
        })?;
        let hot = crate::metrics::hot();
        if let Some(t) = started {
            hot.encrypt_seconds.record(t.elapsed().as_secs_f64());
        }
        hot.values_encrypted.increment(1);
        Ok(env)
    }

    /// A value as sent, canonicalised and encrypted for `attr`, in the form
    /// `form`.
    pub async fn seal(
        &self,
        attr: &ProtectedAttr,
        tenant: Option<&str>,
        sent: Sent<'_>,
        form: Form,
    ) -> Result<Vec<u8>, ValueError> {
        let canonical = self.canonical_sent(attr, sent)?;
        let env = self.encrypt(attr, tenant, &canonical).await?;
        Ok(match form {
            Form::Envelope => env,
            Form::Binary => envelope_to_stored_binary(attr.storage, &env),
            Form::Text => stored_text(attr.storage, &env).into_bytes(),
        })
    }

    /// An SQL literal's value sealed for `attr`: the SQL literal of its
    /// stored form ([`envelope_literal`]).
    pub async fn seal_literal(
        &self,
        attr: &ProtectedAttr,
        tenant: Option<&str>,
        literal: &str,
    ) -> Result<String, ValueError> {
        let sent = Sent::Text(literal.as_bytes());
        let env = self.seal(attr, tenant, sent, Form::Envelope).await?;
        Ok(envelope_literal(attr.storage, &env))
    }

    /// The blind index of a value as sent, under the column's current (or
    /// `next`) key.
    pub fn index(
        &self,
        attr: &ProtectedAttr,
        next: bool,
        sent: Sent<'_>,
    ) -> Result<[u8; 32], ValueError> {
        let canonical = self.canonical_sent(attr, sent)?;
        self.blind_index(attr, next, &canonical)
    }

    /// The canonical plaintext of a value as sent: a parameter as
    /// [`canonical_param`](Self::canonical_param) reads it, text as
    /// [`canonical`](Self::canonical) does, canonical plaintext as it is.
    fn canonical_sent<'a>(
        &self,
        attr: &ProtectedAttr,
        sent: Sent<'a>,
    ) -> Result<Canon<'a>, ValueError> {
        Ok(match sent {
            Sent::Param {
                declared,
                format,
                value,
            } => Canon::Made(self.canonical_param(attr, declared, format, value)?),
            Sent::Text(text) => Canon::Made(self.canonical(attr, 0, text)?),
            Sent::Canonical(canonical) => Canon::Given(canonical),
        })
    }

    /// Blind index of canonical plaintext under the column's current (or
    /// `next`) key.
    pub fn blind_index(
        &self,
        attr: &ProtectedAttr,
        next: bool,
        canonical: &[u8],
    ) -> Result<[u8; 32], ValueError> {
        let Some(bidx) = &attr.policy.blind_index else {
            return Err(ValueError::NoBlindIndexKey {
                column: attr.column.to_string(),
            });
        };
        let key = self.bidx_key(attr, next)?;
        Ok(key.compute(attr.policy.ty, &bidx.normalize, canonical))
    }

    fn bidx_key(&self, attr: &ProtectedAttr, next: bool) -> Result<Arc<BlindIndexKey>, ValueError> {
        let Some(root) = &self.bidx_root else {
            return Err(ValueError::NoBlindIndexKey {
                column: attr.column.to_string(),
            });
        };
        // The key is derived from the name of the column that stores the
        // index, so a `next` index column gets its own key and keeps it when
        // it is promoted to `column:` at the end of a rotation.
        let bidx = attr
            .policy
            .blind_index
            .as_ref()
            .ok_or_else(|| ValueError::NoBlindIndexKey {
                column: attr.column.to_string(),
            })?;
        let index_column = match (next, &bidx.next) {
            (true, Some(n)) => n.as_str(),
            (true, None) => {
                return Err(ValueError::Encrypt {
                    column: attr.column.to_string(),
                    reason: "no blind_index.next column is configured".into(),
                });
            }
            (false, _) => bidx.column.as_str(),
        };
        let mut cache = self.bidx_keys.lock().expect("bidx cache");
        let k = cache
            .entry((attr.column.clone(), next))
            .or_insert_with(|| {
                let c = &attr.column;
                Arc::new(root.column_key(&c.schema, &c.table, index_column))
            })
            .clone();
        Ok(k)
    }

    /// Decrypt a stored value (as the server sent it, in `format`) to
    /// canonical plaintext.
    /// `row_tenant`: the tenant id of the row the value was read from, when
    /// the result carries the tenant column; the envelope must then be bound
    /// to that tenant. Without it, the envelope's own tenant is used.
    pub async fn decrypt_stored(
        &self,
        attr: &ProtectedAttr,
        format: i16,
        stored: &[u8],
        row_tenant: Option<&str>,
    ) -> Result<Zeroizing<Vec<u8>>, ValueError> {
        let err = |reason: String| ValueError::Decrypt {
            column: attr.column.to_string(),
            reason,
        };
        let env = stored_to_envelope(attr.storage, format, stored)
            .ok_or_else(|| err("the stored value is not a pgveil envelope (run `pgveil encrypt` to backfill plaintext)".into()))?;
        let key_ref = envelope::peek_key(&env).map_err(|e| err(e.to_string()))?;
        let dek = self
            .keys
            .decryption_key(&key_ref)
            .await
            .map_err(|e| err(e.to_string()))?;
        let tenant = aad_tenant(attr, row_tenant, key_ref.tenant());
        let ctx = Self::context(attr, tenant);
        let started = crate::metrics::sample_value().then(std::time::Instant::now);
        let pt = envelope::decrypt(&dek, &ctx, &env).map_err(|e| err(e.to_string()))?;
        let hot = crate::metrics::hot();
        if let Some(t) = started {
            hot.decrypt_seconds.record(t.elapsed().as_secs_f64());
        }
        hot.values_decrypted.increment(1);
        Ok(pt)
    }

    /// What PostgreSQL would send for the plaintext in `format`.
    pub fn render(
        &self,
        attr: &ProtectedAttr,
        format: i16,
        canonical: &[u8],
    ) -> Result<Vec<u8>, ValueError> {
        canonical::render(attr.policy.ty, format_of(format), canonical).map_err(|e| {
            ValueError::Decrypt {
                column: attr.column.to_string(),
                reason: e.to_string(),
            }
        })
    }
}

/// The envelope inside a stored value as it appears on the wire.
pub fn stored_to_envelope(storage: Storage, format: i16, stored: &[u8]) -> Option<Vec<u8>> {
    let env = match (storage, format) {
        (Storage::Bytea, 1) => stored.to_vec(),
        (Storage::Bytea, _) => decode_bytea_text(stored)?,
        (Storage::Text, _) => envelope::from_text(std::str::from_utf8(stored).ok()?)?,
    };
    envelope::is_envelope(&env).then_some(env)
}

/// The stored form of an envelope in binary wire format (what a Bind
/// parameter with format 1 carries).
pub fn envelope_to_stored_binary(storage: Storage, env: &[u8]) -> Vec<u8> {
    match storage {
        Storage::Bytea => env.to_vec(),
        Storage::Text => envelope::to_text(env).into_bytes(),
    }
}

/// An SQL literal for an envelope stored in `storage`.
pub fn envelope_literal(storage: Storage, env: &[u8]) -> String {
    match storage {
        Storage::Bytea => bytea_literal(env),
        Storage::Text => format!("'{}'", envelope::to_text(env)),
    }
}

/// An SQL array literal of stored values (envelopes, or blind indexes
/// for `Storage::Bytea`): `E'{"\\\\x…",NULL}'::bytea[]` or
/// `E'{"pgv1:…"}'::text[]`. An escape string for the same reason as
/// [`bytea_literal`].
pub fn array_literal(storage: Storage, items: &[Option<Vec<u8>>]) -> String {
    let elems: Vec<Option<String>> = items
        .iter()
        .map(|it| it.as_ref().map(|b| stored_text(storage, b)))
        .collect();
    let body = crate::sql::array::render_text(&elems)
        .replace('\\', "\\\\")
        .replace('\'', "''");
    let ty = match storage {
        Storage::Bytea => "bytea",
        Storage::Text => "text",
    };
    format!("E'{body}'::{ty}[]")
}

/// The text form of a value stored in `storage` (an envelope, or a blind
/// index for `Storage::Bytea`): `\x…` hex for `bytea`, the envelope's text
/// form for `text`.
fn stored_text(storage: Storage, b: &[u8]) -> String {
    match storage {
        Storage::Bytea => format!("\\x{}", hex::encode(b)),
        Storage::Text => envelope::to_text(b),
    }
}

/// `E'\\x…'::bytea`.
/// An escape-string literal, so that it reads the same whatever the
/// session's `standard_conforming_strings` (a plain `'\x…'` would be read as
/// a hex escape with it off, corrupting the value).
pub fn bytea_literal(b: &[u8]) -> String {
    format!("E'\\\\x{}'::bytea", hex::encode(b))
}

/// Decode hex digits into `out` (cleared first). bytea's text output is the
/// bulk of what a decrypting read parses, so this uses `faster-hex` (SIMD,
/// chosen at run time) rather than a byte-at-a-time loop. False on an odd
/// length or a non-hex byte.
pub fn decode_hex_into(hex: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    if !hex.len().is_multiple_of(2) {
        return false;
    }
    out.resize(hex.len() / 2, 0);
    faster_hex::hex_decode(hex, out).is_ok()
}

/// bytea text output (`\x…` hex or the legacy escape format) → bytes.
pub fn decode_bytea_text(s: &[u8]) -> Option<Vec<u8>> {
    if let Some(h) = s.strip_prefix(b"\\x") {
        let mut out = Vec::new();
        return decode_hex_into(h, &mut out).then_some(out);
    }
    // Escape format: `\\` and `\ooo` octal.
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' {
            if s.get(i + 1) == Some(&b'\\') {
                out.push(b'\\');
                i += 2;
            } else {
                let oct = s.get(i + 1..i + 4)?;
                let v = u8::from_str_radix(std::str::from_utf8(oct).ok()?, 8).ok()?;
                out.push(v);
                i += 4;
            }
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The canonical text form of tenant id `v` for a tenant column of SQL
/// type `ty` (`format_type`): what PostgreSQL would store and print for it.
/// Integers lose signs, spaces and leading zeros (`' +042'` → `42`), UUIDs
/// become lower-case hyphenated; other types are kept as written. `None`
/// when PostgreSQL would reject the value for that type.
pub fn canonical_tenant(ty: Option<&str>, v: &str) -> Option<String> {
    let int = |min: i128, max: i128| -> Option<String> {
        let t = v.trim_matches(|c: char| c.is_ascii_whitespace());
        let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: i128 = t.parse().ok()?;
        (min..=max).contains(&n).then(|| n.to_string())
    };
    match ty {
        Some("smallint") => int(i16::MIN.into(), i16::MAX.into()),
        Some("integer") => int(i32::MIN.into(), i32::MAX.into()),
        Some("bigint") => int(i64::MIN.into(), i64::MAX.into()),
        Some("uuid") => {
            let c = crate::crypto::canonical::canonicalize(
                crate::crypto::PgType::Uuid,
                Format::Text,
                v.as_bytes(),
            )
            .ok()?;
            Some(crate::crypto::canonical::format_uuid(
                c.as_slice().try_into().ok()?,
            ))
        }
        _ => Some(v.to_string()),
    }
}

/// The tenant to bind a stored envelope to when decrypting: the row's
/// tenant when the result carries it, else the envelope's own. An envelope
/// written before tenant ids were canonicalised names its tenant as the
/// client spelled it (`042`): when that is the row's tenant in another
/// spelling, the envelope's spelling is what it was bound to.
pub fn aad_tenant<'a>(
    attr: &ProtectedAttr,
    row: Option<&'a str>,
    envelope: Option<&'a str>,
) -> Option<&'a str> {
    match (row, envelope) {
        (Some(r), Some(e))
            if r != e && canonical_tenant(attr.tenant_type.as_deref(), e).as_deref() == Some(r) =>
        {
            Some(e)
        }
        (Some(r), _) => Some(r),
        (None, e) => e,
    }
}

/// Whether two tenant ids as stored in the keystore name the same tenant of
/// an integer or UUID tenant column (`042` and `42`): `pgveil shred` must
/// destroy the keys of every spelling.
pub fn same_tenant_spelling(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    ["bigint", "uuid"].iter().any(|ty| {
        let (x, y) = (canonical_tenant(Some(ty), a), canonical_tenant(Some(ty), b));
        x.is_some() && x == y
    })
}

/// The text form of a tenant id sent in binary format.
pub fn binary_tenant(ty: &str, v: &[u8]) -> Option<String> {
    Some(match ty {
        "smallint" => i16::from_be_bytes(v.try_into().ok()?).to_string(),
        "integer" => i32::from_be_bytes(v.try_into().ok()?).to_string(),
        "bigint" => i64::from_be_bytes(v.try_into().ok()?).to_string(),
        "uuid" => crate::crypto::canonical::format_uuid(v.try_into().ok()?),
        _ => String::from_utf8(v.to_vec()).ok()?,
    })
}

#[cfg(test)]
mod tests;
