//! Rows of the catalog query written by hand, for the tests of the
//! catalog (`policy::tests`) and of the analyzer over one (`sql`'s unit
//! tests). Test code only.

/// One catalog row for a relation in `public`: oid, attnum, relname,
/// relkind, attname, type, viewdef, parents (no `reads`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn cat_row(
    oid: &str,
    att: &str,
    t: &str,
    k: &str,
    c: &str,
    ty: &str,
    def: Option<&str>,
    parents: Option<&str>,
) -> Vec<Option<String>> {
    vec![
        Some(oid.to_string()),
        Some(att.to_string()),
        Some("public".to_string()),
        Some(t.to_string()),
        Some(k.to_string()),
        Some(c.to_string()),
        Some(ty.to_string()),
        def.map(str::to_string),
        parents.map(str::to_string),
    ]
}
