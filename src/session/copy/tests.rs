//! Unit tests of COPY FROM's reading: the line reader against every way of
//! cutting the data into messages, the field splitters, and which
//! statements are COPYs. The encryption of rows is tested end to end
//! against PostgreSQL (tests/encryption.rs, tests/adversarial.rs).

use super::fields::{split_csv, split_text};
use super::fixture;
use super::line::{LineReader, Step};
use super::statement::{CopyKind, copies_from_stdin, copy_kind, is_copy_statement};
use crate::sql::{CopyDirection, CopyFormat, CopyPlan};

fn plan(format: CopyFormat) -> CopyPlan {
    fixture::plan(format, CopyDirection::In, 0)
}

/// Records as the reader cuts `data` (fed in pieces of `chunk` bytes),
/// and whether it ended at `\.`.
fn lines(p: &CopyPlan, data: &[u8], chunk: usize) -> Result<(Vec<Vec<u8>>, bool), String> {
    let mut r = LineReader::new(p);
    let mut buf = Vec::new();
    let mut out = vec![];
    let mut fed = 0;
    loop {
        let eof = fed >= data.len();
        if !eof {
            let n = chunk.min(data.len() - fed);
            buf.extend_from_slice(&data[fed..fed + n]);
            fed += n;
        }
        let mut start = 0;
        loop {
            match r.next(&buf[start..], eof).map_err(str::to_string)? {
                Step::More => break,
                Step::Line { end, next } => {
                    out.push(buf[start..start + end].to_vec());
                    start += next;
                    r.reset();
                }
                Step::EndMarker { end } => {
                    if end > 0 {
                        out.push(buf[start..start + end].to_vec());
                    }
                    return Ok((out, true));
                }
                Step::Eof { end } => {
                    if end > 0 {
                        out.push(buf[start..start + end].to_vec());
                    }
                    return Ok((out, false));
                }
            }
        }
        buf.drain(..start);
        if eof {
            unreachable!("the reader always answers at end of data");
        }
    }
}

fn same_in_every_chunking(p: &CopyPlan, data: &[u8]) -> Result<(Vec<Vec<u8>>, bool), String> {
    let whole = lines(p, data, data.len().max(1));
    for chunk in 1..=4 {
        assert_eq!(lines(p, data, chunk), whole, "chunk {chunk}: {data:?}");
    }
    whole
}

fn v(s: &[&str]) -> Vec<Vec<u8>> {
    s.iter().map(|s| s.as_bytes().to_vec()).collect()
}

/// The reader cuts `data` into the records `want`, ending at `\.` when
/// `marker`, however it is split into messages.
fn assert_cut(p: &CopyPlan, data: &[u8], want: &[&str], marker: bool) {
    assert_eq!(
        same_in_every_chunking(p, data),
        Ok((v(want), marker)),
        "{data:?}"
    );
}

#[test]
fn text_line_endings_are_fixed_by_the_first_line() {
    let p = plan(CopyFormat::Text);
    assert_cut(&p, b"a\nb\n", &["a", "b"], false);
    assert_cut(&p, b"a\r\nb\r\n", &["a", "b"], false);
    assert_cut(&p, b"a\rb\r", &["a", "b"], false);
    assert_cut(&p, b"a\nb", &["a", "b"], false);
    // A different ending later is an error, as in PostgreSQL.
    assert!(same_in_every_chunking(&p, b"a\r\nb\nc").is_err());
    assert!(same_in_every_chunking(&p, b"a\nb\r\n").is_err());
    assert!(same_in_every_chunking(&p, b"a\rb\n").is_err());
    assert!(same_in_every_chunking(&p, b"a\r\nb\rc\r\n").is_err());
}

#[test]
fn text_backslash_escapes_the_next_byte_even_a_newline() {
    let p = plan(CopyFormat::Text);
    assert_cut(&p, b"a\\\nb\nc\n", &["a\\\nb", "c"], false);
    assert_cut(&p, b"a\\\\\nb\n", &["a\\\\", "b"], false);
    // `\\.` is a backslash and a period, not the end marker.
    assert_cut(&p, b"\\\\.\nb\n", &["\\\\.", "b"], false);
}

#[test]
fn text_end_marker() {
    let p = plan(CopyFormat::Text);
    assert_cut(&p, b"a\n\\.\nplaintext-after\n", &["a"], true);
    assert_cut(&p, b"a\r\n\\.\r\nz", &["a"], true);
    // Data before `\.` on its line is a last row (PostgreSQL 15).
    assert_cut(&p, b"a\nb\\.\nc\n", &["a", "b"], true);
    assert!(same_in_every_chunking(&p, b"a\n\\.x\n").is_err());
    assert!(same_in_every_chunking(&p, b"a\r\n\\.\n").is_err());
    assert!(same_in_every_chunking(&p, b"a\n\\.\r").is_err());
}

#[test]
fn csv_quoted_newlines_and_end_marker() {
    let p = plan(CopyFormat::Csv);
    assert_cut(&p, b"\"a\nb\",c\r\nd\r\n", &["\"a\nb\",c", "d"], false);
    assert_cut(
        &p,
        b"\"a\r\n\\.\r\nb\",c\r\n\\.\r\n",
        &["\"a\r\n\\.\r\nb\",c"],
        true,
    );
    // `\.` with more on its line is data in CSV.
    assert_cut(&p, b"\\.x,1\n\\.\nz\n", &["\\.x,1"], true);
    // Only the first byte of a record can start the marker.
    assert_cut(&p, b"x\\.\ny\n", &["x\\.", "y"], false);
}

#[test]
fn csv_escape_other_than_quote() {
    let mut p = plan(CopyFormat::Csv);
    p.escape = '\\';
    // `\"` does not close the quoted field; `\\` before a quote does not
    // escape it.
    let data = b"\"a\\\"\nb\",1\n\"c\\\\\",2\n";
    let (l, _) = same_in_every_chunking(&p, data).unwrap();
    assert_eq!(l, v(&["\"a\\\"\nb\",1", "\"c\\\\\",2"]));
    let f = split_csv(&l[0], b',', b'"', b'\\', b"").unwrap();
    assert_eq!(f[0].0.value.as_deref(), Some(&b"a\"\nb"[..]));
    let f = split_csv(&l[1], b',', b'"', b'\\', b"").unwrap();
    assert_eq!(f[0].0.value.as_deref(), Some(&b"c\\"[..]));
}

#[test]
fn text_fields_decode_as_postgresql() {
    let f = split_text(
        b"a\\tb\t\\N\tc\\\\d\tx\\\ty\t\\101\\x41\\x4g\\xz\\q\tend\\",
        b'\t',
        b"\\N",
    )
    .unwrap();
    let vals: Vec<Option<&[u8]>> = f.iter().map(|f| f.value.as_deref()).collect();
    assert_eq!(
        vals,
        vec![
            Some(&b"a\tb"[..]),
            None,
            Some(&b"c\\d"[..]),
            Some(&b"x\ty"[..]),
            Some(&b"AA\x04gxzq"[..]),
            Some(&b"end"[..]),
        ]
    );
    // The trailing lone backslash is not part of the raw field.
    assert_eq!(f[5].raw.len(), 3);
    // NULL is the raw text: an escaped form of it is a value.
    let f = split_text(b"\\\\N", b'\t', b"\\N").unwrap();
    assert_eq!(f[0].value.as_deref(), Some(&b"\\N"[..]));
    // Escapes that make invalid UTF-8 or NUL are refused.
    assert!(split_text(b"\\000", b'\t', b"\\N").is_err());
    assert!(split_text(b"\\xff", b'\t', b"\\N").is_err());
    assert!(split_text(b"\\xc3\\xa9", b'\t', b"\\N").is_ok());
}

#[test]
fn csv_fields_decode_as_postgresql() {
    let f = split_csv(b"a,\"b,\"\"c\"\"\",,\"\",x\"y\"z", b',', b'"', b'"', b"").unwrap();
    let vals: Vec<Option<&[u8]>> = f.iter().map(|(f, _)| f.value.as_deref()).collect();
    assert_eq!(
        vals,
        vec![
            Some(&b"a"[..]),
            Some(&b"b,\"c\""[..]),
            None,
            Some(&b""[..]),
            Some(&b"xyz"[..]),
        ]
    );
    assert!(split_csv(b"\"abc", b',', b'"', b'"', b"").is_err());
}

#[test]
fn copy_statements_are_recognised() {
    assert!(is_copy_statement("COPY t FROM STDIN"));
    assert!(is_copy_statement(
        "/* a /* nested */ c */ -- x\n copy t from stdin"
    ));
    assert!(is_copy_statement("Copy(t)"));
    assert!(!is_copy_statement("copyright"));
    assert!(!is_copy_statement("SELECT 'COPY'"));
    // A `--` comment ends at a carriage return too, as in PostgreSQL.
    for hidden in [
        "-- c\rCOPY t FROM STDIN",
        "--\r\ncopy t from stdin",
        "-- a\r--b\rCOPY t FROM STDIN",
    ] {
        assert_eq!(copy_kind(hidden), CopyKind::FromStdin, "{hidden:?}");
    }
    assert_eq!(copy_kind("-- COPY t FROM STDIN"), CopyKind::NotCopy);
    assert_eq!(
        copy_kind("/* COPY t FROM STDIN */ SELECT 1"),
        CopyKind::NotCopy
    );
    assert_eq!(
        copy_kind("COPY t (a, b) FROM stdin WITH (FORMAT csv)"),
        CopyKind::FromStdin
    );
    assert_eq!(copy_kind("COPY stdin FROM STDIN"), CopyKind::FromStdin);
    assert_eq!(
        copy_kind("COPY (SELECT a FROM t) TO STDOUT"),
        CopyKind::Other
    );
    assert_eq!(copy_kind("COPY t FROM '/tmp/f'"), CopyKind::Other);
    assert_eq!(copy_kind("COPY t TO STDOUT"), CopyKind::Other);
    assert_eq!(copy_kind("COPY \"from\" FROM STDIN"), CopyKind::FromStdin);
}

#[test]
fn copies_are_counted_on_postgresql_tokens() {
    assert_eq!(copies_from_stdin("SELECT 1"), 0);
    assert_eq!(
        copies_from_stdin("-- hidden\rCOPY scratch (t) FROM STDIN; COPY users (name) FROM STDIN"),
        2
    );
    assert_eq!(
        copies_from_stdin("SELECT 'COPY t FROM STDIN; x'; COPY t FROM STDIN"),
        1
    );
    assert_eq!(copies_from_stdin("SELECT $$;COPY t FROM STDIN$$"), 0);
    assert_eq!(
        copies_from_stdin("COPY a FROM STDIN;COPY b TO STDOUT;copy c from stdin"),
        2
    );
}

/// The reader cuts any input the same however it is split into
/// messages, in one pass (property over generated inputs).
#[test]
fn reader_is_independent_of_message_boundaries() {
    let alphabet: &[u8] = b"a,\t\"\\.\r\nN";
    let mut seed = 0x2545F4914F6CDD1Du64;
    for format in [CopyFormat::Text, CopyFormat::Csv] {
        let p = plan(format);
        for _ in 0..3000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 14) as usize;
            let data: Vec<u8> = (0..len)
                .map(|k| alphabet[((seed >> (k * 4 % 60)) as usize + k) % alphabet.len()])
                .collect();
            let whole = lines(&p, &data, data.len().max(1));
            for chunk in 1..=3 {
                assert_eq!(lines(&p, &data, chunk), whole, "{data:?}");
            }
        }
    }
}
