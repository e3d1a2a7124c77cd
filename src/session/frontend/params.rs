//! A Bind's array parameters and tenant ids: a one-dimensional array
//! parameter read strictly (its element type checked as PostgreSQL's
//! `array_recv` does), its elements blind-indexed or encrypted through
//! `seal` with the tenant at the same position, and the tenant id a value
//! is encrypted under, read from a literal or a parameter. A NULL or
//! unreadable tenant id, or an array element of a per-tenant column
//! without one, is refused, never encrypted without its tenant.

use bytes::Bytes;

use super::Frontend;
use super::refusal::{Refusal, refuse};
use crate::policy::catalog::ProtectedAttr;
use crate::session::CatalogEntry;
use crate::session::values::{Form, Sent, ValueError};
use crate::sql::array::{self, ArrayError};
use crate::sql::{ArrayTenant, ColumnRef, TenantSource};
use crate::wire::query::{BindMsg, encode_binary_array};

impl Frontend {
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
    pub(super) fn blind_index_array(
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
                    let sent = Sent::Param {
                        declared: elem.unwrap_or(0),
                        format: f,
                        value: &e,
                    };
                    Some(self.engine.crypto.index(attr, next, sent)?.to_vec())
                }
            });
        }
        Ok(encode_binary_array(17, &out))
    }

    /// Each element of an array parameter encrypted for `attr`, with the
    /// tenant at the same position: an array of envelopes in the column's
    /// storage type (binary `bytea[]` or `text[]`).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn encrypt_array(
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
                    let sent = Sent::Param {
                        declared: elem,
                        format: f,
                        value: &e,
                    };
                    Some(
                        self.engine
                            .crypto
                            .seal(attr, tenant.as_deref(), sent, Form::Binary)
                            .await?,
                    )
                }
            });
        }
        Ok(encode_binary_array(attr.storage.oid(), &out))
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

    /// The tenant id `src` names for a value of `target`: none, a literal,
    /// or a Bind parameter (text, or binary of the tenant column's type).
    pub(super) fn tenant(
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
