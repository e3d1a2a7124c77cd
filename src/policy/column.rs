//! [`ColumnRef`], the name of one column (`schema.table.column`). Defined
//! with the policy that names protected columns, so that `policy::catalog`
//! does not import it from `sql` (which depends on `policy`); `sql`
//! re-exports it for the analyzer's plans.

use std::fmt;

/// A column of a table: `schema.table.column`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ColumnRef {
    /// The schema.
    pub schema: String,
    /// The table.
    pub table: String,
    /// The column.
    pub column: String,
}

impl ColumnRef {
    /// `schema.table.column`.
    pub fn new(schema: &str, table: &str, column: &str) -> ColumnRef {
        ColumnRef {
            schema: schema.to_string(),
            table: table.to_string(),
            column: column.to_string(),
        }
    }
}

impl fmt::Display for ColumnRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.schema, self.table, self.column)
    }
}
