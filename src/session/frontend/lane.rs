//! The pass-through lane: a run of extended-protocol messages that touch
//! nothing protected goes upstream as the client's bytes, with one
//! [`Pending::PassThrough`] entry for all of it instead of one entry (and
//! one handler) per message, and the backend relays its answers the same
//! way (`backend::lane`). This is what a session that touches no protected
//! table costs with a policy loaded (issue 18: the per-message handlers
//! and queue entries were most of that cost).
//!
//! The lane takes a run only where the per-message path would do nothing
//! but forward it and record nothing (the same checks as
//! `parse_hot_path`, read in place), so the result is the same as if each
//! message had gone through [`Frontend::on_frame`]:
//! - the session is between requests: nothing in flight, no COPY window,
//!   no error being skipped (by pgveil, or by PostgreSQL after an error
//!   whose Sync has not come yet), no transaction a failed row doomed, nothing
//!   unsettled, no protected statement, portal or SQL cursor known or
//!   pending (a session that has them takes the per-message path);
//! - the run holds only Parse, Bind, Describe, Execute, Flush and Sync,
//!   each well formed and keyed as PostgreSQL keys names, and ends at a
//!   Sync;
//! - every Parse names a statement that touches no protected table, runs
//!   no COPY, changes nothing `sql::batch` counts as changing settings or
//!   what pgveil protects (as on the per-message path), and runs
//!   no SQL `EXECUTE` or `FETCH` of something protected (there is none);
//! - every Bind, Describe and Execute names a statement parsed, or a
//!   portal bound, earlier in the same Sync-delimited stretch of the run:
//!   if that Parse or Bind failed, PostgreSQL skips the rest of the
//!   stretch, so the name can only mean what this run made of it (an
//!   older statement of that name could be a COPY, whose answers the lane
//!   does not follow).
//!
//! Invariant: a run the lane takes carries no protected value and names
//! nothing pgveil would rewrite, shape or record; anything else takes the
//! per-message path.

use std::collections::VecDeque;
use std::sync::Arc;

use super::Frontend;
use super::lex::pg_name;
use crate::session::copy::is_copy_statement;
use crate::session::{CatalogEntry, Pending};
use crate::sql::batch;
use crate::wire::body::read_cstr;
use crate::wire::tag::{fe, target};

/// A run of messages the lane takes: its length in bytes (whole frames
/// from the start of the buffer) and the Syncs it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneRun {
    pub bytes: usize,
    pub syncs: u32,
    parses: u64,
}

/// The names introduced in the current Sync-delimited stretch of a run
/// (keyed as PostgreSQL keys them): a few at most, kept without
/// allocating; a stretch that introduces more ends the run there (the
/// rest takes the per-message path).
#[derive(Default)]
struct Stretch<'a> {
    statements: Few<'a>,
    portals: Few<'a>,
}

/// Up to [`FEW`] names, searched linearly.
#[derive(Default)]
struct Few<'a> {
    names: [&'a str; FEW],
    len: usize,
}

const FEW: usize = 8;

impl<'a> Few<'a> {
    /// Add `name`; false when full.
    fn push(&mut self, name: &'a str) -> bool {
        if self.len == FEW {
            return false;
        }
        self.names[self.len] = name;
        self.len += 1;
        true
    }

    fn contains(&self, name: &str) -> bool {
        self.names[..self.len].contains(&name)
    }
}

impl Frontend {
    /// Whether the session is where the lane may start: between requests,
    /// with nothing protected known, pending or unsettled. Called before a
    /// run's first message, a Parse, Bind, Describe or Execute, which ends
    /// the COPY windows as it would on the per-message path (with nothing
    /// in flight, a window still open is one whose Execute was answered
    /// without a COPY).
    fn lane_open(&mut self) -> bool {
        if self.exchange.is_broken()
            || self.skip_until_sync
            || self.protected_cursors
            || self.exchange.must_abort()
            || self.exchange.is_skipping()
            || !self.exchange.is_idle()
        {
            return false;
        }
        self.end_copies();
        self.names.drain(&self.exchange);
        if !self.names.is_empty() {
            return false;
        }
        self.settle_idle();
        self.unsettled == batch::Effect::None
    }

    /// The longest run at the head of `frames` (whole frames, as the
    /// client sent them) that the lane takes, ending at a Sync; `None`
    /// when there is none. Nothing changes until [`take_lane`](Self::take_lane).
    pub fn lane_run<'a>(&mut self, frames: impl Iterator<Item = &'a [u8]>) -> Option<LaneRun> {
        let mut frames = frames.peekable();
        let first = frames.peek()?[0];
        if !matches!(first, fe::PARSE | fe::BIND | fe::DESCRIBE | fe::EXECUTE) || !self.lane_open()
        {
            return None;
        }
        let unconverted = self.lex.names_unconverted();
        self.lane_memo.use_entry(self.entry());
        let mut stretch = Stretch::default();
        let (mut bytes, mut syncs, mut parses) = (0usize, 0u32, 0u64);
        let mut taken: Option<LaneRun> = None;
        for frame in frames {
            let (tag, body) = (frame[0], &frame[5..]);
            let ok = match tag {
                fe::PARSE => {
                    parses += 1;
                    self.lane_parse(body, unconverted, &mut stretch)
                }
                fe::BIND => lane_bind(body, unconverted, &mut stretch),
                fe::DESCRIBE => lane_describe(body, unconverted, &stretch),
                fe::EXECUTE => lane_execute(body, unconverted, &stretch),
                fe::FLUSH => body.is_empty(),
                fe::SYNC => {
                    if body.is_empty() {
                        stretch = Stretch::default();
                        syncs += 1;
                    }
                    body.is_empty()
                }
                _ => false,
            };
            if !ok {
                break;
            }
            bytes += frame.len();
            if tag == fe::SYNC {
                taken = Some(LaneRun {
                    bytes,
                    syncs,
                    parses,
                });
            }
        }
        taken
    }

    /// Take `run` (from [`lane_run`](Self::lane_run), with nothing handled
    /// since): its answers are expected as one entry.
    pub fn take_lane(&mut self, run: LaneRun) {
        self.described = None;
        self.statement_id += run.parses;
        self.names.segment += u64::from(run.syncs);
        self.behind_unsettled = batch::Effect::None;
        let hot = crate::metrics::hot();
        hot.statements_passthrough.increment(run.parses);
        hot.pass_through_runs.increment(1);
        self.exchange
            .push(Pending::PassThrough { syncs: run.syncs });
    }

    /// A Parse the lane takes: well formed, its name keyed, its text
    /// touching nothing protected and settling nothing.
    fn lane_parse<'a>(
        &mut self,
        body: &'a [u8],
        unconverted: bool,
        stretch: &mut Stretch<'a>,
    ) -> bool {
        let mut b = body;
        let Some(name) = read_cstr(&mut b) else {
            return false;
        };
        let Some(end) = b.iter().position(|&c| c == 0) else {
            return false;
        };
        let (text, rest) = (&b[..end], &b[end + 1..]);
        if !param_types_fit(rest) {
            return false;
        }
        let Some(key) = pg_name(name, unconverted) else {
            return false;
        };
        if !self.lane_memo.holds(text) {
            let Ok(query) = std::str::from_utf8(text) else {
                return false;
            };
            if self.statement_effect(query, false) != batch::Effect::None
                || self.lane_memo.entry().analyzer.may_touch_protected(query)
                || is_copy_statement(query)
            {
                return false;
            }
            self.lane_memo.remember(text);
        }
        stretch.statements.push(key)
    }
}

/// The Parse texts the lane found passable with one catalog entry, most
/// recent first. A Parse's checks are a function of its text and the
/// catalog entry alone, and drivers send a few texts again and again: a
/// text seen before costs a comparison, not the scans.
#[derive(Default)]
pub(super) struct Memo {
    entry: Option<Arc<CatalogEntry>>,
    texts: VecDeque<Box<[u8]>>,
}

/// Texts remembered per session, and the longest remembered.
const MEMO_TEXTS: usize = 16;
const MEMO_TEXT_BYTES: usize = 4096;

impl Memo {
    /// Judge with `entry` from now on (what was judged with another one
    /// is forgotten).
    fn use_entry(&mut self, entry: Arc<CatalogEntry>) {
        if !self.entry.as_ref().is_some_and(|e| Arc::ptr_eq(e, &entry)) {
            self.texts.clear();
            self.entry = Some(entry);
        }
    }

    fn entry(&self) -> &CatalogEntry {
        self.entry.as_ref().expect("use_entry first")
    }

    fn holds(&mut self, text: &[u8]) -> bool {
        match self.texts.iter().position(|t| **t == *text) {
            Some(0) => true,
            Some(i) => {
                let t = self.texts.remove(i).expect("found");
                self.texts.push_front(t);
                true
            }
            None => false,
        }
    }

    fn remember(&mut self, text: &[u8]) {
        if text.len() > MEMO_TEXT_BYTES {
            return;
        }
        if self.texts.len() == MEMO_TEXTS {
            self.texts.pop_back();
        }
        self.texts.push_front(text.into());
    }
}

/// The rest of a Parse body: the parameter type count and that many OIDs,
/// exactly.
fn param_types_fit(b: &[u8]) -> bool {
    match b {
        [hi, lo, rest @ ..] => {
            let n = i16::from_be_bytes([*hi, *lo]);
            n >= 0 && rest.len() == n as usize * 4
        }
        _ => false,
    }
}

/// A Bind of a statement parsed in this stretch (its parameters are not
/// read: the statement transforms none).
fn lane_bind<'a>(body: &'a [u8], unconverted: bool, stretch: &mut Stretch<'a>) -> bool {
    let mut b = body;
    let (Some(portal), Some(statement)) = (read_cstr(&mut b), read_cstr(&mut b)) else {
        return false;
    };
    let (Some(portal), Some(statement)) = (
        pg_name(portal, unconverted),
        pg_name(statement, unconverted),
    ) else {
        return false;
    };
    stretch.statements.contains(statement) && stretch.portals.push(portal)
}

/// A Describe of a statement parsed, or a portal bound, in this stretch.
fn lane_describe(body: &[u8], unconverted: bool, stretch: &Stretch<'_>) -> bool {
    let Some((&kind, mut b)) = body.split_first() else {
        return false;
    };
    let Some(name) = read_cstr(&mut b).filter(|_| b.is_empty()) else {
        return false;
    };
    let Some(key) = pg_name(name, unconverted) else {
        return false;
    };
    match kind {
        target::STATEMENT => stretch.statements.contains(key),
        target::PORTAL => stretch.portals.contains(key),
        _ => false,
    }
}

/// An Execute of a portal bound in this stretch.
fn lane_execute(body: &[u8], unconverted: bool, stretch: &Stretch<'_>) -> bool {
    let mut b = body;
    let Some(portal) = read_cstr(&mut b) else {
        return false;
    };
    if b.len() != 4 {
        return false;
    }
    pg_name(portal, unconverted).is_some_and(|key| stretch.portals.contains(key))
}

#[cfg(test)]
mod tests {
    use super::param_types_fit;

    #[test]
    fn parse_parameter_types_are_read_exactly() {
        assert!(param_types_fit(&[0, 0]));
        assert!(param_types_fit(&[0, 1, 0, 0, 0, 23]));
        assert!(!param_types_fit(&[0, 1, 0, 0, 0]));
        assert!(!param_types_fit(&[0, 0, 1]));
        assert!(!param_types_fit(&[0xff, 0xff]));
        assert!(!param_types_fit(&[0]));
    }
}
