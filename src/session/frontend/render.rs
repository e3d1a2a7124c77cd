//! The literals of a rewritten statement, encrypted or blind-indexed into
//! its text (simple Query and Parse); with the extended protocol a literal
//! whose tenant is a Bind parameter becomes an appended parameter instead,
//! encrypted at Bind. Also where a planned column is looked up in the
//! catalog. Never puts a plaintext value of a protected column in the text.

use std::sync::Arc;

use super::Frontend;
use super::refusal::{Refusal, internal_slot, refuse};
use crate::crypto::Storage;
use crate::policy::catalog::ProtectedAttr;
use crate::session::CatalogEntry;
use crate::session::values::{
    Form, Sent, ValueError, array_literal, bytea_literal, envelope_literal, stored_to_envelope,
};
use crate::sql::array;
use crate::sql::{ColumnRef, LiteralSlot, RewritePlan, SlotOp, TenantSource};

impl Frontend {
    pub(super) fn attr(
        &self,
        entry: &CatalogEntry,
        c: &ColumnRef,
    ) -> Result<Arc<ProtectedAttr>, Refusal> {
        entry.column(c).cloned().ok_or_else(|| {
            refuse(
                "0A000",
                format!(
                    "pgveil: protected column {c} is not in the database catalog as the policy expects: run `pgveil policy check --database …` and apply the fixes it prints"
                ),
            )
        })
    }

    /// Render a rewritten statement, encrypting its literal slots. With
    /// `extended`, a literal whose tenant is a parameter cannot be encrypted
    /// before Bind: it becomes an appended parameter, and the indices of
    /// such slots are returned.
    pub(super) async fn render(
        &mut self,
        rp: &RewritePlan,
        extended: bool,
    ) -> Result<(String, Vec<usize>), Refusal> {
        if rp.kind == crate::sql::StatementKind::Declare {
            self.protected_cursors = true;
        }
        let entry = self.entry();
        let mut rendered = Vec::with_capacity(rp.literals.len());
        let mut deferred = Vec::new();
        for (i, slot) in rp.literals.iter().enumerate() {
            if extended
                && slot.value.is_some()
                && slot.op == SlotOp::Encrypt
                && matches!(slot.tenant, TenantSource::Param(_))
            {
                deferred.push(i);
                rendered.push(format!("${}", rp.params.len() + deferred.len()));
                continue;
            }
            rendered.push(self.render_literal(&entry, slot).await?);
        }
        Ok((rp.render(|i, _| rendered[i].clone()), deferred))
    }

    /// One literal slot as it stands in the statement's text: `NULL`, or
    /// its value encrypted, blind-indexed or checked to be an envelope.
    pub(super) async fn render_literal(
        &self,
        entry: &CatalogEntry,
        slot: &LiteralSlot,
    ) -> Result<String, Refusal> {
        let Some(value) = &slot.value else {
            return Ok("NULL".into());
        };
        let attr = self.attr(entry, &slot.target)?;
        let crypto = &self.engine.crypto;
        match slot.op {
            SlotOp::Encrypt => {
                let tenant = match &slot.tenant {
                    TenantSource::None => None,
                    TenantSource::Literal(t) => Some(t.clone()),
                    // Simple protocol has no parameters; extended defers.
                    TenantSource::Param(_) => None,
                };
                Ok(crypto.seal_literal(&attr, tenant.as_deref(), value).await?)
            }
            SlotOp::BlindIndex | SlotOp::BlindIndexNext => {
                let next = slot.op == SlotOp::BlindIndexNext;
                let idx = crypto.index(&attr, next, Sent::Text(value.as_bytes()))?;
                Ok(bytea_literal(&idx))
            }
            SlotOp::EncryptArray => {
                let items = array::parse_text(value).map_err(|_| internal_slot())?;
                let mut out = Vec::with_capacity(items.len());
                for (i, it) in items.iter().enumerate() {
                    out.push(match it {
                        None => None,
                        Some(v) => {
                            let tenant = match slot.tenants.get(i) {
                                Some(TenantSource::Literal(t)) => Some(t.as_str()),
                                _ if attr.tenant.is_some() => return Err(internal_slot()),
                                _ => None,
                            };
                            let sent = Sent::Text(v.as_bytes());
                            Some(crypto.seal(&attr, tenant, sent, Form::Envelope).await?)
                        }
                    });
                }
                Ok(array_literal(attr.storage, &out))
            }
            SlotOp::BlindIndexArray | SlotOp::BlindIndexNextArray => {
                let items = array::parse_text(value).map_err(|_| internal_slot())?;
                let mut out = Vec::with_capacity(items.len());
                for it in &items {
                    out.push(match it {
                        None => None,
                        Some(v) => {
                            let next = slot.op == SlotOp::BlindIndexNextArray;
                            Some(
                                crypto
                                    .index(&attr, next, Sent::Text(v.as_bytes()))?
                                    .to_vec(),
                            )
                        }
                    });
                }
                Ok(array_literal(Storage::Bytea, &out))
            }
            SlotOp::RequireEnvelope => {
                let env =
                    stored_to_envelope(attr.storage, 0, value.as_bytes()).ok_or_else(|| {
                        ValueError::NotEnvelope {
                            column: attr.column.to_string(),
                        }
                    })?;
                Ok(envelope_literal(attr.storage, &env))
            }
        }
    }
}
