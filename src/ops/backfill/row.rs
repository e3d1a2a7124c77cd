//! One row's new stored values (`TablePlan::row`): plaintext is
//! canonicalised, encrypted and blind-indexed; an envelope is skipped, or
//! decrypted to fill a missing blind index or to re-encrypt it under the
//! current key (rotate). Failures name the column, never a value.

use super::Mode;
use super::plan::TablePlan;
use crate::crypto::envelope;
use crate::crypto::{PgType, Storage};
use crate::keys::KeyError;
use crate::ops::rotate::KeyStates;
use crate::policy::catalog::ProtectedAttr;
use crate::seal::{Form, Sent, ValueCrypto, stored_to_envelope};

impl TablePlan {
    /// Work out the new stored values of one row.
    pub(super) async fn row(
        &self,
        crypto: &ValueCrypto,
        mode: Mode,
        states: &mut KeyStates,
        row: &tokio_postgres::Row,
        base: usize,
        tenant: Option<&str>,
    ) -> Result<RowChange, RowFailure> {
        let mut ch = RowChange {
            cols: Vec::with_capacity(self.cols.len()),
            ..RowChange::default()
        };
        if self.tenant.is_some() && tenant.is_none() {
            return Err(RowFailure {
                column: self.tenant.clone().unwrap_or_default(),
                reason: "the tenant column is NULL: set it so the values can be encrypted under that tenant's key".into(),
            });
        }
        for (i, c) in self.cols.iter().enumerate() {
            let at = base + 3 * i;
            let attr = &c.attr;
            let fail = |reason: String| RowFailure {
                column: attr.column.column.clone(),
                reason,
            };
            let stored: Option<&[u8]> = match attr.storage {
                Storage::Bytea => row.get::<_, Option<&[u8]>>(at),
                Storage::Text => row.get::<_, Option<&str>>(at).map(str::as_bytes),
            };
            let need_bidx = c.bidx.is_some() && row.get::<_, bool>(at + 1);
            let need_next = c.next.is_some() && row.get::<_, bool>(at + 2);
            let mut cc = ColChange::default();
            let Some(stored) = stored else {
                ch.cols.push(cc);
                continue;
            };
            let fmt = match attr.storage {
                Storage::Bytea => 1,
                Storage::Text => 0,
            };
            match stored_to_envelope(attr.storage, fmt, stored) {
                None => {
                    // Plaintext: its stored text form, or raw bytes for a
                    // bytea-typed value stored as bytea.
                    let pfmt = match (attr.storage, attr.policy.ty) {
                        (Storage::Bytea, PgType::Bytea) => 1,
                        _ => 0,
                    };
                    let canon = crypto
                        .canonical(attr, pfmt, stored)
                        .map_err(|e| fail(strip_prefix(e.to_string())))?;
                    let sealed = crypto
                        .seal(attr, tenant, Sent::Canonical(&canon), Form::Binary)
                        .await
                        .map_err(|e| fail(strip_prefix(e.to_string())))?;
                    cc.value = Some(sealed);
                    ch.values_encrypted += 1;
                    if c.bidx.is_some() {
                        cc.bidx = Some(bidx(crypto, attr, false, &canon).map_err(fail)?);
                    }
                    if c.next.is_some() {
                        cc.next = Some(bidx(crypto, attr, true, &canon).map_err(fail)?);
                    }
                }
                Some(env) => {
                    let stale = mode == Mode::Rotate && {
                        let key_ref = envelope::peek_key(&env).map_err(|e| fail(e.to_string()))?;
                        states
                            .is_stale(&crypto.keys, &key_ref)
                            .await
                            .map_err(fail)?
                    };
                    if !(stale || need_bidx || need_next) {
                        ch.cols.push(cc);
                        continue;
                    }
                    let canon = match decrypt(crypto, attr, &env, fmt, stored, tenant).await {
                        Ok(p) => p,
                        Err(Decrypted::Destroyed) => {
                            ch.shredded += 1;
                            ch.cols.push(cc);
                            continue;
                        }
                        Err(Decrypted::Failed(r)) => return Err(fail(r)),
                    };
                    if stale {
                        let sealed = crypto
                            .seal(attr, tenant, Sent::Canonical(&canon), Form::Binary)
                            .await
                            .map_err(|e| fail(strip_prefix(e.to_string())))?;
                        cc.value = Some(sealed);
                        ch.values_reencrypted += 1;
                    }
                    if need_bidx {
                        cc.bidx = Some(bidx(crypto, attr, false, &canon).map_err(fail)?);
                    }
                    if need_next {
                        cc.next = Some(bidx(crypto, attr, true, &canon).map_err(fail)?);
                    }
                }
            }
            ch.indexes += u64::from(cc.bidx.is_some()) + u64::from(cc.next.is_some());
            ch.cols.push(cc);
        }
        Ok(ch)
    }
}

fn bidx(
    crypto: &ValueCrypto,
    attr: &ProtectedAttr,
    next: bool,
    canon: &[u8],
) -> Result<Vec<u8>, String> {
    crypto
        .blind_index(attr, next, canon)
        .map(|b| b.to_vec())
        .map_err(|e| strip_prefix(e.to_string()))
}

enum Decrypted {
    Destroyed,
    Failed(String),
}

/// Decrypt an envelope read from a row; a shredded key is reported apart.
async fn decrypt(
    crypto: &ValueCrypto,
    attr: &ProtectedAttr,
    env: &[u8],
    fmt: i16,
    stored: &[u8],
    tenant: Option<&str>,
) -> Result<zeroize::Zeroizing<Vec<u8>>, Decrypted> {
    let key_ref = envelope::peek_key(env).map_err(|e| Decrypted::Failed(e.to_string()))?;
    match crypto.keys.decryption_key(&key_ref).await {
        Err(KeyError::KeyDestroyed { .. }) => return Err(Decrypted::Destroyed),
        Err(e) => return Err(Decrypted::Failed(e.to_string())),
        Ok(_) => {}
    }
    crypto
        .decrypt_stored(attr, fmt, stored, tenant)
        .await
        .map_err(|e| Decrypted::Failed(strip_prefix(e.to_string())))
}

/// `ValueError` messages start with "pgveil: " (they go to clients).
fn strip_prefix(s: String) -> String {
    match s.strip_prefix("pgveil: ") {
        Some(r) => r.to_string(),
        None => s,
    }
}

pub(super) struct RowFailure {
    pub(super) column: String,
    pub(super) reason: String,
}

#[derive(Default)]
pub(super) struct ColChange {
    pub(super) value: Option<Vec<u8>>,
    pub(super) bidx: Option<Vec<u8>>,
    pub(super) next: Option<Vec<u8>>,
}

#[derive(Default)]
pub(super) struct RowChange {
    pub(super) cols: Vec<ColChange>,
    pub(super) values_encrypted: u64,
    pub(super) values_reencrypted: u64,
    pub(super) indexes: u64,
    pub(super) shredded: u64,
}

impl RowChange {
    pub(super) fn changed(&self) -> bool {
        self.cols
            .iter()
            .any(|c| c.value.is_some() || c.bidx.is_some() || c.next.is_some())
    }
}
