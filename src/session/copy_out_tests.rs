//! Unit tests of the COPY TO row reader and writers. Decryption itself is
//! the SELECT path's (`rows`); it is tested end to end in
//! tests/copy_out.rs against PostgreSQL.

use std::sync::Arc;

use bytes::BytesMut;

use super::*;
use crate::keys::{KeyManager, KeyManagerOptions, Keystore, LocalProvider};
use crate::sql::{CopyDirection, CopyFormat, CopyPlan};

fn plan(format: CopyFormat, columns: usize) -> CopyPlan {
    crate::session::copy::fixture::plan(format, CopyDirection::Out, columns)
}

/// Crypto that is never asked for a key: the shapes below decrypt nothing.
fn crypto() -> ValueCrypto {
    let provider =
        LocalProvider::new(vec![("k1".into(), zeroize::Zeroizing::new([1u8; 32]))]).unwrap();
    let store = Keystore::new_no_tls("postgres://nobody@127.0.0.1:1/none").unwrap();
    ValueCrypto::new(
        KeyManager::new(Arc::new(provider), store, KeyManagerOptions::default()),
        None,
    )
}

/// Feed `messages` through a pass-through transformer for `p`: the
/// CopyData payloads it sends, or the first failure's text.
fn run(p: CopyPlan, messages: &[&[u8]]) -> Result<Vec<Vec<u8>>, &'static str> {
    let n = p.decrypt.len();
    let mut c = CopyOut::with_shape(Arc::new(p), vec![None; n]);
    let crypto = crypto();
    let mut dec = RowDecryptor::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut sent = vec![];
    for m in messages {
        let mut out = BytesMut::new();
        rt.block_on(c.data(&crypto, &mut dec, m, &mut out))
            .map_err(fail)?;
        assert_eq!(out[0], b'd');
        let len = u32::from_be_bytes(out[1..5].try_into().unwrap()) as usize;
        assert_eq!(len + 1, out.len());
        sent.push(out[5..].to_vec());
    }
    c.done().map_err(fail)?;
    Ok(sent)
}

fn fail(f: Failure) -> &'static str {
    match f {
        Failure::Malformed(w) => w,
        Failure::Decrypt(_) => "decrypt",
    }
}

#[test]
fn text_and_csv_rows_pass_through_as_postgresql_sent_them() {
    let rows: &[&[u8]] = &[b"1\t\\\\x7076\t\\N\n", b"2\ta\\tb\\\\c\xc3\xa9\t\n"];
    assert_eq!(run(plan(CopyFormat::Text, 3), rows).unwrap(), rows);
    let mut p = plan(CopyFormat::Csv, 2);
    p.header = true;
    let rows: &[&[u8]] = &[
        b"id,email\n",
        b"1,\"multi\nline, \"\"quoted\"\"\"\n",
        b"2,\n3,\"\"\n",
    ];
    assert_eq!(run(p, rows).unwrap(), rows);
}

#[test]
fn rows_that_cannot_be_read_fail_the_copy() {
    for (p, m, why) in [
        (
            plan(CopyFormat::Text, 2),
            &b"1\t2"[..],
            "does not end in its message",
        ),
        (
            plan(CopyFormat::Text, 2),
            &b"1\t2\t3\n"[..],
            "number of fields",
        ),
        (
            plan(CopyFormat::Csv, 2),
            &b"1,\"open\n"[..],
            "does not end in its message",
        ),
        (
            plan(CopyFormat::Csv, 1),
            &b"\"a\"b\"\n"[..],
            "does not end in its message",
        ),
    ] {
        let e = run(p, &[m]).unwrap_err();
        assert!(e.contains(why), "{m:?}: {e}");
    }
}

fn header(flags: u32, ext: &[u8]) -> Vec<u8> {
    let mut h = b"PGCOPY\n\xff\r\n\0".to_vec();
    h.extend_from_slice(&flags.to_be_bytes());
    h.extend_from_slice(&(ext.len() as u32).to_be_bytes());
    h.extend_from_slice(ext);
    h
}

fn tuple(fields: &[Option<&[u8]>]) -> Vec<u8> {
    let mut t = (fields.len() as i16).to_be_bytes().to_vec();
    for f in fields {
        match f {
            None => t.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                t.extend_from_slice(&(v.len() as i32).to_be_bytes());
                t.extend_from_slice(v);
            }
        }
    }
    t
}

const TRAILER: &[u8] = &[0xff, 0xff];

#[test]
fn binary_header_and_trailer_are_tracked_across_messages() {
    let row = tuple(&[Some(&7i64.to_be_bytes()), None]);
    let first = [header(0, &[]), row.clone()].concat();
    // PostgreSQL 15: the header with the first row, the trailer alone.
    let msgs: Vec<&[u8]> = vec![&first, &row, TRAILER];
    assert_eq!(run(plan(CopyFormat::Binary, 2), &msgs).unwrap(), msgs);
    // No rows: header and trailer together, or apart.
    let both = [header(0, &[]), TRAILER.to_vec()].concat();
    assert_eq!(
        run(plan(CopyFormat::Binary, 2), &[&both]).unwrap(),
        vec![both.clone()]
    );
    let h = header(0, &[]);
    run(plan(CopyFormat::Binary, 2), &[&h, TRAILER]).unwrap();
    // The header (with an extension) cut anywhere, rows several per
    // message (a row itself must be whole: PostgreSQL sends one per
    // message).
    let h = header(1, b"ext");
    let all = [h.clone(), row.clone(), row.clone(), TRAILER.to_vec()].concat();
    for cut in 1..=h.len() {
        let (a, b) = all.split_at(cut);
        let got = run(plan(CopyFormat::Binary, 2), &[a, b]).unwrap();
        assert_eq!(got.concat(), all, "cut at {cut}");
    }
}

#[test]
fn binary_data_pgveil_cannot_follow_fails_the_copy() {
    let row = tuple(&[Some(b"x"), None]);
    let h = header(0, &[]);
    let cases: Vec<(Vec<Vec<u8>>, &str)> = vec![
        (vec![[h.clone(), row.clone()].concat()], "no binary trailer"),
        (
            vec![[h.clone(), TRAILER.to_vec(), row.clone()].concat()],
            "after the binary trailer",
        ),
        (
            vec![[h.clone(), row[..row.len() - 1].to_vec()].concat()],
            "does not end in its message",
        ),
        (
            vec![[h.clone(), tuple(&[Some(b"x")])].concat()],
            "number of fields",
        ),
        (vec![[header(1 << 16, &[]), row.clone()].concat()], "flags"),
        (
            vec![b"PGCOPY\n\xff\r\n\x01xxxxxxxx".to_vec()],
            "not PostgreSQL's",
        ),
        (
            vec![[h.clone(), vec![0, 2, 0xff, 0xff, 0xff, 0xfe]].concat()],
            "does not end",
        ),
    ];
    for (msgs, why) in cases {
        let m: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
        let e = run(plan(CopyFormat::Binary, 2), &m).unwrap_err();
        assert!(e.contains(why), "{why}: {e}");
    }
}

#[test]
fn copy_out_response_must_match_the_plan() {
    let c = CopyOut::with_shape(Arc::new(plan(CopyFormat::Csv, 2)), vec![None; 2]);
    assert!(c.matches_response(&[0, 0, 2, 0, 0, 0, 0]));
    assert!(!c.matches_response(&[1, 0, 2, 0, 1, 0, 1]));
    assert!(!c.matches_response(&[0, 0, 3, 0, 0, 0, 0, 0, 0]));
    assert!(!c.matches_response(&[0]));
    let c = CopyOut::with_shape(Arc::new(plan(CopyFormat::Binary, 1)), vec![None]);
    assert!(c.matches_response(&[1, 0, 1, 0, 1]));
}

/// Values that matter to COPY's text and CSV forms.
const VALUES: &[&[u8]] = &[
    b"",
    b"plain",
    b"\\N",
    b"\\",
    b"a\tb",
    b"line\nbreak\r\n",
    b"\x08\x0c\x0b\x01",
    b"comma, \"quote\"",
    b"\\.",
    b"\\x0102",
    b"NULL",
    "caf\u{e9} \u{1f600}".as_bytes(),
    b"pipe|semi;",
];

#[test]
fn text_values_read_back_as_written() {
    for (delim, null) in [(b'\t', &b"\\N"[..]), (b'|', b"NULL"), (b';', b"")] {
        for v in VALUES {
            let mut out = BytesMut::new();
            put_text(v, delim, null, &mut out);
            assert!(!out.contains(&b'\n') && !out.contains(&b'\r'));
            let fields = split_text(&out, delim, null).unwrap();
            assert_eq!(fields.len(), 1, "{v:?} as {out:?}");
            if v.is_empty() && null.is_empty() {
                // No other spelling of '' under NULL '' (as in PostgreSQL).
                assert_eq!(fields[0].value, None);
            } else {
                assert_eq!(fields[0].value.as_deref(), Some(*v), "{v:?} as {out:?}");
            }
        }
    }
    // As PostgreSQL writes them.
    let shown = |v: &[u8]| {
        let mut out = BytesMut::new();
        put_text(v, b'\t', b"\\N", &mut out);
        out.to_vec()
    };
    assert_eq!(shown(b"a\tb\\c\n\x01"), b"a\\tb\\\\c\\n\x01");
    assert_eq!(shown(b"\\x0102"), b"\\\\x0102");
    let mut out = BytesMut::new();
    put_text(b"NULL", b'\t', b"NULL", &mut out);
    assert_eq!(&out[..], b"\\116ULL");
}

#[test]
fn csv_values_read_back_as_written() {
    for (delim, quote, escape, null) in [
        (',', '"', '"', ""),
        (';', '\'', '\\', "NULL"),
        ('|', '"', '"', "\\N"),
    ] {
        let mut p = plan(CopyFormat::Csv, 1);
        (p.delimiter, p.quote, p.escape, p.null) = (delim, quote, escape, null.into());
        for v in VALUES {
            for force in [false, true] {
                let mut out = BytesMut::new();
                put_csv(v, &p, force, true, &mut out);
                let line = out.to_vec();
                assert_eq!(
                    record_end(
                        &[&line[..], b"\n"].concat(),
                        true,
                        quote as u8,
                        escape as u8
                    ),
                    Some(line.len()),
                    "{v:?} as {line:?}"
                );
                let fields = split_csv(
                    &line,
                    delim as u8,
                    quote as u8,
                    escape as u8,
                    null.as_bytes(),
                )
                .unwrap();
                assert_eq!(fields.len(), 1, "{v:?} as {line:?}");
                assert_eq!(fields[0].0.value.as_deref(), Some(*v), "{v:?} as {line:?}");
                if force {
                    assert!(fields[0].1, "forced quotes");
                }
            }
        }
    }
    let p = plan(CopyFormat::Csv, 1);
    let shown = |v: &[u8], single: bool| {
        let mut out = BytesMut::new();
        put_csv(v, &p, false, single, &mut out);
        out.to_vec()
    };
    assert_eq!(shown(b"plain", true), b"plain");
    assert_eq!(shown(b"", true), b"\"\"");
    assert_eq!(shown(b"a \"b\"", true), b"\"a \"\"b\"\"\"");
    assert_eq!(shown(b"\\.", true), b"\"\\.\"");
    assert_eq!(shown(b"\\.", false), b"\\.");
}

#[test]
fn records_end_at_their_newline() {
    assert_eq!(record_end(b"a\\nb\tc\nnext\n", false, 0, 0), Some(6));
    assert_eq!(record_end(b"a\tb", false, 0, 0), None);
    assert_eq!(record_end(b"\"a\nb\",c\nx", true, b'"', b'"'), Some(7));
    assert_eq!(record_end(b"\"a\"\"\n\"\n", true, b'"', b'"'), Some(6));
    assert_eq!(record_end(b"\"a\\\"\n\"\n", true, b'"', b'\\'), Some(6));
    assert_eq!(record_end(b"\"open\n", true, b'"', b'"'), None);
}

#[test]
fn binary_tuples_are_measured_in_place() {
    let t = tuple(&[Some(b"abc"), None, Some(b"")]);
    assert_eq!(tuple_len(&t), Some(t.len()));
    assert_eq!(
        tuple_len(&[t.clone(), TRAILER.to_vec()].concat()),
        Some(t.len())
    );
    assert_eq!(tuple_len(&t[..t.len() - 1]), None);
    assert_eq!(tuple_len(&[0, 1, 0xff, 0xff, 0xff, 0xfe]), None);
    assert_eq!(tuple_len(&[0, 1, 0x7f, 0xff, 0xff, 0xff]), None);
    assert_eq!(tuple_len(&[0]), None);
}
