//! The AWS KMS master-key provider: data keys generated, wrapped and
//! unwrapped by KMS under one key, with the data key's [`WrapContext`] as
//! the encryption context (so a wrapped key only unwraps for the table,
//! tenant and version it was made for). KMS errors are mapped to
//! [`KeyError`]s that say whether KMS was unreachable or refused.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_kms::error::{DisplayErrorContext, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use futures::future::BoxFuture;
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

use super::{KeyError, MasterKeyProvider, WrapContext, WrappedKey};
use crate::config::AwsKms;
use crate::crypto::DataKey;

const KIND: &str = "aws-kms";

/// AWS KMS (or any KMS-compatible endpoint) as the master-key provider:
/// `GenerateDataKey` for new data keys, `Decrypt` to unwrap, `Encrypt` to
/// re-wrap, always with the [`WrapContext`] as encryption context.
/// Credentials come from the default AWS chain (environment, profile,
/// instance role).
#[derive(Debug)]
pub struct AwsKmsProvider {
    client: aws_sdk_kms::Client,
    key_id: String,
    endpoint: String,
    arn: OnceCell<String>,
}

impl AwsKmsProvider {
    /// From the config: `key_id` (id, ARN or alias), `region`, optional
    /// `endpoint` (e.g. `http://127.0.0.1:5055` for a local KMS).
    pub async fn from_config(cfg: &AwsKms) -> Result<AwsKmsProvider, KeyError> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(Duration::from_secs(5))
                    .operation_timeout(Duration::from_secs(15))
                    .build(),
            )
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3));
        if let Some(r) = &cfg.region {
            loader = loader.region(aws_config::Region::new(r.as_str().to_string()));
        }
        let sdk = loader.load().await;
        if sdk.region().is_none() {
            return Err(KeyError::Config(
                "keys.aws_kms.region is not set and no AWS region is configured in the environment: add region:".into(),
            ));
        }
        let mut b = aws_sdk_kms::config::Builder::from(&sdk);
        let endpoint = match &cfg.endpoint {
            Some(e) => {
                b = b.endpoint_url(e.as_str());
                e.as_str().to_string()
            }
            None => format!(
                "AWS KMS in {}",
                sdk.region().map(|r| r.as_ref()).unwrap_or("?")
            ),
        };
        Ok(AwsKmsProvider {
            client: aws_sdk_kms::Client::from_conf(b.build()),
            key_id: cfg.key_id.as_str().to_string(),
            endpoint,
            arn: OnceCell::new(),
        })
    }

    /// From an SDK client (tests, custom credential setups).
    pub fn from_client(
        client: aws_sdk_kms::Client,
        key_id: &str,
        endpoint: &str,
    ) -> AwsKmsProvider {
        AwsKmsProvider {
            client,
            key_id: key_id.to_string(),
            endpoint: endpoint.to_string(),
            arn: OnceCell::new(),
        }
    }

    fn context(ctx: &WrapContext) -> HashMap<String, String> {
        ctx.pairs()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    fn map_err<E, R>(&self, e: SdkError<E, R>, key: Option<&WrapContext>) -> KeyError
    where
        E: std::error::Error + aws_sdk_kms::error::ProvideErrorMetadata + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        match &e {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
                KeyError::ProviderUnavailable {
                    provider: KIND,
                    detail: format!("{}: {}", self.endpoint, DisplayErrorContext(&e)),
                }
            }
            SdkError::ServiceError(se) => {
                let code = se.err().code().unwrap_or("error").to_string();
                let msg = se.err().message().unwrap_or("").to_string();
                match (key, code.as_str()) {
                    (Some(ctx), "InvalidCiphertextException" | "IncorrectKeyException") => {
                        KeyError::UnwrapRejected {
                            provider: KIND,
                            key: ctx.describe(),
                            detail: format!(
                                "{code}: the encryption context or KMS key does not match the one it was wrapped with ({msg})"
                            ),
                        }
                    }
                    _ => KeyError::Provider {
                        provider: KIND,
                        detail: format!("{code}: {msg} (key {})", self.key_id),
                    },
                }
            }
            _ => KeyError::Provider {
                provider: KIND,
                detail: format!("{}: {}", self.endpoint, DisplayErrorContext(&e)),
            },
        }
    }
}

impl MasterKeyProvider for AwsKmsProvider {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn current_master_key_id(&self) -> BoxFuture<'_, Result<String, KeyError>> {
        Box::pin(async move {
            self.arn
                .get_or_try_init(|| async {
                    let r = self
                        .client
                        .describe_key()
                        .key_id(&self.key_id)
                        .send()
                        .await
                        .map_err(|e| self.map_err(e, None))?;
                    r.key_metadata()
                        .and_then(|m| m.arn())
                        .map(str::to_string)
                        .ok_or_else(|| KeyError::Provider {
                            provider: KIND,
                            detail: format!("DescribeKey {} returned no ARN", self.key_id),
                        })
                })
                .await
                .cloned()
        })
    }

    fn generate<'a>(
        &'a self,
        ctx: &'a WrapContext,
    ) -> BoxFuture<'a, Result<(DataKey, WrappedKey), KeyError>> {
        Box::pin(async move {
            let r = self
                .client
                .generate_data_key()
                .key_id(&self.key_id)
                .key_spec(DataKeySpec::Aes256)
                .set_encryption_context(Some(Self::context(ctx)))
                .send()
                .await
                .map_err(|e| self.map_err(e, Some(ctx)))?;
            let dek = plain_key(r.plaintext())?;
            let blob = bytes(r.ciphertext_blob()).ok_or_else(|| KeyError::Provider {
                provider: KIND,
                detail: "GenerateDataKey returned no ciphertext".into(),
            })?;
            Ok((
                dek,
                WrappedKey {
                    master_key_id: r.key_id().unwrap_or(&self.key_id).to_string(),
                    blob,
                },
            ))
        })
    }

    fn wrap<'a>(
        &'a self,
        dek: &'a DataKey,
        ctx: &'a WrapContext,
    ) -> BoxFuture<'a, Result<WrappedKey, KeyError>> {
        Box::pin(async move {
            let r = self
                .client
                .encrypt()
                .key_id(&self.key_id)
                .plaintext(Blob::new(dek.expose_secret().to_vec()))
                .set_encryption_context(Some(Self::context(ctx)))
                .send()
                .await
                .map_err(|e| self.map_err(e, Some(ctx)))?;
            Ok(WrappedKey {
                master_key_id: r.key_id().unwrap_or(&self.key_id).to_string(),
                blob: bytes(r.ciphertext_blob()).unwrap_or_default(),
            })
        })
    }

    fn unwrap<'a>(
        &'a self,
        wrapped: &'a WrappedKey,
        ctx: &'a WrapContext,
    ) -> BoxFuture<'a, Result<DataKey, KeyError>> {
        Box::pin(async move {
            let r = self
                .client
                .decrypt()
                .key_id(&wrapped.master_key_id)
                .ciphertext_blob(Blob::new(wrapped.blob.clone()))
                .set_encryption_context(Some(Self::context(ctx)))
                .send()
                .await
                .map_err(|e| self.map_err(e, Some(ctx)))?;
            plain_key(r.plaintext())
        })
    }
}

/// The bytes of a blob KMS answered with.
fn bytes(blob: Option<&Blob>) -> Option<Vec<u8>> {
    blob.map(|b| b.as_ref().to_vec())
}

/// The data key in a KMS answer's `Plaintext` (a missing one reads as
/// empty, which is not a key); the copy is zeroed once read.
fn plain_key(plaintext: Option<&Blob>) -> Result<DataKey, KeyError> {
    let plain = Zeroizing::new(bytes(plaintext).unwrap_or_default());
    Ok(DataKey::from_bytes(&plain)?)
}
