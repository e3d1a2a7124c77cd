//! The local master-key provider: 256-bit master keys pgveil reads from
//! environment variables or files, wrapping data keys with AES-256-GCM
//! (the wrapped form and its associated data are described on
//! [`LocalProvider`]). For development and for deployments without a KMS.

use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use futures::future::BoxFuture;
use zeroize::Zeroizing;

use super::{KeyError, MasterKeyProvider, WrapContext, WrappedKey, decode_key_hex, load_secret};
use crate::config::{LocalKeys, SecretRef};
use crate::crypto::DataKey;
use crate::crypto::envelope::lp;

const WRAP_VERSION: u8 = 1;
const AAD_LABEL: &[u8] = b"pgveil/v1/local-wrap";

/// Master keys held by pgveil itself: 256-bit keys from environment
/// variables or files, newest first. The first wraps new data keys; the
/// others only unwrap what they wrapped before.
///
/// Wrapped form: `0x01 || nonce (12) || AES-256-GCM(master, data key) (32) ||
/// tag (16)`, with AAD `lp("pgveil/v1/local-wrap") || lp(master key id) ||
/// lp(k) || lp(v)` for each pair of [`WrapContext::pairs`].
pub struct LocalProvider {
    keys: Vec<(String, LessSafeKey)>,
}

impl std::fmt::Debug for LocalProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalProvider")
            .field(
                "master_key_ids",
                &self.keys.iter().map(|k| &k.0).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl LocalProvider {
    /// From `(id, 32-byte key)` pairs, newest first.
    pub fn new(keys: Vec<(String, Zeroizing<[u8; 32]>)>) -> Result<LocalProvider, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::Config(
                "keys.local.master_keys is empty: list at least one key".into(),
            ));
        }
        let mut out: Vec<(String, LessSafeKey)> = Vec::new();
        for (id, k) in keys {
            if out.iter().any(|(i, _)| *i == id) {
                return Err(KeyError::Config(format!(
                    "master key id {id:?} is listed twice in keys.local.master_keys"
                )));
            }
            let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &k[..]).expect("32 bytes"));
            out.push((id, key));
        }
        Ok(LocalProvider { keys: out })
    }

    /// From the config (each key's hex read from `env:` or `file:`).
    pub fn from_config(cfg: &LocalKeys, base_dir: &Path) -> Result<LocalProvider, KeyError> {
        let mut keys = Vec::new();
        for m in &cfg.master_keys {
            let what = format!("master key {}", m.id);
            let secret = load_secret(
                &SecretRef {
                    env: m.env.clone(),
                    file: m.file.clone(),
                },
                base_dir,
                &what,
            )?;
            keys.push((m.id.as_str().to_string(), decode_key_hex(&secret, &what)?));
        }
        LocalProvider::new(keys)
    }

    fn aad(master_key_id: &str, ctx: &WrapContext) -> Vec<u8> {
        let mut a = Vec::with_capacity(128);
        lp(&mut a, AAD_LABEL);
        lp(&mut a, master_key_id.as_bytes());
        for (k, v) in ctx.pairs() {
            lp(&mut a, k.as_bytes());
            lp(&mut a, v.as_bytes());
        }
        a
    }
}

impl MasterKeyProvider for LocalProvider {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn current_master_key_id(&self) -> BoxFuture<'_, Result<String, KeyError>> {
        Box::pin(async move { Ok(self.keys[0].0.clone()) })
    }

    fn wrap<'a>(
        &'a self,
        dek: &'a DataKey,
        ctx: &'a WrapContext,
    ) -> BoxFuture<'a, Result<WrappedKey, KeyError>> {
        Box::pin(async move {
            let (id, key) = &self.keys[0];
            let mut nonce = [0u8; 12];
            aws_lc_rs::rand::fill(&mut nonce).expect("AWS-LC CSPRNG");
            let mut blob = Vec::with_capacity(1 + 12 + 32 + 16);
            blob.push(WRAP_VERSION);
            blob.extend_from_slice(&nonce);
            blob.extend_from_slice(dek.expose_secret());
            let aad = Self::aad(id, ctx);
            let tag = key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(&aad[..]),
                    &mut blob[13..],
                )
                .expect("AES-GCM seal");
            blob.extend_from_slice(tag.as_ref());
            Ok(WrappedKey {
                master_key_id: id.clone(),
                blob,
            })
        })
    }

    fn unwrap<'a>(
        &'a self,
        wrapped: &'a WrappedKey,
        ctx: &'a WrapContext,
    ) -> BoxFuture<'a, Result<DataKey, KeyError>> {
        Box::pin(async move {
            let id = &wrapped.master_key_id;
            let Some((_, key)) = self.keys.iter().find(|(i, _)| i == id) else {
                return Err(KeyError::MasterKeyNotConfigured {
                    master_key_id: id.clone(),
                    key: ctx.describe(),
                });
            };
            let b = &wrapped.blob;
            if b.len() != 1 + 12 + 32 + 16 || b[0] != WRAP_VERSION {
                return Err(KeyError::Keystore(format!(
                    "{}: wrapped key is not in the local provider's format (was it wrapped by aws-kms?)",
                    ctx.describe()
                )));
            }
            let nonce: [u8; 12] = b[1..13].try_into().expect("12 bytes");
            let mut buf = Zeroizing::new(b[13..].to_vec());
            let aad = Self::aad(id, ctx);
            let plain = key
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(&aad[..]),
                    &mut buf[..],
                )
                .map_err(|_| KeyError::WrongMasterKey {
                    master_key_id: id.clone(),
                    key: ctx.describe(),
                })?;
            Ok(DataKey::from_bytes(plain)?)
        })
    }
}
