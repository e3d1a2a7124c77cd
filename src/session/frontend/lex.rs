//! How PostgreSQL reads the client's text, as far as pgveil's analysis
//! depends on it: [`LexState`] (standard_conforming_strings and the
//! encodings, from the server's ParameterStatus), the keys PostgreSQL gives
//! statement and portal names, and the refusal (or wait for earlier
//! answers) of a statement PostgreSQL might read differently from pgveil.

use std::sync::atomic::{AtomicBool, Ordering};

use super::Frontend;
use super::names::Space;
use super::refusal::{Refusal, refuse, unkeyable};
use crate::wire::codec::{Frame, read_cstr};
use crate::wire::query::decode_target;
use crate::wire::tag::{fe, target};

/// The session settings that decide how PostgreSQL reads a statement's
/// text, as far as pgveil's analysis depends on them. pgveil reads SQL with
/// `standard_conforming_strings` on, and a backslash is always a backslash;
/// PostgreSQL reads a backslash in a plain string as an escape when the
/// setting is off, and in SJIS, BIG5, GBK, UHC, GB18030 or JOHAB a byte
/// 0x5C after a non-ASCII byte is part of a character. Either way a
/// statement could mean something else to PostgreSQL than to pgveil (a
/// string literal to pgveil, an INSERT of plaintext to PostgreSQL). Kept
/// up to date from the server's ParameterStatus messages.
#[derive(Debug)]
pub struct LexState {
    pub(super) standard_strings: AtomicBool,
    pub(super) backslash_safe_encoding: AtomicBool,
    /// `client_encoding` and `server_encoding` are UTF8: PostgreSQL keys a
    /// statement or portal name on the bytes the client sent (no
    /// conversion), so pgveil can too (see [`pg_name`]).
    client_utf8: AtomicBool,
    server_utf8: AtomicBool,
}

impl Default for LexState {
    fn default() -> Self {
        LexState {
            standard_strings: AtomicBool::new(true),
            backslash_safe_encoding: AtomicBool::new(true),
            client_utf8: AtomicBool::new(true),
            server_utf8: AtomicBool::new(true),
        }
    }
}

impl LexState {
    /// Before the server has reported anything: statements on protected
    /// tables are refused until `standard_conforming_strings` is reported
    /// `on`, and backslashes until `client_encoding` is reported.
    pub fn unreported() -> LexState {
        LexState {
            standard_strings: AtomicBool::new(false),
            backslash_safe_encoding: AtomicBool::new(false),
            client_utf8: AtomicBool::new(false),
            server_utf8: AtomicBool::new(false),
        }
    }

    /// Take note of a ParameterStatus message body (name, value).
    pub fn observe(&self, body: &[u8]) {
        let mut b = body;
        let (Some(name), Some(value)) = (read_cstr(&mut b), read_cstr(&mut b)) else {
            return;
        };
        if name.eq_ignore_ascii_case("standard_conforming_strings") {
            self.standard_strings
                .store(value.eq_ignore_ascii_case("on"), Ordering::SeqCst);
        } else if name.eq_ignore_ascii_case("client_encoding") {
            self.backslash_safe_encoding
                .store(backslash_is_always_a_character(value), Ordering::SeqCst);
            self.client_utf8.store(is_utf8(value), Ordering::SeqCst);
        } else if name.eq_ignore_ascii_case("server_encoding") {
            self.server_utf8.store(is_utf8(value), Ordering::SeqCst);
        }
    }

    /// Whether PostgreSQL sees a name's bytes as the client sent them.
    pub(super) fn names_unconverted(&self) -> bool {
        self.client_utf8.load(Ordering::SeqCst) && self.server_utf8.load(Ordering::SeqCst)
    }
}

fn is_utf8(enc: &str) -> bool {
    enc.eq_ignore_ascii_case("UTF8") || enc.eq_ignore_ascii_case("UTF-8")
}

/// PostgreSQL's NAMEDATALEN - 1: the bytes of a statement or portal name
/// that PostgreSQL keys it on (`strlcpy` into a NAMEDATALEN hash key, after
/// the client → server encoding conversion of the message).
const NAME_KEY: usize = 63;

/// A protocol-level statement or portal name as PostgreSQL keys it: an
/// ASCII name's first 63 bytes (ASCII is the same in every encoding);
/// a non-ASCII name only when it is shorter than that and no encoding
/// conversion happens (client and server encoding UTF8). `None`: pgveil
/// cannot be sure which name PostgreSQL means, and refuses the message.
pub(super) fn pg_name(name: &str, unconverted: bool) -> Option<&str> {
    if name.is_ascii() {
        return Some(&name[..name.len().min(NAME_KEY)]);
    }
    (name.len() <= NAME_KEY && unconverted).then_some(name)
}

/// The statement or portal a Describe or Close names (`body`: the
/// message's), its name keyed as PostgreSQL keys it ([`pg_name`]); refused
/// when the message cannot be read or the name cannot be keyed.
pub(super) fn target_key(body: &[u8], unconverted: bool) -> Result<(Space, String), Refusal> {
    let Some((kind, mut name)) = decode_target(body) else {
        return Err(unkeyable("statement or portal"));
    };
    let Some(key) = pg_name(&name, unconverted) else {
        return Err(unkeyable(if kind == target::STATEMENT {
            "statement"
        } else {
            "portal"
        }));
    };
    // The key is the name or its first bytes.
    let len = key.len();
    name.truncate(len);
    let space = if kind == target::STATEMENT {
        Space::Statement
    } else {
        Space::Portal
    };
    Ok((space, name))
}

/// A name in SQL text (`DEALLOCATE name`, `EXECUTE name`) as PostgreSQL
/// keys it: its lexer truncates identifiers to 63 bytes at a character
/// boundary, the same cut as the protocol's for ASCII names. `None` for a
/// longer non-ASCII one.
pub(super) fn sql_name_key(name: &str) -> Option<&str> {
    if name.len() <= NAME_KEY {
        Some(name)
    } else {
        name.is_ascii().then(|| &name[..NAME_KEY])
    }
}

/// Client encodings (PostgreSQL's names) in which the byte 0x5C is always a
/// backslash: UTF8, SQL_ASCII, the single-byte encodings and the EUC family.
/// Unknown names count as unsafe.
fn backslash_is_always_a_character(enc: &str) -> bool {
    let e = enc.to_ascii_uppercase();
    matches!(e.as_str(), "UTF8" | "SQL_ASCII" | "MULE_INTERNAL")
        || ["LATIN", "WIN", "ISO_8859", "EUC_", "KOI8"]
            .iter()
            .any(|p| e.starts_with(p))
}
impl Frontend {
    /// Whether handling `f` may wait for the answers to the requests sent
    /// before it (see [`await_answers_for`](Self::await_answers_for)): the
    /// relay then sends what it holds for them first. A byte search, only
    /// for frames behind others in one read.
    pub fn may_await_answers(&self, f: &Frame) -> bool {
        matches!(f.tag, fe::QUERY | fe::PARSE) && f.body().contains(&b'\\')
    }

    /// A statement on protected tables with a backslash is read by
    /// settings an earlier request may still change (even one that has
    /// completed: PostgreSQL reports changed settings right before its
    /// ReadyForQuery). Drivers send the next statement as soon as they
    /// have the last one's result (tokio-postgres does, before that
    /// ReadyForQuery), so rather than refusing it at once it waits for the
    /// answers to what is in flight, up to `answers_wait`; if they have
    /// not all come by then, [`read_differently`](Self::read_differently)
    /// refuses it.
    pub(super) async fn await_answers_for(&self, sql: &str) {
        if !sql.contains('\\') || self.exchange.is_idle() {
            return;
        }
        let until = tokio::time::Instant::now() + self.answers_wait;
        while !self.exchange.is_idle() && tokio::time::Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Refuse a statement on protected tables that PostgreSQL might read
    /// differently from pgveil (see [`LexState`]). Statements without a
    /// backslash read the same whatever the encoding; with one, pgveil must
    /// also be sure no earlier statement still running changes a setting.
    pub(super) fn read_differently(&self, sql: &str) -> Option<Refusal> {
        if !self.lex.standard_strings.load(Ordering::SeqCst) {
            return Some(refuse(
                "0A000",
                "pgveil: statements on protected tables require standard_conforming_strings = on",
            ));
        }
        if !sql.contains('\\') {
            return None;
        }
        if !self.lex.backslash_safe_encoding.load(Ordering::SeqCst) {
            return Some(refuse(
                "0A000",
                "pgveil: a statement on protected tables that contains a backslash requires a client_encoding in which a backslash is always a backslash (UTF8; not SJIS, BIG5, GBK, UHC, GB18030 or JOHAB)",
            ));
        }
        if !self.exchange.is_idle() {
            return Some(refuse(
                "0A000",
                "pgveil: a statement on protected tables that contains a backslash cannot be sent before the results of earlier statements have arrived (they could change how it is read)",
            ));
        }
        None
    }
}
