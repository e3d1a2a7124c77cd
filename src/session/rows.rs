//! DataRow decryption, the bulk-read hot path: one server DataRow in, one
//! client DataRow out, with no allocation per value.
//!
//! Per row: the field offsets are read in place, protected fields are
//! decoded (bytea hex / base64) into a scratch buffer, their header parsed
//! without copying, the data key found in a small session-local cache (the
//! shared [`crate::keys::KeyManager`] is asked once per key and statement),
//! the AAD assembled from the column part prebuilt per result column
//! ([`Decrypt::aad_names`]), and the plaintext opened into a scratch buffer
//! that is wiped after every row. Everything else is copied as it came.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, BytesMut};
use zeroize::Zeroize;

use super::{CatalogEntry, Decrypt};
use crate::crypto::canonical::{self, Format};
use crate::crypto::envelope::{self, DataKey, KeyRef};
use crate::crypto::{PgType, Storage};
use crate::seal::{ValueCrypto, ValueError, binary_tenant, decode_hex_into};
use crate::sql::ColumnRef;

/// A data key this session already resolved through the key manager
/// (which checked its tenant scope).
struct LocalKey {
    key_id: u32,
    version: u32,
    tenant: Option<String>,
    dek: Arc<DataKey>,
}

/// Values decrypted between two refreshes of the local key list: bounds how
/// long a long-running read keeps using a key after `keys.cache_ttl` (or a
/// shred) retired it in the shared cache.
const KEY_REFRESH_VALUES: u32 = 4096;

/// Decrypts the protected fields of rows in place, reusing its buffers and the keys it looked up for the statement.
#[derive(Default)]
pub struct RowDecryptor {
    fields: Vec<(usize, i32)>,
    env: Vec<u8>,
    aad: Vec<u8>,
    plain: Vec<u8>,
    keys: Vec<LocalKey>,
    rows: u64,
    since_refresh: u32,
    /// Values decrypted since the last [`RowDecryptor::flush_metrics`].
    values: u64,
}

/// Why a row could not be decrypted: the failing column and the error.
pub struct RowError {
    pub column: String,
    pub error: ValueError,
}

impl RowDecryptor {
    /// Forget the session's keys (end of a statement): the next value asks
    /// the shared key cache again, which applies `cache_ttl` and shreds.
    pub fn end_statement(&mut self) {
        self.keys.clear();
        self.since_refresh = 0;
        self.flush_metrics();
    }

    fn flush_metrics(&mut self) {
        if self.values > 0 {
            crate::metrics::hot()
                .values_decrypted
                .increment(self.values);
            self.values = 0;
        }
    }

    /// Decrypt the fields of one DataRow body (`body` = message without
    /// its type byte and length) that `shape` marks, appending the client's
    /// DataRow to `out`. `Ok(false)`: the body is malformed, nothing was
    /// appended, and the caller forwards the original frame (it carries
    /// ciphertext only). On error nothing is appended either.
    pub async fn decrypt_row(
        &mut self,
        crypto: &ValueCrypto,
        shape: &[Option<Decrypt>],
        body: &[u8],
        out: &mut BytesMut,
    ) -> Result<bool, RowError> {
        let start = out.len();
        out.put_u8(b'D');
        out.put_i32(0);
        match self.decrypt_fields(crypto, shape, body, out).await {
            Ok(true) => {
                let n = (out.len() - start - 1) as i32;
                out[start + 1..start + 5].copy_from_slice(&n.to_be_bytes());
                Ok(true)
            }
            other => {
                out.truncate(start);
                other
            }
        }
    }

    /// Decrypt the fields of a row laid out as a DataRow body (a 16-bit
    /// field count, then each field as a 32-bit length, -1 for NULL, and
    /// its bytes; a binary COPY tuple has the same layout) that `shape`
    /// marks, appending the transformed row in the same layout to `out`.
    /// `Ok(false)`: the body is malformed and nothing was appended. On
    /// error nothing is appended either (what was decrypted is wiped).
    pub async fn decrypt_fields(
        &mut self,
        crypto: &ValueCrypto,
        shape: &[Option<Decrypt>],
        body: &[u8],
        out: &mut BytesMut,
    ) -> Result<bool, RowError> {
        if !self.read_fields(body) || self.fields.len() != shape.len() {
            return Ok(false);
        }
        // One row in 256 is timed: a clock read per row costs more than
        // the hex decoding of a short value.
        self.rows += 1;
        let started = (self.rows % 256 == 1).then(Instant::now);
        let start = out.len();
        out.put_slice(&body[..2]);
        for i in 0..self.fields.len() {
            let (at, len) = self.fields[i];
            let d = match shape.get(i) {
                Some(Some(d)) if len >= 0 => d,
                _ => {
                    let end = at + len.max(0) as usize;
                    out.put_slice(&body[at - 4..end]);
                    continue;
                }
            };
            if d.mask {
                out.put_i32(-1);
                continue;
            }
            let stored = &body[at..at + len as usize];
            if let Err(error) = self.decrypt_value(crypto, d, body, stored, out).await {
                // Nothing of this row reaches the client; wipe what was
                // already decrypted into the output buffer.
                out[start..].zeroize();
                out.truncate(start);
                return Err(RowError {
                    column: d.attr.column.to_string(),
                    error,
                });
            }
        }
        if let Some(t) = started {
            crate::metrics::hot()
                .decrypt_row_seconds
                .record(t.elapsed().as_secs_f64());
        }
        if self.values >= 1024 {
            self.flush_metrics();
        }
        Ok(true)
    }

    /// Field offsets (start of the value, length or -1) of a DataRow body;
    /// false if the body is malformed.
    fn read_fields(&mut self, body: &[u8]) -> bool {
        self.fields.clear();
        let Some(n) = body.get(..2).map(|b| i16::from_be_bytes([b[0], b[1]])) else {
            return false;
        };
        if n < 0 {
            return false;
        }
        let mut at = 2usize;
        for _ in 0..n {
            let Some(l) = body.get(at..at + 4) else {
                return false;
            };
            let len = i32::from_be_bytes([l[0], l[1], l[2], l[3]]);
            at += 4;
            self.fields.push((at, len));
            if len > 0 {
                at += len as usize;
                if at > body.len() {
                    return false;
                }
            } else if len < -1 {
                return false;
            }
        }
        at == body.len()
    }

    /// The row's tenant id for `d`, when the result carries the tenant
    /// column: the envelope must then be bound to it.
    fn row_tenant<'a>(
        fields: &[(usize, i32)],
        d: &Decrypt,
        body: &'a [u8],
    ) -> Option<Cow<'a, str>> {
        let (j, ty, fmt) = d.tenant.as_ref()?;
        let &(at, len) = fields.get(*j)?;
        if len < 0 {
            return None;
        }
        let raw = &body[at..at + len as usize];
        if *fmt == 1 {
            binary_tenant(ty, raw).map(Cow::Owned)
        } else {
            std::str::from_utf8(raw).ok().map(Cow::Borrowed)
        }
    }

    /// Decrypt one stored value and append it to `out` as a DataRow field
    /// (length, then the bytes the client asked for). Synchronous while
    /// the data key is in the session's list; only a miss awaits the key
    /// manager (then the value is decoded again, which is rare).
    async fn decrypt_value(
        &mut self,
        crypto: &ValueCrypto,
        d: &Decrypt,
        body: &[u8],
        stored: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), ValueError> {
        self.since_refresh += 1;
        if self.since_refresh > KEY_REFRESH_VALUES {
            self.keys.clear();
            self.since_refresh = 1;
        }
        let Some(key_ref) = self.open_value(d, body, stored, out)? else {
            return Ok(());
        };
        let dek = crypto
            .keys
            .decryption_key(&key_ref)
            .await
            .map_err(|e| decrypt_error(d, e.to_string()))?;
        self.keys.push(LocalKey {
            key_id: key_ref.key_id,
            version: key_ref.version,
            tenant: key_ref.tenant,
            dek,
        });
        match self.open_value(d, body, stored, out)? {
            None => Ok(()),
            // Unreachable: the key was just added.
            Some(k) => Err(decrypt_error(d, format!("data key {k} not available"))),
        }
    }

    /// Decode and open one value with a key from the session's list.
    /// `Ok(Some(key))`: that key is not in the list yet; nothing appended.
    fn open_value(
        &mut self,
        d: &Decrypt,
        body: &[u8],
        stored: &[u8],
        out: &mut BytesMut,
    ) -> Result<Option<KeyRef>, ValueError> {
        let not_envelope = || {
            decrypt_error(
                d,
                "the stored value is not a pgveil envelope (run `pgveil encrypt` to backfill plaintext)"
                    .into(),
            )
        };
        let env: &[u8] = match (d.attr.storage, d.wire) {
            (Storage::Bytea, 1) => stored,
            (Storage::Bytea, _) => {
                let hex = stored.strip_prefix(b"\\x").ok_or_else(not_envelope)?;
                if !decode_hex_into(hex, &mut self.env) {
                    return Err(not_envelope());
                }
                &self.env
            }
            (Storage::Text, _) => {
                let b64 = stored
                    .strip_prefix(envelope::TEXT_PREFIX.as_bytes())
                    .ok_or_else(not_envelope)?;
                self.env.clear();
                base64::Engine::decode_vec(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                    b64,
                    &mut self.env,
                )
                .map_err(|_| not_envelope())?;
                &self.env
            }
        };
        let h = envelope::parse_header(env).map_err(|_| not_envelope())?;
        let Some(key) = self.keys.iter().find(|k| {
            k.key_id == h.key_id && k.version == h.version && k.tenant.as_deref() == h.tenant
        }) else {
            return Ok(Some(h.key_ref()));
        };
        let row_tenant = Self::row_tenant(&self.fields, d, body);
        let tenant = crate::seal::aad_tenant(&d.attr, row_tenant.as_deref(), h.tenant);
        let failed = || {
            decrypt_error(
                d,
                crate::crypto::CryptoError::DecryptFailed {
                    column: d.attr.column.to_string(),
                    key: h.key_ref().to_string(),
                }
                .to_string(),
            )
        };
        self.values += 1;
        match d.attr.policy.ty {
            // Text is its canonical UTF-8 in both formats: decrypt straight
            // into the client's DataRow, no copy and no scratch plaintext.
            PgType::Text | PgType::Varchar => {
                let at = out.len();
                out.put_i32(0);
                out.put_slice(h.sealed());
                let n = envelope::open_in_place(
                    &key.dek,
                    &h,
                    tenant,
                    &d.aad_names,
                    &mut self.aad,
                    &mut out[at + 4..],
                )
                .map_err(|_| failed())?;
                out.truncate(at + 4 + n);
                out[at..at + 4].copy_from_slice(&(n as i32).to_be_bytes());
            }
            ty => {
                envelope::open_into(
                    &key.dek,
                    &h,
                    tenant,
                    &d.aad_names,
                    &mut self.aad,
                    &mut self.plain,
                )
                .map_err(|_| failed())?;
                let format = if d.format == 1 {
                    Format::Binary
                } else {
                    Format::Text
                };
                let v = canonical::render(ty, format, &self.plain).map(zeroize::Zeroizing::new);
                self.plain.as_mut_slice().zeroize();
                let v = v.map_err(|e| decrypt_error(d, e.to_string()))?;
                out.put_i32(v.len() as i32);
                out.put_slice(&v);
            }
        }
        Ok(None)
    }
}

fn decrypt_error(d: &Decrypt, reason: String) -> ValueError {
    ValueError::Decrypt {
        column: d.attr.column.to_string(),
        reason,
    }
}

/// The SQL type of the tenant column of `column`'s table, as a result's
/// tenant field is read ([`Decrypt::tenant`]): `text` when the catalog
/// names none.
pub fn tenant_type(entry: &CatalogEntry, column: &ColumnRef) -> String {
    entry
        .tenant_types
        .get(&(column.schema.clone(), column.table.clone()))
        .cloned()
        .unwrap_or_else(|| "text".into())
}
