//! Bind: forwarded as the client's bytes unless its statement's plan
//! transforms parameters; then each parameter is encrypted or
//! blind-indexed (arrays element by element, with their tenants), deferred
//! literals are appended, and PostgreSQL's own count and format checks are
//! kept. The portal is recorded when PostgreSQL confirms it.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::Frontend;
use super::lex::pg_name;
use super::names::{Space, View};
use super::refusal::{Refusal, ambiguous, refuse, unkeyable};
use crate::policy::catalog::ProtectedAttr;
use crate::session::messages::{self as m, BindMsg};
use crate::session::values::{ValueError, envelope_to_stored_binary, stored_to_envelope};
use crate::session::{CatalogEntry, Pending, Prepared};
use crate::sql::array::{self, ArrayError};
use crate::sql::{ArrayTenant, ColumnRef, ParamAction, RewritePlan, TenantSource};
use crate::wire::codec::{Frame, read_cstr};

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
        self.shared.push(Pending::Bind {
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
        self.names.drain(&self.shared);
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

    async fn transform_bind(
        &self,
        b: &BindMsg,
        plan: &RewritePlan,
        prepared: &Prepared,
    ) -> Result<BindMsg, Refusal> {
        // PostgreSQL's own checks: the rewritten Bind would hide a
        // mismatch (extra parameters dropped, formats re-encoded).
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
        let deferred = &prepared.deferred_literals;
        let declared = |orig: usize| prepared.declared.get(orig).copied().unwrap_or(0);
        let entry = self.entry();
        let mut params = Vec::with_capacity(plan.params.len());
        let mut formats = Vec::with_capacity(plan.params.len());
        let get = |orig: usize| -> Result<(Option<Bytes>, i16), Refusal> {
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
        };
        for action in &plan.params {
            match action {
                ParamAction::Copy { orig } => {
                    let (v, f) = get(*orig)?;
                    params.push(v);
                    formats.push(f);
                }
                ParamAction::Encrypt {
                    orig,
                    target,
                    tenant,
                } => {
                    let (v, f) = get(*orig)?;
                    let attr = self.attr(&entry, target)?;
                    let out = match v {
                        None => None,
                        Some(v) => {
                            let tenant = self.tenant(&entry, b, target, tenant)?;
                            let canonical = self.engine.crypto.canonical_param(
                                &attr,
                                declared(*orig),
                                f,
                                &v,
                            )?;
                            let env = self
                                .engine
                                .crypto
                                .encrypt(&attr, tenant.as_deref(), &canonical)
                                .await?;
                            Some(Bytes::from(envelope_to_stored_binary(attr.storage, &env)))
                        }
                    };
                    params.push(out);
                    formats.push(1);
                }
                ParamAction::BlindIndex { orig, target, .. }
                | ParamAction::BlindIndexNext { orig, target } => {
                    // One path for the current index (optionally over an
                    // array parameter) and the rotation's `next` index.
                    let next = matches!(action, ParamAction::BlindIndexNext { .. });
                    let array = matches!(action, ParamAction::BlindIndex { array: true, .. });
                    let (v, f) = get(*orig)?;
                    let attr = self.attr(&entry, target)?;
                    let out = match v {
                        None => None,
                        Some(v) if array => {
                            Some(self.blind_index_array(&attr, f, &v, None, false)?)
                        }
                        Some(v) => {
                            Some(self.blind_index_param(&attr, declared(*orig), f, &v, next)?)
                        }
                    };
                    params.push(out);
                    formats.push(1);
                }
                ParamAction::EncryptArray {
                    orig,
                    target,
                    tenant,
                    elem,
                } => {
                    let (v, f) = get(*orig)?;
                    let attr = self.attr(&entry, target)?;
                    let out = match v {
                        None => None,
                        Some(v) => Some(
                            self.encrypt_array(&entry, b, &attr, tenant, *elem, f, &v)
                                .await?,
                        ),
                    };
                    params.push(out);
                    formats.push(1);
                }
                ParamAction::BlindIndexArray {
                    orig,
                    target,
                    next,
                    elem,
                } => {
                    let (v, f) = get(*orig)?;
                    let attr = self.attr(&entry, target)?;
                    let out = match v {
                        None => None,
                        Some(v) => {
                            Some(self.blind_index_array(&attr, f, &v, Some(*elem), *next)?)
                        }
                    };
                    params.push(out);
                    formats.push(1);
                }
                ParamAction::RequireEnvelope { orig, target } => {
                    let (v, f) = get(*orig)?;
                    let attr = self.attr(&entry, target)?;
                    if let Some(v) = &v
                        && stored_to_envelope(attr.storage, f, v).is_none()
                    {
                        return Err(ValueError::NotEnvelope {
                            column: attr.column.to_string(),
                        }
                        .into());
                    }
                    params.push(v);
                    formats.push(f);
                }
            }
        }
        for &i in deferred {
            let slot = &plan.literals[i];
            let attr = self.attr(&entry, &slot.target)?;
            let value = slot.value.as_deref().unwrap_or_default();
            let tenant = self.tenant(&entry, b, &slot.target, &slot.tenant)?;
            let canonical = self.engine.crypto.canonical(&attr, 0, value.as_bytes())?;
            let env = self
                .engine
                .crypto
                .encrypt(&attr, tenant.as_deref(), &canonical)
                .await?;
            params.push(Some(Bytes::from(envelope_to_stored_binary(
                attr.storage,
                &env,
            ))));
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

    /// The blind index of one parameter, as a binary `bytea`.
    fn blind_index_param(
        &self,
        attr: &ProtectedAttr,
        declared: u32,
        f: i16,
        v: &[u8],
        next: bool,
    ) -> Result<Bytes, Refusal> {
        let canonical = self.engine.crypto.canonical_param(attr, declared, f, v)?;
        Ok(Bytes::copy_from_slice(
            &self.engine.crypto.blind_index(attr, next, &canonical)?,
        ))
    }

    /// The elements of a one-dimensional array parameter in format `f`,
    /// each in the same format. `elem`: the element type the client's
    /// array must hold (checked in a binary array's header, as
    /// PostgreSQL's `array_recv` does).
    fn array_items(
        &self,
        column: &ColumnRef,
        f: i16,
        v: &[u8],
        elem: Option<u32>,
    ) -> Result<Vec<Option<Vec<u8>>>, Refusal> {
        let err = |e: ArrayError| -> Refusal {
            match e {
                ArrayError::MultiDimensional => refuse(
                    "0A000",
                    format!(
                        "pgveil: the array parameter for protected column {column} has more than one dimension; pgveil transforms one-dimensional arrays only (UNNEST would flatten it): send a one-dimensional array"
                    ),
                ),
                ArrayError::Malformed => ValueError::Invalid {
                    column: column.to_string(),
                    ty: "array",
                    format: if f == 1 { "binary" } else { "text" },
                }
                .into(),
            }
        };
        if f == 1 {
            let a = array::decode_binary(v).map_err(err)?;
            if let Some(e) = elem
                && a.elem_oid != e
            {
                return Err(refuse(
                    "42804",
                    format!(
                        "pgveil: the array parameter for protected column {column} has element type OID {} instead of the expected {e}",
                        a.elem_oid
                    ),
                ));
            }
            Ok(a.items)
        } else {
            let s = std::str::from_utf8(v).map_err(|_| err(ArrayError::Malformed))?;
            Ok(array::parse_text(s)
                .map_err(err)?
                .into_iter()
                .map(|o| o.map(String::into_bytes))
                .collect())
        }
    }

    /// The blind index of each element of an array parameter (`= ANY($1)`,
    /// the blind-index argument of an UNNEST), as a binary `bytea[]`.
    fn blind_index_array(
        &self,
        attr: &ProtectedAttr,
        f: i16,
        v: &[u8],
        elem: Option<u32>,
        next: bool,
    ) -> Result<Bytes, Refusal> {
        let items = self.array_items(&attr.column, f, v, elem)?;
        let mut out = Vec::with_capacity(items.len());
        for it in items {
            out.push(match it {
                None => None,
                Some(e) => {
                    let canonical =
                        self.engine
                            .crypto
                            .canonical_param(attr, elem.unwrap_or(0), f, &e)?;
                    Some(
                        self.engine
                            .crypto
                            .blind_index(attr, next, &canonical)?
                            .to_vec(),
                    )
                }
            });
        }
        Ok(m::encode_binary_array(17, &out))
    }

    /// Each element of an array parameter encrypted for `attr`, with the
    /// tenant at the same position: an array of envelopes in the column's
    /// storage type (binary `bytea[]` or `text[]`).
    #[allow(clippy::too_many_arguments)]
    async fn encrypt_array(
        &self,
        entry: &CatalogEntry,
        b: &BindMsg,
        attr: &ProtectedAttr,
        tenant: &ArrayTenant,
        elem: u32,
        f: i16,
        v: &[u8],
    ) -> Result<Bytes, Refusal> {
        let target = &attr.column;
        let items = self.array_items(target, f, v, Some(elem))?;
        let tenants: Option<Vec<Option<String>>> = match tenant {
            ArrayTenant::None => None,
            ArrayTenant::Param(q) => Some(self.tenant_array(b, target, *q)?),
            ArrayTenant::Elements(list) => {
                let mut out = Vec::with_capacity(list.len());
                for ts in list {
                    out.push(match ts {
                        TenantSource::None => None,
                        other => self.tenant(entry, b, target, other)?,
                    });
                }
                Some(out)
            }
        };
        if attr.tenant.is_some() && tenants.is_none() {
            return Err(refuse(
                "42501",
                format!(
                    "pgveil: {target} is encrypted per tenant, but the rows' tenants are unknown"
                ),
            ));
        }
        let mut out = Vec::with_capacity(items.len());
        for (i, it) in items.into_iter().enumerate() {
            out.push(match it {
                None => None,
                Some(e) => {
                    let tenant = match &tenants {
                        None => None,
                        Some(ts) => Some(ts.get(i).cloned().flatten().ok_or_else(|| {
                            refuse(
                                "42501",
                                format!(
                                    "pgveil: {target} is encrypted per tenant: every row with a value needs a tenant id (the tenant array has a NULL there or is shorter)"
                                ),
                            )
                        })?),
                    };
                    let canonical = self.engine.crypto.canonical_param(attr, elem, f, &e)?;
                    let env = self
                        .engine
                        .crypto
                        .encrypt(attr, tenant.as_deref(), &canonical)
                        .await?;
                    Some(envelope_to_stored_binary(attr.storage, &env))
                }
            });
        }
        Ok(m::encode_binary_array(attr.storage.oid(), &out))
    }

    /// The tenant ids in the client's array parameter `q`, as text.
    fn tenant_array(
        &self,
        b: &BindMsg,
        target: &ColumnRef,
        q: usize,
    ) -> Result<Vec<Option<String>>, Refusal> {
        let bad = || {
            refuse(
                "22P02",
                format!(
                    "pgveil: the tenant ids for {target} are not a valid one-dimensional array of tenant ids"
                ),
            )
        };
        let Some(Some(v)) = b.params.get(q) else {
            return Err(refuse(
                "42501",
                format!(
                    "pgveil: {target} is encrypted per tenant: the tenant id array must not be NULL"
                ),
            ));
        };
        if b.param_format(q) == 1 {
            let a = array::decode_binary(v).map_err(|_| bad())?;
            let ty = match a.elem_oid {
                21 => "smallint",
                23 => "integer",
                20 => "bigint",
                2950 => "uuid",
                25 | 1043 => "text",
                _ => return Err(bad()),
            };
            a.items
                .into_iter()
                .map(|it| match it {
                    None => Ok(None),
                    Some(e) => crate::session::values::binary_tenant(ty, &e)
                        .map(Some)
                        .ok_or_else(bad),
                })
                .collect()
        } else {
            let s = std::str::from_utf8(v).map_err(|_| bad())?;
            array::parse_text(s).map_err(|_| bad())
        }
    }

    fn tenant(
        &self,
        entry: &CatalogEntry,
        b: &BindMsg,
        target: &ColumnRef,
        src: &TenantSource,
    ) -> Result<Option<String>, Refusal> {
        match src {
            TenantSource::None => Ok(None),
            TenantSource::Literal(s) => Ok(Some(s.clone())),
            TenantSource::Param(i) => {
                let missing = || {
                    refuse(
                        "42501",
                        format!(
                            "pgveil: {target} is encrypted per tenant: the tenant id parameter must not be NULL"
                        ),
                    )
                };
                let Some(Some(v)) = b.params.get(*i) else {
                    return Err(missing());
                };
                if b.param_format(*i) == 0 {
                    return String::from_utf8(v.to_vec())
                        .map(Some)
                        .map_err(|_| missing());
                }
                let ty = entry
                    .tenant_types
                    .get(&(target.schema.clone(), target.table.clone()))
                    .map(String::as_str)
                    .unwrap_or("text");
                crate::session::values::binary_tenant(ty, v).map(Some).ok_or_else(|| {
                    refuse(
                        "22P02",
                        format!("pgveil: the tenant id for {target} is not a valid {ty} in binary format"),
                    )
                })
            }
        }
    }
}
