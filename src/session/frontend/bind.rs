//! Bind: forwarded as the client's bytes unless its statement's plan
//! transforms parameters ([`BindPath`], the one decision shared with
//! `stream_large`); then each parameter is encrypted or blind-indexed
//! through `seal` (arrays and tenant ids: `params`), deferred
//! literals are appended, and PostgreSQL's own count and format checks are
//! kept. The portal is recorded when PostgreSQL confirms it. Never forwards
//! a protected parameter as sent.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::Frontend;
use super::lex::pg_name;
use super::names::{Space, View};
use super::refusal::{Refusal, ambiguous, refuse, unkeyable};
use crate::policy::catalog::ProtectedAttr;
use crate::session::values::{Form, Sent, ValueError, stored_to_envelope};
use crate::session::{CatalogEntry, Pending, Prepared};
use crate::sql::{ArrayTenant, ColumnRef, LiteralSlot, ParamAction, RewritePlan, TenantSource};
use crate::wire::codec::{Frame, read_cstr};
use crate::wire::query::BindMsg;

/// How a Bind is handled, by what its statement's name means: the one
/// decision [`Frontend::on_bind`] and [`Frontend::stream_large`] both take,
/// so that a Bind streamed unread is one `on_bind` would forward as sent.
pub(super) enum BindPath {
    /// Forwarded as the client's bytes; the portal will be this. `None`:
    /// unprotected, or unknown (PostgreSQL reports the error); `Some`: a
    /// COPY, whose data is encrypted and whose Bind carries none.
    Forward(Option<Arc<Prepared>>),
    /// A statement whose plan transforms its parameters.
    Transform(Arc<Prepared>),
    /// A change still unanswered could leave the name meaning something
    /// protected other than what pgveil would assume: refused.
    Ambiguous,
}

/// What a non-NULL Bind parameter for a protected column becomes (see
/// [`ParamAction`]); `declared`: the type the client declared for it at
/// Parse (0: none).
enum Seal<'a> {
    /// Encrypted, under the tenant `tenant` names.
    Encrypt {
        target: &'a ColumnRef,
        tenant: &'a TenantSource,
        declared: u32,
    },
    /// Its blind index, under the current or the `next` key.
    Index { declared: u32, next: bool },
    /// The blind index of each element of an array parameter whose
    /// elements are of type `elem` (checked when given).
    IndexArray { elem: Option<u32>, next: bool },
    /// Each element of an array parameter of element type `elem`
    /// encrypted, with the tenant at the same position.
    EncryptArray { tenant: &'a ArrayTenant, elem: u32 },
}

/// The client's parameter `orig` and its format; refused when the client
/// sent fewer parameters than the statement uses.
fn client_param(b: &BindMsg, orig: usize) -> Result<(Option<Bytes>, i16), Refusal> {
    match b.params.get(orig) {
        Some(v) => Ok((v.clone(), b.param_format(orig))),
        None => Err(refuse(
            "08P01",
            format!(
                "bind message supplies {} parameters, but the statement uses ${}",
                b.params.len(),
                orig + 1
            ),
        )),
    }
}

/// PostgreSQL's own checks of a Bind's counts: the rewritten Bind would
/// hide a mismatch (extra parameters dropped, formats re-encoded).
fn check_counts(b: &BindMsg, prepared: &Prepared) -> Result<(), Refusal> {
    if b.params.len() != prepared.client_params {
        return Err(refuse(
            "08P01",
            format!(
                "bind message supplies {} parameters, but prepared statement \"{}\" requires {}",
                b.params.len(),
                b.statement,
                prepared.client_params
            ),
        ));
    }
    if b.param_formats.len() > 1 && b.param_formats.len() != b.params.len() {
        return Err(refuse(
            "08P01",
            format!(
                "bind message has {} parameter formats but {} parameters",
                b.param_formats.len(),
                b.params.len()
            ),
        ));
    }
    Ok(())
}

impl Frontend {
    /// How a Bind of `statement` (keyed as PostgreSQL keys it) is handled.
    pub(super) fn bind_path(&self, statement: &str) -> BindPath {
        match self.names.view(Space::Statement, statement) {
            View::Known(Some(p)) if p.plan.is_none() => BindPath::Forward(Some(p)),
            View::Known(None) => BindPath::Forward(None),
            View::Ambiguous => BindPath::Ambiguous,
            View::Known(Some(p)) => BindPath::Transform(p),
        }
    }

    /// Record the portal a Bind names as `prepared` (once PostgreSQL
    /// confirms it) and expect the Bind's answer.
    pub(super) fn bind_portal(&mut self, portal: &str, prepared: Option<Arc<Prepared>>) {
        let op = self.names.set(Space::Portal, portal, prepared);
        self.exchange.push(Pending::Bind {
            internal: false,
            op,
        });
    }

    /// A Bind: forwarded as sent, refused, or with its parameters
    /// transformed ([`bind_transformed`](Self::bind_transformed)).
    pub(super) async fn on_bind(&mut self, f: &Frame, out: &mut BytesMut) {
        // Hot path: portal and statement names in place; a statement that
        // needs no parameter rewriting is forwarded as the original bytes.
        let mut b = f.body();
        self.names.drain(&self.exchange);
        let unconverted = self.lex.names_unconverted();
        let names = match (read_cstr(&mut b), read_cstr(&mut b)) {
            (Some(portal), Some(statement)) => {
                match (
                    pg_name(portal, unconverted),
                    pg_name(statement, unconverted),
                ) {
                    (Some(p), Some(s)) => Some((p, s)),
                    _ => {
                        let r = unkeyable("portal or statement");
                        self.raise(&r, out);
                        return;
                    }
                }
            }
            _ => None,
        };
        let portal_key = names.map(|(p, _)| p.to_string()).unwrap_or_default();
        let prepared = if let Some((portal, statement)) = names {
            match self.bind_path(statement) {
                BindPath::Forward(p) => {
                    self.bind_portal(portal, p);
                    self.forward(f, out);
                    return;
                }
                BindPath::Ambiguous => {
                    let r = ambiguous("prepared statement", statement);
                    self.raise(&r, out);
                    return;
                }
                BindPath::Transform(p) => Some(p),
            }
        } else {
            None
        };
        self.bind_transformed(f, &portal_key, prepared, out).await;
    }

    /// A Bind of a statement whose plan transforms parameters (`prepared`;
    /// `None` when its names could not be read): decoded whole, refused
    /// when malformed, else sent with its parameters transformed.
    async fn bind_transformed(
        &mut self,
        f: &Frame,
        portal_key: &str,
        prepared: Option<Arc<Prepared>>,
        out: &mut BytesMut,
    ) {
        let body = Bytes::copy_from_slice(f.body());
        let Some(bind) = BindMsg::decode(&body) else {
            // A Bind of a protected statement (or one whose names cannot be
            // read) whose counts and lengths disagree: refuse it here, so
            // the parameters it carries never go upstream as they are.
            // PostgreSQL would reject it too.
            let r = refuse(
                "08P01",
                "pgveil: invalid Bind message: its parameter counts and lengths disagree with its length",
            );
            self.raise(&r, out);
            return;
        };
        // The names could be read above (the message decoded).
        let Some(prepared) = prepared else {
            let r = refuse("08P01", "pgveil: invalid Bind message");
            self.raise(&r, out);
            return;
        };
        let Some(plan) = prepared.plan.clone() else {
            self.bind_portal(portal_key, Some(prepared));
            self.forward(f, out);
            return;
        };
        let transformed = match self.charge_rewrite(f.raw.len()).await {
            Ok(c) => {
                self.rewrite_charge = c;
                self.transform_bind(&bind, &plan, &prepared).await
            }
            Err(r) => Err(r),
        };
        match transformed {
            Ok(new) => {
                self.bind_portal(portal_key, Some(prepared));
                // Its row shape is learnt right before each Execute.
                new.encode(out);
            }
            Err(r) => {
                self.raise(&r, out);
            }
        }
    }

    /// The Bind sent for a client's Bind of a statement pgveil rewrote:
    /// each parameter as the plan's action computes it, then the deferred
    /// literals as appended parameters.
    async fn transform_bind(
        &self,
        b: &BindMsg,
        plan: &RewritePlan,
        prepared: &Prepared,
    ) -> Result<BindMsg, Refusal> {
        check_counts(b, prepared)?;
        let entry = self.entry();
        let mut params = Vec::with_capacity(plan.params.len());
        let mut formats = Vec::with_capacity(plan.params.len());
        for action in &plan.params {
            let (v, f) = self.transform_param(&entry, b, prepared, action).await?;
            params.push(v);
            formats.push(f);
        }
        for &i in &prepared.deferred_literals {
            params.push(Some(
                self.deferred_literal(&entry, b, &plan.literals[i]).await?,
            ));
            formats.push(1);
        }
        Ok(BindMsg {
            portal: b.portal.clone(),
            statement: b.statement.clone(),
            param_formats: formats,
            params,
            result_formats: b.result_formats.clone(),
        })
    }

    /// One parameter of the Bind sent, as `action` computes it from the
    /// client's: its value and format. A protected column's value goes in
    /// binary; NULL stays NULL.
    async fn transform_param(
        &self,
        entry: &CatalogEntry,
        b: &BindMsg,
        prepared: &Prepared,
        action: &ParamAction,
    ) -> Result<(Option<Bytes>, i16), Refusal> {
        let orig = action.orig();
        let (v, f) = client_param(b, orig)?;
        let declared = prepared.declared.get(orig).copied().unwrap_or(0);
        let (target, seal) = match action {
            ParamAction::Copy { .. } => return Ok((v, f)),
            ParamAction::RequireEnvelope { target, .. } => {
                let attr = self.attr(entry, target)?;
                if let Some(v) = &v
                    && stored_to_envelope(attr.storage, f, v).is_none()
                {
                    return Err(ValueError::NotEnvelope {
                        column: attr.column.to_string(),
                    }
                    .into());
                }
                return Ok((v, f));
            }
            ParamAction::Encrypt { target, tenant, .. } => (
                target,
                Seal::Encrypt {
                    target,
                    tenant,
                    declared,
                },
            ),
            // One path for the current index (optionally over an array
            // parameter) and the rotation's `next` index.
            ParamAction::BlindIndex {
                target,
                array: true,
                ..
            } => (
                target,
                Seal::IndexArray {
                    elem: None,
                    next: false,
                },
            ),
            ParamAction::BlindIndex { target, .. } => (
                target,
                Seal::Index {
                    declared,
                    next: false,
                },
            ),
            ParamAction::BlindIndexNext { target, .. } => (
                target,
                Seal::Index {
                    declared,
                    next: true,
                },
            ),
            ParamAction::EncryptArray {
                target,
                tenant,
                elem,
                ..
            } => (
                target,
                Seal::EncryptArray {
                    tenant,
                    elem: *elem,
                },
            ),
            ParamAction::BlindIndexArray {
                target, next, elem, ..
            } => (
                target,
                Seal::IndexArray {
                    elem: Some(*elem),
                    next: *next,
                },
            ),
        };
        let attr = self.attr(entry, target)?;
        let out = match v {
            None => None,
            Some(v) => Some(self.seal_value(entry, b, &seal, &attr, f, &v).await?),
        };
        Ok((out, 1))
    }

    /// A non-NULL parameter for a protected column, as `seal` says, in
    /// binary.
    async fn seal_value(
        &self,
        entry: &CatalogEntry,
        b: &BindMsg,
        seal: &Seal<'_>,
        attr: &ProtectedAttr,
        f: i16,
        v: &[u8],
    ) -> Result<Bytes, Refusal> {
        let crypto = &self.engine.crypto;
        Ok(match *seal {
            Seal::Encrypt {
                target,
                tenant,
                declared,
            } => {
                let tenant = self.tenant(entry, b, target, tenant)?;
                let sent = Sent::Param {
                    declared,
                    format: f,
                    value: v,
                };
                Bytes::from(
                    crypto
                        .seal(attr, tenant.as_deref(), sent, Form::Binary)
                        .await?,
                )
            }
            Seal::Index { declared, next } => {
                let sent = Sent::Param {
                    declared,
                    format: f,
                    value: v,
                };
                Bytes::copy_from_slice(&crypto.index(attr, next, sent)?)
            }
            Seal::IndexArray { elem, next } => self.blind_index_array(attr, f, v, elem, next)?,
            Seal::EncryptArray { tenant, elem } => {
                self.encrypt_array(entry, b, attr, tenant, elem, f, v)
                    .await?
            }
        })
    }

    /// A literal of the statement whose tenant is a Bind parameter
    /// (deferred at Parse, see `render`), encrypted into an appended
    /// binary parameter.
    async fn deferred_literal(
        &self,
        entry: &CatalogEntry,
        b: &BindMsg,
        slot: &LiteralSlot,
    ) -> Result<Bytes, Refusal> {
        let attr = self.attr(entry, &slot.target)?;
        let value = slot.value.as_deref().unwrap_or_default();
        let tenant = self.tenant(entry, b, &slot.target, &slot.tenant)?;
        let sent = Sent::Text(value.as_bytes());
        let stored = self
            .engine
            .crypto
            .seal(&attr, tenant.as_deref(), sent, Form::Binary)
            .await?;
        Ok(Bytes::from(stored))
    }
}
