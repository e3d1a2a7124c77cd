//! COPY options as PostgreSQL 15 reads them (`ProcessCopyOptions`).
//!
//! pgveil parses the rows of a COPY it encrypts or decrypts itself, so it
//! must read the options exactly as PostgreSQL does: for COPY FROM into a
//! protected table (`strict`) every option or combination pgveil does not
//! read the same way is refused, naming the option, and options written as
//! string forms PostgreSQL could read differently (escape, Unicode or
//! dollar quoting, adjacent literals) are refused on the statement's tokens.

use sqlparser::ast::{CopyLegacyCsvOption, CopyLegacyOption, CopyOption};
use sqlparser::dialect::PostgreSqlDialect;

use crate::sql::rewrite::{R, norm};
use crate::sql::{CopyFormat, Reject, pglex};

/// COPY options as PostgreSQL reads them.
pub(super) struct CopyOpts {
    pub(super) format: CopyFormat,
    pub(super) delimiter: char,
    pub(super) null: String,
    pub(super) header: bool,
    pub(super) quote: char,
    pub(super) escape: char,
    pub(super) force_not_null: Vec<String>,
    pub(super) force_null: Vec<String>,
    /// `FORCE_QUOTE` columns (COPY TO only).
    pub(super) force_quote: Vec<String>,
    pub(super) freeze: bool,
    /// `ENCODING` was given (it can only be UTF8).
    pub(super) utf8: bool,
    /// The `ENCODING` given, lower case without punctuation (`utf8`).
    pub(super) encoding: Option<String>,
}

/// Read the options of a COPY. `strict` (COPY FROM into a protected
/// table): refuse every option or combination pgveil does not read exactly
/// as PostgreSQL 15 does (`ProcessCopyOptions`), naming the option.
pub(super) fn copy_options(
    options: &[CopyOption],
    legacy: &[CopyLegacyOption],
    strict: bool,
    table: &str,
) -> R<CopyOpts> {
    let unsupported = |what: &str, alt: &str| {
        Reject::unsupported(format!(
            "pgveil: COPY option {what} is not supported for COPY into protected table {table}: {alt}"
        ))
    };
    let mut seen: Vec<&'static str> = vec![];
    let mut once = |name: &'static str| -> R<()> {
        if strict && seen.contains(&name) {
            return Err(unsupported(name, "give each option once"));
        }
        seen.push(name);
        Ok(())
    };
    let mut format = CopyFormat::Text;
    let mut delimiter = None;
    let mut null = None;
    let mut header = false;
    let mut quote = None;
    let mut escape = None;
    let mut force_not_null = vec![];
    let mut force_null = vec![];
    let mut force_quote = vec![];
    let mut freeze = false;
    let mut utf8 = false;
    let mut encoding = None;
    if strict && !options.is_empty() && !legacy.is_empty() {
        return Err(unsupported(
            "lists in both syntaxes",
            "use either (option value, …) or the legacy WITH syntax",
        ));
    }
    for o in options {
        match o {
            CopyOption::Format(f) => {
                once("FORMAT")?;
                format = match norm(f).as_str() {
                    "text" => CopyFormat::Text,
                    "csv" => CopyFormat::Csv,
                    "binary" => CopyFormat::Binary,
                    _ if strict => {
                        return Err(unsupported("FORMAT", "use FORMAT text or FORMAT csv"));
                    }
                    _ => CopyFormat::Text,
                }
            }
            CopyOption::Freeze(f) => {
                once("FREEZE")?;
                freeze = *f;
            }
            CopyOption::Delimiter(c) => {
                once("DELIMITER")?;
                delimiter = Some(*c);
            }
            CopyOption::Null(s) => {
                once("NULL")?;
                null = Some(s.clone());
            }
            CopyOption::Header(h) => {
                once("HEADER")?;
                header = *h;
            }
            CopyOption::Quote(c) => {
                once("QUOTE")?;
                quote = Some(*c);
            }
            CopyOption::Escape(c) => {
                once("ESCAPE")?;
                escape = Some(*c);
            }
            CopyOption::ForceQuote(cols) => {
                once("FORCE_QUOTE")?;
                if strict {
                    return Err(unsupported("FORCE_QUOTE", "it applies to COPY TO only"));
                }
                force_quote = cols.iter().map(norm).collect();
            }
            CopyOption::ForceNotNull(cols) => {
                once("FORCE_NOT_NULL")?;
                force_not_null = cols.iter().map(norm).collect();
            }
            CopyOption::ForceNull(cols) => {
                once("FORCE_NULL")?;
                force_null = cols.iter().map(norm).collect();
            }
            CopyOption::Encoding(e) => {
                once("ENCODING")?;
                let name: String = e
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric())
                    .collect::<String>()
                    .to_ascii_lowercase();
                utf8 = true;
                encoding = Some(name.clone());
                if strict && name != "utf8" && name != "unicode" {
                    return Err(unsupported(
                        "ENCODING",
                        "send the data in UTF8 (ENCODING 'UTF8' or no ENCODING option)",
                    ));
                }
            }
        }
    }
    for o in legacy {
        match o {
            CopyLegacyOption::Binary => {
                once("FORMAT")?;
                format = CopyFormat::Binary;
            }
            CopyLegacyOption::Delimiter(c) => {
                once("DELIMITER")?;
                delimiter = Some(*c);
            }
            CopyLegacyOption::Null(s) => {
                once("NULL")?;
                null = Some(s.clone());
            }
            CopyLegacyOption::Header => {
                once("HEADER")?;
                header = true;
            }
            CopyLegacyOption::Csv(cs) => {
                once("FORMAT")?;
                format = CopyFormat::Csv;
                for c in cs {
                    match c {
                        CopyLegacyCsvOption::Header => {
                            once("HEADER")?;
                            header = true;
                        }
                        CopyLegacyCsvOption::Quote(q) => {
                            once("QUOTE")?;
                            quote = Some(*q);
                        }
                        CopyLegacyCsvOption::Escape(e) => {
                            once("ESCAPE")?;
                            escape = Some(*e);
                        }
                        CopyLegacyCsvOption::ForceNotNull(cols) => {
                            once("FORCE_NOT_NULL")?;
                            force_not_null = cols.iter().map(norm).collect();
                        }
                        CopyLegacyCsvOption::ForceQuote(_) if strict => {
                            return Err(unsupported("FORCE QUOTE", "it applies to COPY TO only"));
                        }
                        CopyLegacyCsvOption::ForceQuote(cols) => {
                            force_quote = cols.iter().map(norm).collect();
                        }
                    }
                }
            }
            _ if strict => {
                return Err(unsupported(
                    "in this form",
                    "write PostgreSQL's COPY options: (FORMAT csv, HEADER, DELIMITER ',', QUOTE '\"', ESCAPE '\"', NULL '…')",
                ));
            }
            _ => {}
        }
    }
    let csv = format == CopyFormat::Csv;
    let opts = CopyOpts {
        format,
        delimiter: delimiter.unwrap_or(if csv { ',' } else { '\t' }),
        null: null
            .clone()
            .unwrap_or_else(|| if csv { String::new() } else { "\\N".into() }),
        header,
        quote: quote.unwrap_or('"'),
        escape: escape.or(quote).unwrap_or('"'),
        force_not_null,
        force_null,
        force_quote,
        freeze,
        utf8,
        encoding,
    };
    let opts = CopyOpts {
        escape: if csv { opts.escape } else { '\\' },
        ..opts
    };
    if !strict {
        return Ok(opts);
    }
    // PostgreSQL's own checks (it would refuse these too; pgveil refuses
    // first so that it never reads data under options PostgreSQL rejects).
    if !csv {
        for (name, given) in [
            ("QUOTE", quote.is_some()),
            ("ESCAPE", escape.is_some()),
            ("FORCE_NOT_NULL", !opts.force_not_null.is_empty()),
            ("FORCE_NULL", !opts.force_null.is_empty()),
        ] {
            if given {
                return Err(unsupported(name, "it is available in CSV format only"));
            }
        }
    }
    let d = opts.delimiter;
    if !d.is_ascii() || d == '\n' || d == '\r' || d == '\0' {
        return Err(unsupported(
            "DELIMITER",
            "use a single one-byte character other than newline and carriage return",
        ));
    }
    if !csv && "\\.abcdefghijklmnopqrstuvwxyz0123456789".contains(d) {
        return Err(unsupported(
            "DELIMITER",
            "in text format it cannot be a backslash, a period, a lower-case letter or a digit",
        ));
    }
    if opts.null.contains(['\n', '\r', '\0']) {
        return Err(unsupported(
            "NULL",
            "the NULL string cannot contain newline or carriage return",
        ));
    }
    if opts.null.contains(d) {
        return Err(unsupported(
            "NULL",
            "the delimiter must not appear in the NULL string",
        ));
    }
    if csv {
        let (q, e) = (opts.quote, opts.escape);
        if !q.is_ascii() || !e.is_ascii() || q == '\0' || e == '\0' {
            return Err(unsupported(
                "QUOTE/ESCAPE",
                "use single one-byte characters",
            ));
        }
        if q == d {
            return Err(unsupported(
                "QUOTE",
                "the delimiter and the quote must differ",
            ));
        }
        if opts.null.contains(q) {
            return Err(unsupported(
                "NULL",
                "the quote character must not appear in the NULL string",
            ));
        }
    }
    Ok(opts)
}

/// Refuse COPY options written as string forms whose value pgveil's parser
/// might read differently from PostgreSQL (escape, Unicode and dollar
/// quoting, adjacent literals that PostgreSQL concatenates).
pub(super) fn plain_option_literals(text: &str, table: &str) -> R<()> {
    use sqlparser::tokenizer::{Token, Tokenizer};
    let refuse = || {
        Reject::unsupported(format!(
            "pgveil: the COPY options of protected table {table} must be plain '…' strings: write them without E'', U&'', dollar quoting or adjacent literals"
        ))
    };
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, text)
        .tokenize()
        .map_err(|_| refuse())?;
    let mut last_string = false;
    for tok in &tokens {
        match tok {
            // Comments too: PostgreSQL continues a literal across them.
            Token::Whitespace(_) => {}
            Token::SingleQuotedString(_) => {
                if last_string {
                    return Err(refuse());
                }
                last_string = true;
            }
            Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::DollarQuotedString(_)
            | Token::NationalStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_) => return Err(refuse()),
            _ => last_string = false,
        }
    }
    Ok(())
}

/// The part of a `COPY … TO` statement after its `TO` (its target and
/// options), on PostgreSQL's tokens: the literals of a `COPY (query)` are
/// the query's, not options.
pub(super) fn options_text(text: &str) -> &str {
    let mut depth = 0i32;
    for t in pglex::tokens(text) {
        let w = &text[t.span.clone()];
        match t.kind {
            pglex::Kind::Op if w == "(" => depth += 1,
            pglex::Kind::Op if w == ")" => depth -= 1,
            pglex::Kind::Ident if depth == 0 && w.eq_ignore_ascii_case("to") => {
                return &text[t.span.end..];
            }
            _ => {}
        }
    }
    text
}
