//! `pgveil policy check --database URL`: compare the policy with the live
//! schema and say, for each mismatch, which policy line it concerns and the
//! exact statement that fixes it.

use std::fmt;
use std::path::PathBuf;

use super::catalog::{CATALOG_QUERY, Catalog, Relation};
use super::ident::quote_ident;
use super::{Policy, TablePolicy};
use crate::yaml;

/// One mismatch between policy and schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaProblem {
    /// The policy file.
    pub file: PathBuf,
    /// Line of the policy entry concerned.
    pub line: Option<usize>,
    /// What is wrong (names only).
    pub message: String,
    /// The statement that fixes it, when there is one.
    pub fix: Option<String>,
}

impl fmt::Display for SchemaProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.file.display(), l, self.message)?,
            None => write!(f, "{}: {}", self.file.display(), self.message)?,
        }
        if let Some(fix) = &self.fix {
            write!(f, "\n    fix: {fix}")?;
        }
        Ok(())
    }
}

/// Check the live schema behind `client` against `policy` (whose text is
/// `policy_text`, for line numbers). Returns every problem found; an empty
/// list means the schema is ready. A failing catalog query is reported as a
/// problem too.
pub async fn check_schema(
    policy: &Policy,
    policy_text: &str,
    client: &tokio_postgres::Client,
) -> Vec<SchemaProblem> {
    let catalog = match load_catalog(policy, client).await {
        Ok(catalog) => catalog,
        Err(e) => {
            return vec![SchemaProblem {
                file: policy.path.clone(),
                line: None,
                message: format!("cannot read the database catalog: {e}"),
                fix: None,
            }];
        }
    };
    problems(policy, policy_text, &catalog)
}

/// Read the catalog of `policy`'s tables through `client` ([`CATALOG_QUERY`],
/// every column as text). Shared by [`check_schema`] and `pgveil encrypt` /
/// `rotate` (`ops::backfill::load_catalog`), which word the error each
/// their own way.
pub async fn load_catalog(
    policy: &Policy,
    client: &tokio_postgres::Client,
) -> Result<Catalog, tokio_postgres::Error> {
    let names = Catalog::query_param(policy);
    let rows = client.query(CATALOG_QUERY.as_str(), &[&names]).await?;
    let rows: Vec<Vec<Option<String>>> = rows
        .iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.get::<_, Option<String>>(i))
                .collect()
        })
        .collect();
    Ok(Catalog::from_rows(policy, rows))
}

/// The comparison itself, on an already-loaded catalog.
pub fn problems(policy: &Policy, text: &str, catalog: &Catalog) -> Vec<SchemaProblem> {
    let mut out = vec![];
    let file = policy.path.clone();
    let mut push = |line: Option<usize>, message: String, fix: Option<String>| {
        out.push(SchemaProblem {
            file: file.clone(),
            line,
            message,
            fix,
        });
    };
    for t in &policy.tables {
        table_problems(t, text, catalog, &mut push);
    }
    // Tables related to protected ones by inheritance or partitioning that
    // pgveil refuses (a child with other columns, a parent): every
    // statement naming them through pgveil is refused until the policy or
    // the schema changes.
    let mut related: Vec<(&(String, String), &String)> = catalog
        .children
        .iter()
        .filter_map(|(k, v)| v.as_ref().err().map(|m| (k, m)))
        .collect();
    related.sort();
    for ((schema, table), msg) in related {
        let line = policy
            .table(schema, table)
            .and_then(|t| t.line)
            .or_else(|| yaml::locate(text, &["tables", &format!("{schema}.{table}")]));
        push(line, msg.trim_start_matches("pgveil: ").to_string(), None);
    }
    out
}

/// The problems of one policy table: missing or wrongly typed protected,
/// blind-index and tenant columns (each with its fix), a missing table, a
/// view listed as a table.
fn table_problems(
    t: &TablePolicy,
    text: &str,
    catalog: &Catalog,
    push: &mut impl FnMut(Option<usize>, String, Option<String>),
) {
    let key = t.qualified();
    let qt = format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.table));
    let tline = t.line.or_else(|| yaml::locate(text, &["tables", &key]));
    let Some(rel) = catalog.relation(&t.schema, &t.table) else {
        push(
            tline,
            format!(
                "table {key} does not exist in the database (or this role cannot see it): create it, or fix the name in the policy"
            ),
            None,
        );
        return;
    };
    if rel.is_view() {
        push(
            tline,
            format!("{key} is a view: list the base table in the policy instead"),
            None,
        );
        return;
    }
    for c in &t.columns {
        let line = c
            .line
            .or_else(|| yaml::locate(text, &["tables", &key, "columns", &c.name]));
        let qc = quote_ident(&c.name);
        match column_type(rel, &c.name) {
            None => push(
                line,
                format!("protected column {key}.{} does not exist", c.name),
                Some(format!("ALTER TABLE {qt} ADD COLUMN {qc} bytea;")),
            ),
            Some("bytea") | Some("text") => {}
            Some(other) => push(
                line,
                format!(
                    "protected column {key}.{} is {other}: it must be bytea or text to hold ciphertext (then run `pgveil encrypt` to encrypt existing values)",
                    c.name
                ),
                Some(format!(
                    "ALTER TABLE {qt} ALTER COLUMN {qc} TYPE text USING {qc}::text;"
                )),
            ),
        }
        if let Some(b) = &c.blind_index {
            let bline = b.line.or(line);
            for bcol in std::iter::once(&b.column).chain(b.next.iter()) {
                let qb = quote_ident(bcol);
                match column_type(rel, bcol) {
                    None => push(
                        bline,
                        format!(
                            "blind-index column {key}.{bcol} (of {}) does not exist",
                            c.name
                        ),
                        Some(format!(
                            "ALTER TABLE {qt} ADD COLUMN {qb} bytea; CREATE INDEX ON {qt} ({qb});"
                        )),
                    ),
                    Some("bytea") => {}
                    Some(other) => push(
                        bline,
                        format!(
                            "blind-index column {key}.{bcol} is {other}: it must be bytea (pgveil refills it with `pgveil encrypt`)"
                        ),
                        Some(format!(
                            "ALTER TABLE {qt} ALTER COLUMN {qb} TYPE bytea USING NULL::bytea;"
                        )),
                    ),
                }
            }
        }
    }
    if let Some(tc) = &t.tenant
        && column_type(rel, tc).is_none()
    {
        let line = t
            .tenant_line
            .or_else(|| yaml::locate(text, &["tables", &key, "tenant"]));
        push(
            line,
            format!("tenant column {key}.{tc} does not exist"),
            Some(format!(
                "ALTER TABLE {qt} ADD COLUMN {} bigint NOT NULL; -- use the type of your tenant ids",
                quote_ident(tc)
            )),
        );
    }
}

/// The type (`format_type`) of `rel`'s column `col`, if it has one.
fn column_type<'a>(rel: &'a Relation, col: &str) -> Option<&'a str> {
    rel.columns
        .iter()
        .find(|c| c.1 == col)
        .map(|c| c.2.as_str())
}
