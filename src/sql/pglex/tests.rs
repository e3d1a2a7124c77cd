use super::*;

fn kinds(sql: &str) -> Vec<(Kind, &str)> {
    tokens(sql)
        .into_iter()
        .map(|t| (t.kind, &sql[t.span]))
        .collect()
}

#[test]
fn strings_end_where_postgresql_ends_them() {
    // standard_conforming_strings = on: a backslash is an ordinary
    // character, so in '\'' the second quote doubles the third: one string
    // runs to the quote after `--`.
    let sql = r#"VALUES (50, '\'', $$x@example.com$$, NULL)--', 'decoy')"#;
    let k = kinds(sql);
    assert_eq!(k[4], (Kind::String, r#"'\'', $$x@example.com$$, NULL)--'"#));
    assert_eq!(k[6], (Kind::String, "'decoy'"));
    assert_eq!(
        kinds("E'a\\'b' 'c''d'"),
        vec![(Kind::EString, "E'a\\'b'"), (Kind::String, "'c''d'")]
    );
    assert_eq!(kinds("xe'a'")[0], (Kind::Ident, "xe"));
    assert_eq!(kinds("U&'d\\0061t' u&\"x\"")[0].0, Kind::UnicodeString);
    assert_eq!(kinds("U&'x' UESCAPE '!'")[0].0, Kind::Unsure);
    assert_eq!(kinds("'a'\n'b'")[0].0, Kind::Unsure);
    assert_eq!(kinds("'a' 'b'").len(), 2);
    assert_eq!(kinds("$q$ ' $$ $q$")[0], (Kind::Dollar, "$q$ ' $$ $q$"));
    assert_eq!(kinds("a$b$ c")[0], (Kind::Ident, "a$b$"));
}

#[test]
fn comments_numbers_operators() {
    assert_eq!(
        kinds("1 /* a /* nested */ still */ 2 -- x\n3"),
        vec![
            (Kind::Number, "1"),
            (Kind::Number, "2"),
            (Kind::Number, "3")
        ]
    );
    assert_eq!(kinds("a--b")[0], (Kind::Ident, "a"));
    assert_eq!(kinds("a--b").len(), 1);
    assert_eq!(
        kinds("x=-1"),
        vec![
            (Kind::Ident, "x"),
            (Kind::Op, "="),
            (Kind::Op, "-"),
            (Kind::Number, "1")
        ]
    );
    assert_eq!(kinds("x@-1")[1], (Kind::Op, "@-"));
    assert_eq!(kinds("x<>y")[1], (Kind::Op, "<>"));
    assert_eq!(kinds("x*/*c*/y").len(), 3);
    assert_eq!(kinds("a::int")[1], (Kind::Op, "::"));
    assert_eq!(kinds("1.5e-3")[0], (Kind::Number, "1.5e-3"));
    assert_eq!(kinds("1..2")[0], (Kind::Number, "1"));
    assert_eq!(kinds("1abc")[0].0, Kind::Unsure);
    assert_eq!(kinds("$1")[0], (Kind::Param, "$1"));
    assert_eq!(kinds("$1x")[0].0, Kind::Unsure);
    assert_eq!(kinds("/* open")[0].0, Kind::Unsure);
}

#[test]
fn values_are_decoded_like_postgresql() {
    let v = |s: &str| value(s, &tokens(s)[0]);
    assert_eq!(v("'it''s'").as_deref(), Some("it's"));
    assert_eq!(v(r"E'a\nb\101\x41\u0041\q'").as_deref(), Some("a\nbAAAq"));
    assert_eq!(v(r"E'\0'"), None);
    assert_eq!(v(r"E'\xff'"), None); // not UTF-8
    assert_eq!(v(r"U&'d\0061t\+000061'").as_deref(), Some("data"));
    assert_eq!(v("$t$x'y$t$").as_deref(), Some("x'y"));
    assert_eq!(v("\"a\"\"b\"").as_deref(), Some("a\"b"));
}

#[test]
fn the_two_readings_agree_on_ordinary_sql() {
    for sql in [
        "SELECT id, email FROM users WHERE email = 'a@b' AND id IN (1, 2.5, $1)",
        "INSERT INTO users (id, name) VALUES ($1, E'x\\ny'), (2, $$it's$$)",
        "SELECT \"Email\"::text FROM public.users u -- trailing comment",
        "UPDATE users SET name = 'a''b' /* c */ WHERE id = 1 RETURNING *",
        "SELECT x->>'k', y #> '{a}' FROM t WHERE z <> 1 AND w != 2",
        "SELECT N'abc', X'ff'",
        // Issue 14's example: both read one long string; the proxy went
        // wrong only when it printed the statement again.
        r#"INSERT INTO users (id, plan, email) VALUES (50, '\'', $$x@example.com$$, NULL)--', 'decoy@example.com')"#,
    ] {
        assert_eq!(agree(sql), Ok(()), "{sql}");
    }
}

#[test]
fn the_two_readings_disagree_on_hostile_sql() {
    for sql in [
        "SELECT 'a'\n'b'",
        "SELECT U&'x' UESCAPE '!'",
        "SELECT 1abc",
        "SELECT /* unterminated",
    ] {
        assert!(agree(sql).is_err(), "{sql}: {:?}", kinds(sql));
    }
}

#[test]
fn spans_end_on_character_boundaries() {
    // Junk right after a number ends the (unsure) token inside a
    // multi-byte character; fuzzing found callers slicing the text there.
    for sql in ["2\u{fffd}mail", "1ȼx", "select 1é from t", "copy 9\u{23c}"] {
        for t in Tokens::new(sql) {
            assert!(sql.get(t.span.clone()).is_some(), "{sql:?}: {:?}", t.span);
        }
    }
    assert_eq!(
        crate::session::copy::copy_kind("copy 9\u{23c} from stdin"),
        crate::session::copy::CopyKind::FromStdin
    );
}

#[test]
fn positions_map_every_line_and_column_to_its_byte() {
    // Multi-byte characters, newlines and lines longer than the
    // checkpoint step, against a walk of every character.
    let sql = format!(
        "SELECT 'é{}ü'\n, \"ñ\"\n\n{}€ 'x'",
        "ab".repeat(100),
        "ß".repeat(130)
    );
    let pos = Positions::new(&sql);
    let (mut line, mut col) = (1u64, 1u64);
    for (b, c) in sql.char_indices() {
        assert_eq!(pos.byte(line, col), Some(b), "line {line} column {col}");
        if c == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    assert_eq!(pos.byte(line, col), Some(sql.len()));
    assert_eq!(pos.byte(line, col + 1), None);
    assert_eq!(pos.byte(line + 1, 1), None);
    assert_eq!(pos.byte(0, 1), None);
}
