//! Descriptions: ParameterDescription and RowDescription show the roles
//! that may read the policy's plaintext types for protected columns, and
//! each RowDescription decides the shape the rows after it are decrypted
//! with (per portal, per simple-query statement, or the binary result of a
//! simple-query SELECT pgveil sent as Parse/Bind, `Pending::ResultShape`).
//! NoData ends a Describe the same way. Invariant: rows are shaped by
//! PostgreSQL's description of their result, never by the plan alone.

use std::sync::Arc;

use bytes::BytesMut;

use super::Backend;
use crate::crypto::PgType;
use crate::session::rows::tenant_type;
use crate::session::{Decrypt, Kind, Pending, Shape};
use crate::wire::codec::Frame;
use crate::wire::error;
use crate::wire::result::{
    Field, decode_parameter_description, decode_row_description, encode_parameter_description,
    encode_row_description,
};

/// The requests a NoData answers: a Describe, or pgveil's own for a
/// simple-query SELECT (`Pending::ResultShape`).
pub(super) const NO_DATA_ANSWERS: &[Kind] = &[
    Kind::DescribeStatement,
    Kind::DescribePortal,
    Kind::ResultShape,
];

impl Backend {
    /// ParameterDescription: the client's view of a planned statement's
    /// parameters.
    pub(super) fn on_parameter_description(&mut self, f: &Frame, out: &mut BytesMut) {
        if !self.expect(
            &[Kind::DescribeStatement],
            "ParameterDescription without a Describe",
            out,
        ) {
            return;
        }
        let prepared = match self.exchange.pending.lock().expect("pending queue").front() {
            Some(Pending::DescribeStatement { prepared }) => prepared.clone(),
            _ => None,
        };
        let plan = prepared.as_ref().and_then(|p| p.plan.clone());
        tracing::debug!(
            known = prepared.is_some(),
            rewritten = plan.is_some(),
            "parameter description"
        );
        let (Some(plan), Some(server)) = (plan, decode_parameter_description(f.body())) else {
            out.extend_from_slice(&f.raw);
            return;
        };
        let n = prepared.as_ref().map(|p| p.client_params).unwrap_or(0);
        let declared = prepared.as_ref().map(|p| &p.declared[..]).unwrap_or(&[]);
        let mut types = vec![0u32; n];
        for (i, t) in types.iter_mut().enumerate() {
            // A type the client declared in Parse is what PostgreSQL would
            // report, and what the client will send (Bind converts it to
            // the policy's type); drivers such as pgjdbc insist on it.
            if let Some(&d) = declared.get(i).filter(|&&d| d != 0) {
                *t = d;
            } else if let Some(&(_, ty, array)) =
                plan.param_type_overrides.iter().find(|o| o.0 == i)
            {
                *t = if array { ty.array_oid() } else { ty.oid() };
            } else if let Some(j) = plan
                .params
                .iter()
                .position(|a| matches!(a, crate::sql::ParamAction::Copy { orig } if *orig == i))
                .or_else(|| plan.params.iter().position(|a| a.orig() == i))
            {
                *t = server.get(j).copied().unwrap_or(0);
            }
        }
        encode_parameter_description(out, &types);
    }

    /// RowDescription of a Describe or a simple Query: the row shape of
    /// what follows, with the plaintext types where the role reads.
    pub(super) fn on_row_description(&mut self, f: &Frame, out: &mut BytesMut) {
        if !self.expect(
            &[
                Kind::DescribeStatement,
                Kind::DescribePortal,
                Kind::ResultShape,
                Kind::Query,
            ],
            "RowDescription without a Describe or Query",
            out,
        ) {
            return;
        }
        if self.front_is(|p| matches!(p, Pending::ResultShape)) {
            self.on_result_shape(f, out);
            return;
        }
        let front = self
            .exchange
            .pending
            .lock()
            .expect("pending queue")
            .front()
            .map(|p| match p {
                Pending::DescribeStatement { prepared } => (
                    0u8,
                    prepared
                        .as_ref()
                        .is_some_and(|p| p.plan.is_some() || p.copy.is_some()),
                    String::new(),
                    false,
                ),
                Pending::DescribePortal {
                    portal,
                    protected,
                    internal,
                } => (1u8, *protected, portal.clone(), *internal),
                Pending::Query { protected, .. } => (2u8, *protected, String::new(), false),
                _ => (3u8, false, String::new(), false),
            });
        let Some((kind, protected, portal, internal)) = front else {
            out.extend_from_slice(&f.raw);
            return;
        };
        if kind <= 1 {
            self.exchange.pop();
        }
        if !protected {
            if kind == 1 {
                self.portal_shapes.remove(&portal);
            }
            if kind == 2 {
                self.current = None;
            }
            if !internal {
                out.extend_from_slice(&f.raw);
            }
            return;
        }
        let Some(mut fields) = decode_row_description(f.body()) else {
            out.extend_from_slice(&f.raw);
            return;
        };
        let shape = self.shape(&mut fields);
        match kind {
            1 => {
                self.portal_shapes.insert(portal, shape.clone());
            }
            2 => self.current = Some(shape.clone()),
            _ => {}
        }
        if internal {
            return;
        }
        if shape.iter().any(Option::is_some) {
            encode_row_description(out, &fields);
        } else {
            out.extend_from_slice(&f.raw);
        }
    }

    /// NoData: a Describe (or pgveil's own for a simple-query SELECT)
    /// whose statement or portal returns no rows.
    pub(super) fn on_no_data(&mut self, f: &Frame, out: &mut BytesMut) {
        if !self.expect(NO_DATA_ANSWERS, "NoData without a Describe", out) {
            return;
        }
        let internal = match self.exchange.pop() {
            // A simple Query that returns no rows sends no
            // RowDescription.
            Some(Pending::ResultShape) => true,
            Some(Pending::DescribePortal {
                portal, internal, ..
            }) => {
                self.portal_shapes.remove(&portal);
                internal
            }
            _ => false,
        };
        if !internal {
            out.extend_from_slice(&f.raw);
        }
    }

    /// The portal RowDescription of a simple-query SELECT that pgveil sent
    /// as Parse/Bind with binary results for protected `bytea` columns
    /// (`Frontend::binary_result_formats`). Every binary column must be one
    /// this role gets decrypted: the client asked for text, and pgveil
    /// renders only what it decrypts. Anything else (the table changed
    /// after the statement was analysed) ends the statement with an error
    /// before any row reaches the client.
    fn on_result_shape(&mut self, f: &Frame, out: &mut BytesMut) {
        self.exchange.pop();
        let fields = decode_row_description(f.body());
        let Some(mut fields) = fields else {
            self.result_changed(out);
            return;
        };
        let mut shape = self.shape_of(&mut fields);
        for (field, d) in fields.iter_mut().zip(shape.iter_mut()) {
            match (field.format, d) {
                (0, _) => {}
                (1, Some(d)) if d.attr.storage == crate::crypto::Storage::Bytea => {
                    d.wire = 1;
                    d.format = 0;
                    field.format = 0;
                }
                _ => {
                    self.result_changed(out);
                    return;
                }
            }
        }
        encode_row_description(out, &fields);
        self.current = Some(Arc::new(shape));
    }

    fn result_changed(&mut self, out: &mut BytesMut) {
        tracing::warn!("a result's columns differ from the statement's analysis; statement failed");
        out.extend_from_slice(&error::error_response(
            "ERROR",
            "0A000",
            "pgveil: the columns of this result differ from what pgveil analysed (the table changed?): run the statement again",
        ));
        self.current = None;
        self.discard_until_ready = true;
    }

    /// Which fields this role gets decrypted, rewriting their types to the
    /// policy's plaintext types.
    fn shape(&self, fields: &mut [Field]) -> Shape {
        Arc::new(self.shape_of(fields))
    }

    fn shape_of(&self, fields: &mut [Field]) -> Vec<Option<Decrypt>> {
        let entry = self.exchange.entry();
        let policy = &self.engine.policy;
        let role = &self.id.login_role;
        // Tenant columns present in this result, by table OID.
        let tenants: Vec<(u32, usize, i16)> = fields
            .iter()
            .enumerate()
            .filter(|(_, f)| entry.catalog.tenant.contains_key(&(f.table_oid, f.attnum)))
            .map(|(i, f)| (f.table_oid, i, f.format))
            .collect();
        fields
            .iter_mut()
            .map(|f| {
                if f.table_oid == 0 {
                    return None;
                }
                if let Some(owner) = entry.catalog.blind_index.get(&(f.table_oid, f.attnum)) {
                    let attr = entry.column(owner)?;
                    if policy
                        .column_access(role, &attr.policy)
                        .is_some_and(|a| a.search)
                    {
                        return None;
                    }
                    return Some(Decrypt {
                        attr: attr.clone(),
                        format: f.format,
                        wire: f.format,
                        tenant: None,
                        aad_names: Arc::from(&[][..]),
                        mask: true,
                    });
                }
                let attr = entry.by_attr.get(&(f.table_oid, f.attnum))?;
                let access = policy.column_access(role, &attr.policy)?;
                if !access.read_plaintext {
                    return None;
                }
                f.type_oid = attr.policy.ty.oid();
                f.type_len = type_len(attr.policy.ty);
                f.type_mod = -1;
                let tenant = tenants
                    .iter()
                    .find(|t| t.0 == f.table_oid)
                    .map(|&(_, i, fmt)| {
                        let ty = tenant_type(&entry, &attr.column);
                        (i, ty, fmt)
                    });
                Some(Decrypt::read(attr.clone(), f.format, tenant))
            })
            .collect()
    }
}

/// `typlen` of a plaintext type, for RowDescription.
fn type_len(t: PgType) -> i16 {
    match t {
        PgType::Int2 => 2,
        PgType::Int4 | PgType::Date => 4,
        PgType::Int8 | PgType::Timestamp | PgType::Timestamptz => 8,
        PgType::Bool => 1,
        PgType::Uuid => 16,
        _ => -1,
    }
}
