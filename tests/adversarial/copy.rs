//! COPY data read differently (issue 14, class 4): pgveil must cut and
//! decode `COPY … FROM STDIN` rows exactly as PostgreSQL 15 does, apply a
//! protected COPY's row transformer only to that COPY's data, and refuse
//! what it cannot read exactly. Each attack is sent as raw protocol frames
//! through pgveil; the success paths are compared with the same COPY sent
//! straight to PostgreSQL into an unprotected scratch table; every test
//! ends with the plaintext scan.

use crate::common::raw::{self, Raw, copy_data, copy_done, first_error, query};
use crate::common::*;

type Msgs = Vec<raw::Msg>;

/// (SQLSTATE, message) of the first ErrorResponse.
fn error_of(msgs: &Msgs) -> Option<(String, String)> {
    first_error(msgs)
}

/// The refusal has exactly `code` and names none of `sentinels`.
fn assert_refused(got: &Msgs, code: &str, sentinels: &[&str], what: &str) {
    let (c, msg) = error_of(got).unwrap_or_else(|| panic!("{what}: not refused: {got:?}"));
    assert_eq!(c, code, "{what}: {msg}");
    assert!(
        msg.contains("pgveil"),
        "{what}: not pgveil's refusal: {msg}"
    );
    for s in sentinels {
        assert!(
            !msg.contains(s),
            "{what}: the refusal shows the value: {msg}"
        );
    }
}

fn assert_ok(got: &Msgs, what: &str) {
    assert!(error_of(got).is_none(), "{what}: {:?}", error_of(got));
    assert!(got.iter().any(|m| m.0 == b'C'), "{what}: {got:?}");
}

async fn rows(c: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    simple_rows(&c.simple_query(sql).await.unwrap())
}

#[tokio::test]
async fn two_copies_in_one_query_are_refused() {
    let fx = Calmony::builder()
        .extra_sql("CREATE TABLE public.notes (body text, extra text)")
        .start();
    let mut r = Raw::login_at(fx.pv.port(), "calmony_app").await;
    // Protected first: its transformer must not be applied to the second
    // COPY's rows, nor the plain COPY's passthrough to the protected rows.
    let s1 = "attack-two-copy-pf-17@example.com";
    let got = r
        .copy_in(
            "COPY users (email, name) FROM STDIN; COPY notes (body, extra) FROM STDIN",
            &[format!("{s1}\tTwoCopy-Name-17\n").as_bytes()],
        )
        .await;
    assert_refused(
        &got,
        "0A000",
        &[s1, "TwoCopy-Name-17"],
        "protected then plain",
    );
    // Plain first: the protected COPY's data would have passed raw.
    let s2 = "attack-two-copy-fp-23@example.com";
    let got = r
        .copy_in(
            "COPY notes (body, extra) FROM STDIN; COPY users (email, name) FROM STDIN",
            &[
                b"harmless\tx\n",
                format!("{s2}\tTwoCopy-Name-23\n").as_bytes(),
            ],
        )
        .await;
    assert_refused(
        &got,
        "0A000",
        &[s2, "TwoCopy-Name-23"],
        "plain then protected",
    );
    // A comment does not hide the second COPY.
    let s3 = "attack-two-copy-cm-31@example.com";
    let got = r
        .copy_in(
            "COPY users (email, name) FROM STDIN; /* x */ copy notes FROM STDIN",
            &[format!("{s3}\tTwoCopy-Name-31\n").as_bytes()],
        )
        .await;
    assert_refused(
        &got,
        "0A000",
        &[s3, "TwoCopy-Name-31"],
        "commented second COPY",
    );
    // The session still works, and one COPY per Query does.
    let s4 = "copy-alone-ok-41@example.com";
    let got = r
        .copy_in(
            "COPY users (email, name) FROM STDIN",
            &[format!("{s4}\tAlone-Name-41\n").as_bytes()],
        )
        .await;
    assert_ok(&got, "a lone COPY");
    let app = fx.app("calmony_app").await;
    assert_eq!(
        rows(&app, "SELECT email, name FROM users").await,
        vec![vec![Some(s4.to_string()), Some("Alone-Name-41".into())]]
    );
    let d = fx.direct().await;
    assert_eq!(
        rows(&d, "SELECT count(*) FROM notes").await,
        vec![vec![Some("0".into())]]
    );
    fx.assert_no_plaintext(&[
        s1,
        s2,
        s3,
        s4,
        "TwoCopy-Name-17",
        "TwoCopy-Name-23",
        "TwoCopy-Name-31",
        "Alone-Name-41",
    ])
    .await;
}

/// Send the same COPY through pgveil (into `users`) and straight to
/// PostgreSQL (into a scratch table with text columns); both must succeed
/// and store the same values (read back decrypted as `calmony_app`).
async fn same_as_postgresql(fx: &Calmony, options: &str, data: &[&[u8]]) {
    let (direct, through) = both_ways(fx, options, data).await;
    assert_ok(&direct, &format!("direct {options}"));
    assert_ok(&through, &format!("through pgveil {options}"));
    let d = fx.direct().await;
    let want = rows(&d, "SELECT email, name FROM scratch ORDER BY id").await;
    let app = fx.app("calmony_app").await;
    let have = rows(&app, "SELECT email, name FROM users ORDER BY id").await;
    assert_eq!(have, want, "{options} {data:?}");
    assert!(!want.is_empty());
    d.batch_execute("DROP TABLE scratch").await.unwrap();
}

/// The same COPY straight to PostgreSQL into `scratch` and through pgveil
/// into `users` (both emptied first): the two answers.
async fn both_ways(fx: &Calmony, options: &str, data: &[&[u8]]) -> (Msgs, Msgs) {
    let d = fx.direct().await;
    d.batch_execute(
        "DROP TABLE IF EXISTS scratch; CREATE TABLE scratch (id bigserial, email text, name text);
         DELETE FROM users",
    )
    .await
    .unwrap();
    let mut direct = Raw::login_at(fx.pg.port(), "postgres").await;
    let a = direct
        .copy_in(
            &format!("COPY scratch (email, name) FROM STDIN {options}"),
            data,
        )
        .await;
    let mut r = Raw::login_at(fx.pv.port(), "calmony_app").await;
    let b = r
        .copy_in(
            &format!("COPY users (email, name) FROM STDIN {options}"),
            data,
        )
        .await;
    (a, b)
}

/// Generated COPY data (two fields per line, from bytes that matter to
/// the grammar, line endings mostly consistent) sent both ways: PostgreSQL
/// and pgveil must agree on every input, failing together or storing the
/// same values.
#[tokio::test]
async fn generated_copy_data_is_read_as_postgresql_reads_it() {
    let fx = Calmony::start();
    let d = fx.direct().await;
    let app = fx.app("calmony_app").await;
    let mut seed = 0x9E3779B97F4A7C15u64;
    let mut rnd = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let mut sentinels = vec![];
    let (mut agreed_ok, mut agreed_err) = (0, 0);
    for case in 0..120 {
        let (options, alphabet, delim): (&str, &[&[u8]], &[u8]) = match case % 4 {
            0 => (
                "",
                &[
                    b"a", b"\\\\", b"\\.", b"\\N", b"\\t", b"\\101", b"\\x4", b".", b"N", b"\"",
                    b" ", b"\\",
                ],
                b"\t",
            ),
            1 => (
                "WITH (FORMAT csv)",
                &[b"a", b"\"", b"\"\"", b",", b"\\", b"\\.", b"\n", b".", b" "],
                b",",
            ),
            2 => (
                "WITH (FORMAT csv, ESCAPE '\\', QUOTE '''')",
                &[b"a", b"'", b"\\'", b"\\\\", b",", b"\\.", b"\r\n", b"\""],
                b",",
            ),
            _ => (
                "WITH (FORMAT csv, NULL 'z', FORCE_NULL (name))",
                &[b"a", b"z", b"\"z\"", b"\"", b",", b"\\."],
                b",",
            ),
        };
        let eols: [&[u8]; 3] = [b"\n", b"\r\n", b"\r"];
        let eol = eols[rnd(3)];
        let sentinel = format!("gen-copy-{case}-77@example.com");
        let mut data = sentinel.clone().into_bytes();
        data.extend_from_slice(delim);
        data.extend_from_slice(b"Gen-Sentinel");
        data.extend_from_slice(eol);
        for _ in 0..1 + rnd(3) {
            for f in 0..2 {
                if f == 1 {
                    data.extend_from_slice(delim);
                }
                for _ in 0..rnd(4) {
                    data.extend_from_slice(alphabet[rnd(alphabet.len())]);
                }
            }
            data.extend_from_slice(if rnd(12) == 0 { eols[rnd(3)] } else { eol });
        }
        if rnd(6) == 0 {
            data.extend_from_slice(b"\\.");
            data.extend_from_slice(eol);
            data.extend_from_slice(b"after-marker");
        }
        let (direct, through) = both_ways(&fx, options, &[&data]).await;
        let what = format!("{options} {:?}", String::from_utf8_lossy(&data));
        match (error_of(&direct), error_of(&through)) {
            (None, None) => {
                let want = rows(&d, "SELECT email, name FROM scratch ORDER BY id").await;
                let have = rows(&app, "SELECT email, name FROM users ORDER BY id").await;
                assert_eq!(have, want, "{what}");
                agreed_ok += 1;
            }
            (Some(_), Some((_, msg))) => {
                assert!(!msg.contains(&sentinel), "{what}: {msg}");
                agreed_err += 1;
            }
            (a, b) => panic!("{what}: PostgreSQL: {a:?}, through pgveil: {b:?}"),
        }
        d.batch_execute("DROP TABLE scratch").await.unwrap();
        sentinels.push(sentinel);
    }
    eprintln!("generated COPY inputs: {agreed_ok} stored alike, {agreed_err} refused by both");
    assert!(agreed_ok > 5 && agreed_err > 5, "{agreed_ok} {agreed_err}");
    let sentinels: Vec<&str> = sentinels.iter().map(String::as_str).collect();
    fx.assert_no_plaintext(&sentinels).await;
}

#[tokio::test]
async fn copy_options_and_escapes_read_as_postgresql_does() {
    let fx = Calmony::start();
    let mut sentinels: Vec<&str> = vec![];
    // ESCAPE '\' with HEADER: an escaped quote stays inside its field, the
    // header is one line, and no newline is added to a value.
    let data: &[&[u8]] = &[
        b"email,name\n\"copy-esc-91@example.com\",\"Esc \\\"Quoted\\\" Ninety\"\n",
        b"\"copy-esc-92@exa\\\\mple.com\",\"Esc\nNinety-Two\"\n",
    ];
    same_as_postgresql(&fx, "WITH (FORMAT csv, HEADER true, ESCAPE '\\')", data).await;
    sentinels.extend(["copy-esc-91@example.com", "Esc \\\"Quoted", "Ninety-Two"]);
    // QUOTE and DELIMITER other than the defaults; `\.` inside a quoted
    // field is data; rows after the real end marker are ignored.
    let data: &[&[u8]] = &[
        b"|copy-quote-93@example.com|;|Quote ; Ninety-Three\n\\.\nstill quoted|\n",
        b"\\.\ncopy-after-marker-94@example.com;After-Marker-94\n",
    ];
    same_as_postgresql(&fx, "WITH (FORMAT csv, QUOTE '|', DELIMITER ';')", data).await;
    sentinels.extend(["copy-quote-93@example.com", "Quote ; Ninety-Three"]);
    // CRLF and CR line endings (the first line fixes them).
    let data: &[&[u8]] = &[b"copy-crlf-95@example.com\tCrlf-Ninety-Five\r\n\\N\tCrlf-Null\r\n"];
    same_as_postgresql(&fx, "", data).await;
    let data: &[&[u8]] =
        &[b"copy-cr-96@example.com\tCr-Ninety-Six\rcopy-cr-97@example.com\tCr-97\r"];
    same_as_postgresql(&fx, "", data).await;
    sentinels.extend([
        "copy-crlf-95@example.com",
        "copy-cr-96@example.com",
        "copy-cr-97@example.com",
    ]);
    // Text escapes: a backslash-escaped delimiter is data, octal and hex
    // escapes, an escaped newline, `\N` as NULL, and `\\N` as a value.
    let data: &[&[u8]] = &[
        b"copy-delim\\\t98@example.com\tOct\\101l-\\x48ex-\\x4\\n98\n",
        b"copy-bsnl-99@example.com\tBack\\\nslash-99\n\\\\N\t\\N\n",
    ];
    same_as_postgresql(&fx, "", data).await;
    sentinels.extend([
        "copy-delim",
        "OctAl-Hex",
        "copy-bsnl-99@example.com",
        "slash-99",
    ]);
    // Legacy option syntax.
    let data: &[&[u8]] = &[b"h1,h2\ncopy-legacy-100@example.com,\"Legacy, Hundred\"\n"];
    same_as_postgresql(&fx, "WITH CSV HEADER QUOTE AS '\"'", data).await;
    let data: &[&[u8]] = &[b"copy-legacy-101@example.com;Legacy-101\n"];
    same_as_postgresql(&fx, "WITH DELIMITER AS ';' NULL AS 'nil'", data).await;
    sentinels.extend([
        "copy-legacy-100@example.com",
        "Legacy, Hundred",
        "copy-legacy-101@example.com",
    ]);
    // FORCE_NOT_NULL / FORCE_NULL.
    let data: &[&[u8]] = &[b"copy-force-102@example.com,\n\"\",Force-102\n"];
    same_as_postgresql(
        &fx,
        "WITH (FORMAT csv, FORCE_NOT_NULL (name), FORCE_NULL (email))",
        data,
    )
    .await;
    sentinels.extend(["copy-force-102@example.com", "Force-102"]);
    // A header naming a column that equals the NULL string.
    let data: &[&[u8]] = &[b"email\tname\ncopy-header-103@example.com\tname\n"];
    same_as_postgresql(&fx, "WITH (HEADER, NULL 'name')", data).await;
    sentinels.push("copy-header-103@example.com");
    fx.assert_no_plaintext(&sentinels).await;
}

#[tokio::test]
async fn copy_that_pgveil_cannot_read_exactly_is_refused() {
    let fx = Calmony::builder()
        .extra_sql("CREATE VIEW public.users_view AS SELECT id, email, name FROM public.users")
        .start();
    let mut r = Raw::login_at(fx.pv.port(), "calmony_app").await;
    let mut all = vec![];
    // Refused at planning (0A000), whatever data follows.
    for (n, sql) in [
        "COPY users (email, name) FROM STDIN WITH (FORMAT csv, HEADER match)",
        "COPY users (email, name) FROM STDIN WITH (FORMAT csv, ENCODING 'LATIN1')",
        "COPY users (email, name) FROM STDIN WITH (FORMAT text, DEFAULT '\\D')",
        "COPY users (email, name) FROM STDIN WITH (FORMAT csv, QUOTE '\"', QUOTE '|')",
        "COPY users (email, name) FROM STDIN WITH (FORMAT csv, DELIMITER E'\\t')",
        "COPY users (email, name) FROM STDIN WITH (FORMAT csv, FORCE_NULL (plan))",
        "COPY users_view (email, name) FROM STDIN",
        "COPY users (email, name) FROM STDIN WITH ESCAPE",
    ]
    .into_iter()
    .enumerate()
    {
        let s = format!("attack-copy-plan-{n}-61@example.com");
        let got = r.copy_in(sql, &[format!("{s},{s}\n").as_bytes()]).await;
        assert_refused(&got, "0A000", &[&s], sql);
        all.push(s);
    }
    // Refused in the data (CopyFail: PostgreSQL reports 57014), before any
    // row of the COPY is stored.
    for (n, (sql, data)) in [
        // Line endings that change (PostgreSQL rejects them).
        (
            "COPY users (email, name) FROM STDIN",
            &b"ok-a@example.com\tA\r\n{s}\tB\n"[..],
        ),
        // A corrupt end marker with rows after it.
        (
            "COPY users (email, name) FROM STDIN",
            b"ok-b@example.com\tB\n\\.x\n{s}\tB\n",
        ),
        // An escape that makes a zero byte.
        (
            "COPY users (email, name) FROM STDIN",
            b"{s}\tzero\\000byte\n",
        ),
        // An unterminated quoted field.
        (
            "COPY users (email, name) FROM STDIN WITH (FORMAT csv)",
            b"\"{s},x\n",
        ),
        // Too many fields (a forged blind index).
        (
            "COPY users (email, name) FROM STDIN",
            b"{s}\tName\t\\\\x00\n",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let s = format!("attack-copy-data-{n}-62@example.com");
        let data = String::from_utf8(data.to_vec()).unwrap().replace("{s}", &s);
        let got = r.copy_in(sql, &[data.as_bytes()]).await;
        assert_refused(&got, "57014", &[&s], &data);
        all.push(s);
    }
    let d = fx.direct().await;
    assert_eq!(
        rows(&d, "SELECT count(*) FROM users").await,
        vec![vec![Some("0".into())]]
    );
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    fx.assert_no_plaintext(&all).await;
}

/// COPY statements are counted on PostgreSQL's tokens: a `--` comment
/// ends at a carriage return as well as a newline, so a COPY after one is
/// seen, and a Query holding it and a protected COPY is refused whole (its
/// data held back).
#[tokio::test]
async fn a_copy_hidden_behind_a_comment_is_counted() {
    let fx = Calmony::builder()
        .extra_sql("CREATE TABLE public.scratch (t text);")
        .start();
    let mut r = Raw::login_at(fx.pv.port(), "calmony_app").await;
    let mut sentinels = Vec::new();
    for (i, hide) in [
        "-- hidden\r",
        "-- hidden\r\n",
        "-- a\r-- b\r",
        "/* a /* nested */ -- b\r */ -- c\r",
    ]
    .into_iter()
    .enumerate()
    {
        let s = format!("Attack-CopyCR-Sentinel-88{i:02}");
        let sql = format!("{hide}COPY scratch (t) FROM STDIN; COPY users (name) FROM STDIN");
        r.send(&[
            query(&sql),
            copy_data(b"first-copy-row\n"),
            copy_done(),
            copy_data(format!("{s}\n").as_bytes()),
            copy_done(),
        ])
        .await;
        assert_refused(&r.until_ready().await, "0A000", &[&s], &format!("{hide:?}"));
        sentinels.push(s);
    }
    // A protected COPY behind such a comment is read as the COPY it is.
    let s = "Attack-CopyCR-Sentinel-8899".to_string();
    let got = r
        .copy_in(
            "-- comment\rCOPY users (name) FROM STDIN",
            &[format!("{s}\n").as_bytes()],
        )
        .await;
    assert_ok(&got, "protected COPY after a comment");
    let app = fx.app("calmony_app").await;
    assert_eq!(
        rows(&app, "SELECT name FROM users").await,
        vec![vec![Some(s.clone())]]
    );
    let d = fx.direct().await;
    assert_eq!(
        rows(&d, "SELECT count(*) FROM scratch").await,
        vec![vec![Some("0".into())]]
    );
    sentinels.push(s);
    let sentinels: Vec<&str> = sentinels.iter().map(String::as_str).collect();
    fx.assert_no_plaintext(&sentinels).await;
}

/// Data after the COPYs a Query runs (here: a second CopyData/CopyDone
/// pair behind a lone protected COPY) is not forwarded: PostgreSQL would
/// ignore it, and it must never reach a COPY raw.
#[tokio::test]
async fn copy_data_after_the_querys_copies_is_held_back() {
    let fx = Calmony::start();
    let mut r = Raw::login_at(fx.pv.port(), "calmony_app").await;
    let (s1, s2) = (
        "Attack-CopyAfter-Sentinel-8871",
        "Attack-CopyAfter-Sentinel-8872",
    );
    let got = r
        .copy_in(
            "COPY users (name) FROM STDIN",
            &[format!("{s1}\n").as_bytes()],
        )
        .await;
    assert_ok(&got, "the COPY");
    // Stray data, then a Query: the stray data never reaches PostgreSQL.
    r.send(&[
        copy_data(format!("{s2}\n").as_bytes()),
        copy_done(),
        query("SELECT 1"),
    ])
    .await;
    assert!(error_of(&r.until_ready().await).is_none());
    let app = fx.app("calmony_app").await;
    assert_eq!(
        rows(&app, "SELECT name FROM users").await,
        vec![vec![Some(s1.to_string())]]
    );
    fx.assert_no_plaintext(&[s1, s2]).await;
}
