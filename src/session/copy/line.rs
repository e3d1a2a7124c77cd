//! The line reader: PostgreSQL 15's `CopyReadLineText`, resumable at any
//! byte, which cuts COPY FROM data into records. The line ending is fixed
//! by the first line; in CSV a quoted field may hold newlines; the
//! end-of-copy marker `\.` ends the data. Invariant: records are cut as
//! PostgreSQL cuts them however the data is split into messages, and what
//! PostgreSQL would reject is an error, never a guess.

use crate::sql::{CopyFormat, CopyPlan};

/// The line ending PostgreSQL fixes from the first line of the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eol {
    Unknown,
    Nl,
    Cr,
    CrNl,
}

/// What the line reader found at the start of the buffer it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// A record: bytes `..end`; the next record starts at `next`.
    Line { end: usize, next: usize },
    /// The end-of-copy marker `\.`; bytes `..end` before it are a last
    /// record when not empty (text format). Everything after is ignored.
    EndMarker { end: usize },
    /// End of data (CopyDone): bytes `..end` are a last record when not
    /// empty.
    Eof { end: usize },
    /// More bytes are needed to decide.
    More,
}

/// PostgreSQL's `CopyReadLineText`, resumable at any byte.
#[derive(Debug, Clone)]
pub(super) struct LineReader {
    csv: bool,
    quote: u8,
    /// The escape as the line reader sees it: none when equal to the quote.
    escape: Option<u8>,
    eol: Eol,
    /// Scan position in the current record, and the state there.
    pos: usize,
    in_quote: bool,
    last_was_esc: bool,
    first: bool,
}

impl LineReader {
    pub(super) fn new(plan: &CopyPlan) -> LineReader {
        let csv = plan.format == CopyFormat::Csv;
        let (quote, escape) = (plan.quote as u8, plan.escape as u8);
        LineReader {
            csv,
            quote,
            escape: (csv && escape != quote).then_some(escape),
            eol: Eol::Unknown,
            pos: 0,
            in_quote: false,
            last_was_esc: false,
            first: true,
        }
    }

    /// Start a new record.
    pub(super) fn reset(&mut self) {
        self.pos = 0;
        self.in_quote = false;
        self.last_was_esc = false;
        self.first = true;
    }

    /// Find the end of the record that starts at `buf[0]`. `eof`: no more
    /// bytes will come.
    pub(super) fn next(&mut self, buf: &[u8], eof: bool) -> Result<Step, &'static str> {
        let n = buf.len();
        let mut i = self.pos;
        loop {
            if i >= n {
                self.pos = i;
                return Ok(if eof {
                    Step::Eof { end: n }
                } else {
                    Step::More
                });
            }
            let saved = (self.in_quote, self.last_was_esc);
            let more = move |s: &mut LineReader| {
                (s.in_quote, s.last_was_esc) = saved;
                s.pos = i;
                Ok(Step::More)
            };
            let c = buf[i];
            if self.csv {
                if self.in_quote && Some(c) == self.escape {
                    self.last_was_esc = !self.last_was_esc;
                }
                if c == self.quote && !self.last_was_esc {
                    self.in_quote = !self.in_quote;
                }
                if Some(c) != self.escape {
                    self.last_was_esc = false;
                }
            }
            let unquoted = !self.csv || !self.in_quote;
            if c == b'\r' && unquoted {
                match self.eol {
                    Eol::Unknown | Eol::CrNl => {
                        if i + 1 >= n && !eof {
                            return more(self);
                        }
                        if buf.get(i + 1) == Some(&b'\n') {
                            self.eol = Eol::CrNl;
                            return Ok(Step::Line {
                                end: i,
                                next: i + 2,
                            });
                        }
                        if self.eol == Eol::CrNl {
                            return Err("a carriage return in the data where lines end with CRLF");
                        }
                        self.eol = Eol::Cr;
                    }
                    Eol::Nl => {
                        return Err("a carriage return in the data where lines end with LF");
                    }
                    Eol::Cr => {}
                }
                return Ok(Step::Line {
                    end: i,
                    next: i + 1,
                });
            }
            if c == b'\n' && unquoted {
                if matches!(self.eol, Eol::Cr | Eol::CrNl) {
                    return Err("a newline in the data where lines end with CR");
                }
                self.eol = Eol::Nl;
                return Ok(Step::Line {
                    end: i,
                    next: i + 1,
                });
            }
            if c == b'\\' && (!self.csv || self.first) {
                if i + 1 >= n {
                    if !eof {
                        return more(self);
                    }
                    self.pos = n;
                    return Ok(Step::Eof { end: n });
                }
                if buf[i + 1] == b'.' {
                    match self.end_marker(buf, i, eof) {
                        Marker::End => return Ok(Step::EndMarker { end: i }),
                        Marker::More => return more(self),
                        Marker::Error(e) => return Err(e),
                        // CSV: `\.` followed by data is data.
                        Marker::Data => {}
                    }
                } else if !self.csv {
                    // Text: the byte after a backslash is never special.
                    i += 1;
                }
            }
            self.first = false;
            i += 1;
        }
    }

    /// `\.` at `buf[i]`: is it the end-of-copy marker?
    fn end_marker(&mut self, buf: &[u8], i: usize, eof: bool) -> Marker {
        let n = buf.len();
        let mut j = i + 2;
        let bad = |csv: bool, e: &'static str| {
            if csv { Marker::Data } else { Marker::Error(e) }
        };
        if self.eol == Eol::CrNl {
            if j >= n && !eof {
                return Marker::More;
            }
            let c = buf.get(j).copied().unwrap_or(0);
            j += 1;
            if c == b'\n' {
                return bad(
                    self.csv,
                    "an end-of-copy marker that does not match the line endings",
                );
            }
            if c != b'\r' {
                return bad(self.csv, "a corrupt end-of-copy marker");
            }
        }
        if j >= n && !eof {
            return Marker::More;
        }
        let c = buf.get(j).copied().unwrap_or(0);
        if c != b'\r' && c != b'\n' {
            return bad(self.csv, "a corrupt end-of-copy marker");
        }
        if (matches!(self.eol, Eol::Nl | Eol::CrNl) && c != b'\n')
            || (self.eol == Eol::Cr && c != b'\r')
        {
            return Marker::Error("an end-of-copy marker that does not match the line endings");
        }
        Marker::End
    }
}

enum Marker {
    End,
    Data,
    More,
    Error(&'static str),
}
