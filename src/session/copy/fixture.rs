//! A COPY plan for unit tests, shared by COPY FROM's (`copy::tests`) and
//! COPY TO's (`copy_out::tests`): `public.t` with PostgreSQL's default
//! options for its format. Test code only.

use crate::sql::{CopyDirection, CopyFormat, CopyPlan};

/// A plan for `public.t` in `format` with that format's default options,
/// `columns` fields of which none is decrypted.
pub(in crate::session) fn plan(
    format: CopyFormat,
    direction: CopyDirection,
    columns: usize,
) -> CopyPlan {
    let csv = format == CopyFormat::Csv;
    CopyPlan {
        schema: "public".into(),
        table: "t".into(),
        columns: None,
        format,
        delimiter: if csv { ',' } else { '\t' },
        null: if csv { String::new() } else { "\\N".into() },
        header: false,
        quote: '"',
        escape: if csv { '"' } else { '\\' },
        direction,
        sql: String::new(),
        fields: vec![],
        appended: vec![],
        appended_columns: vec![],
        force_not_null: vec![],
        force_null: vec![],
        decrypt: vec![None; columns],
        force_quote: vec![],
        source: 0..0,
    }
}
