//! The plaintext types a policy may declare and the blind-index normalisers.
//! Shared vocabulary of the policy, the SQL rewriter and the crypto core.

use std::fmt;
use std::str::FromStr;

/// A PostgreSQL type OID.
pub type Oid = u32;

/// Plaintext type of a protected column, as written in the policy's `type:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PgType {
    Text,
    Varchar,
    Int2,
    Int4,
    Int8,
    Numeric,
    Bool,
    Date,
    Timestamp,
    Timestamptz,
    Uuid,
    Jsonb,
    Bytea,
}

impl PgType {
    /// Every supported type, in the order error messages list them.
    pub const ALL: [PgType; 13] = [
        PgType::Text,
        PgType::Varchar,
        PgType::Int2,
        PgType::Int4,
        PgType::Int8,
        PgType::Numeric,
        PgType::Bool,
        PgType::Date,
        PgType::Timestamp,
        PgType::Timestamptz,
        PgType::Uuid,
        PgType::Jsonb,
        PgType::Bytea,
    ];

    /// The name used in the policy (and by PostgreSQL's `format_type`).
    pub fn name(self) -> &'static str {
        match self {
            PgType::Text => "text",
            PgType::Varchar => "varchar",
            PgType::Int2 => "int2",
            PgType::Int4 => "int4",
            PgType::Int8 => "int8",
            PgType::Numeric => "numeric",
            PgType::Bool => "bool",
            PgType::Date => "date",
            PgType::Timestamp => "timestamp",
            PgType::Timestamptz => "timestamptz",
            PgType::Uuid => "uuid",
            PgType::Jsonb => "jsonb",
            PgType::Bytea => "bytea",
        }
    }

    /// The type's OID in `pg_type` (stable across PostgreSQL versions).
    pub fn oid(self) -> Oid {
        match self {
            PgType::Text => 25,
            PgType::Varchar => 1043,
            PgType::Int2 => 21,
            PgType::Int4 => 23,
            PgType::Int8 => 20,
            PgType::Numeric => 1700,
            PgType::Bool => 16,
            PgType::Date => 1082,
            PgType::Timestamp => 1114,
            PgType::Timestamptz => 1184,
            PgType::Uuid => 2950,
            PgType::Jsonb => 3802,
            PgType::Bytea => 17,
        }
    }

    /// OID of the array type of this type (for `= ANY($1)` parameters).
    pub fn array_oid(self) -> Oid {
        match self {
            PgType::Text => 1009,
            PgType::Varchar => 1015,
            PgType::Int2 => 1005,
            PgType::Int4 => 1007,
            PgType::Int8 => 1016,
            PgType::Numeric => 1231,
            PgType::Bool => 1000,
            PgType::Date => 1182,
            PgType::Timestamp => 1115,
            PgType::Timestamptz => 1185,
            PgType::Uuid => 2951,
            PgType::Jsonb => 3807,
            PgType::Bytea => 1001,
        }
    }

    /// The supported type with this `pg_type` OID, if any.
    pub fn from_oid(oid: Oid) -> Option<PgType> {
        PgType::ALL.into_iter().find(|t| t.oid() == oid)
    }

    /// The element type of an array type's OID (`1009` → text).
    pub fn from_array_oid(oid: Oid) -> Option<PgType> {
        PgType::ALL.into_iter().find(|t| t.array_oid() == oid)
    }
}

impl fmt::Display for PgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PgType {
    type Err = String;
    /// Accepts the policy names and PostgreSQL's common aliases.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "text" => PgType::Text,
            "varchar" | "character varying" => PgType::Varchar,
            "int2" | "smallint" => PgType::Int2,
            "int4" | "int" | "integer" => PgType::Int4,
            "int8" | "bigint" => PgType::Int8,
            "numeric" | "decimal" => PgType::Numeric,
            "bool" | "boolean" => PgType::Bool,
            "date" => PgType::Date,
            "timestamp" | "timestamp without time zone" => PgType::Timestamp,
            "timestamptz" | "timestamp with time zone" => PgType::Timestamptz,
            "uuid" => PgType::Uuid,
            "jsonb" => PgType::Jsonb,
            "bytea" => PgType::Bytea,
            _ => {
                return Err(format!(
                    "unknown type {s:?}: use one of {}",
                    PgType::ALL.map(|t| t.name()).join(", ")
                ));
            }
        })
    }
}

/// Where a protected column's ciphertext is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Storage {
    /// Raw envelope bytes in a `bytea` column.
    Bytea,
    /// The envelope as printable text (fixed prefix) in a `text` column.
    Text,
}

impl Storage {
    /// OID of the column type holding the ciphertext (`bytea` or `text`).
    pub fn oid(self) -> Oid {
        match self {
            Storage::Bytea => 17,
            Storage::Text => 25,
        }
    }
}

/// A blind-index normaliser, applied in policy order before hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Normalizer {
    /// Remove leading and trailing whitespace.
    Trim,
    /// Unicode lowercase.
    Lowercase,
    /// Unicode uppercase.
    Uppercase,
    /// Remove every whitespace character.
    StripSpaces,
    /// Keep only the ASCII digits.
    DigitsOnly,
}

impl Normalizer {
    /// Every normaliser: the names parsing accepts, in the order errors list them.
    pub const ALL: [Normalizer; 5] = [
        Normalizer::Trim,
        Normalizer::Lowercase,
        Normalizer::Uppercase,
        Normalizer::StripSpaces,
        Normalizer::DigitsOnly,
    ];

    /// The name used in the policy's `normalize:` list.
    pub fn name(self) -> &'static str {
        match self {
            Normalizer::Trim => "trim",
            Normalizer::Lowercase => "lowercase",
            Normalizer::Uppercase => "uppercase",
            Normalizer::StripSpaces => "strip_spaces",
            Normalizer::DigitsOnly => "digits_only",
        }
    }

    /// Apply to a text value.
    pub fn apply(self, s: &str) -> String {
        match self {
            Normalizer::Trim => s.trim().to_string(),
            Normalizer::Lowercase => s.to_lowercase(),
            Normalizer::Uppercase => s.to_uppercase(),
            Normalizer::StripSpaces => s.chars().filter(|c| !c.is_whitespace()).collect(),
            Normalizer::DigitsOnly => s.chars().filter(|c| c.is_ascii_digit()).collect(),
        }
    }
}

impl FromStr for Normalizer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Normalizer::ALL
            .into_iter()
            .find(|n| n.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown normaliser {s:?}: use one of {}",
                    Normalizer::ALL.map(|n| n.name()).join(", ")
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in PgType::ALL {
            assert_eq!(t.name().parse::<PgType>().unwrap(), t);
            assert_eq!(PgType::from_oid(t.oid()), Some(t));
        }
        for n in Normalizer::ALL {
            assert_eq!(n.name().parse::<Normalizer>().unwrap(), n);
        }
        assert!("money".parse::<PgType>().is_err());
    }

    #[test]
    fn normalisers() {
        assert_eq!(Normalizer::Trim.apply("  a b "), "a b");
        assert_eq!(Normalizer::StripSpaces.apply(" a b "), "ab");
        assert_eq!(Normalizer::DigitsOnly.apply("123-45-6789"), "123456789");
        assert_eq!(
            Normalizer::Lowercase.apply("Alice@Example.COM"),
            "alice@example.com"
        );
    }
}
