//! Unit tests of the crypto core (no I/O).

use super::canonical::{Format, canonicalize, index_form, render};
use super::envelope::{self, DataKey, KeyRef};
use super::*;

fn text(ty: PgType, s: &str) -> Vec<u8> {
    canonicalize(ty, Format::Text, s.as_bytes())
        .unwrap_or_else(|e| panic!("{ty} {s:?}: {e}"))
        .to_vec()
}

fn out_text(ty: PgType, c: &[u8]) -> String {
    String::from_utf8(render(ty, Format::Text, c).unwrap()).unwrap()
}

/// (type, text input, PostgreSQL's text output, binary wire form)
fn cases() -> Vec<(PgType, &'static str, &'static str, Vec<u8>)> {
    let n = |v: &[i16], w: i16, sign: u16, dscale: u16| {
        let mut b = Vec::new();
        b.extend_from_slice(&(v.len() as i16).to_be_bytes());
        b.extend_from_slice(&w.to_be_bytes());
        b.extend_from_slice(&sign.to_be_bytes());
        b.extend_from_slice(&dscale.to_be_bytes());
        for d in v {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b
    };
    vec![
        (
            PgType::Text,
            "héllo wörld",
            "héllo wörld",
            "héllo wörld".into(),
        ),
        (PgType::Text, "", "", vec![]),
        (
            PgType::Varchar,
            "Alice@Example.com ",
            "Alice@Example.com ",
            "Alice@Example.com ".into(),
        ),
        (
            PgType::Int2,
            " -32768 ",
            "-32768",
            (-32768i16).to_be_bytes().to_vec(),
        ),
        (PgType::Int2, "+42", "42", 42i16.to_be_bytes().to_vec()),
        (PgType::Int4, "42", "42", 42i32.to_be_bytes().to_vec()),
        (
            PgType::Int4,
            "-2147483648",
            "-2147483648",
            i32::MIN.to_be_bytes().to_vec(),
        ),
        (
            PgType::Int8,
            "-9223372036854775808",
            "-9223372036854775808",
            i64::MIN.to_be_bytes().to_vec(),
        ),
        (
            PgType::Int8,
            "9223372036854775807",
            "9223372036854775807",
            i64::MAX.to_be_bytes().to_vec(),
        ),
        (PgType::Numeric, "1.50", "1.50", n(&[1, 5000], 0, 0, 2)),
        (PgType::Numeric, " 0001.50 ", "1.50", n(&[1, 5000], 0, 0, 2)),
        (
            PgType::Numeric,
            "-12345678.9",
            "-12345678.9",
            n(&[1234, 5678, 9000], 1, 0x4000, 1),
        ),
        (PgType::Numeric, "0.0001", "0.0001", n(&[1], -1, 0, 4)),
        (PgType::Numeric, "1e3", "1000", n(&[1000], 0, 0, 0)),
        (PgType::Numeric, "1.5e-3", "0.0015", n(&[15], -1, 0, 4)),
        (PgType::Numeric, "10000", "10000", n(&[1], 1, 0, 0)),
        (PgType::Numeric, "-0.00", "0.00", n(&[], 0, 0, 2)),
        (PgType::Numeric, ".5", "0.5", n(&[5000], -1, 0, 1)),
        (PgType::Numeric, "0", "0", n(&[], 0, 0, 0)),
        (PgType::Numeric, "nan", "NaN", n(&[], 0, 0xC000, 0)),
        (
            PgType::Numeric,
            "-Infinity",
            "-Infinity",
            n(&[], 0, 0xF000, 0),
        ),
        (PgType::Bool, "yes", "t", vec![1]),
        (PgType::Bool, " TRUE ", "t", vec![1]),
        (PgType::Bool, "off", "f", vec![0]),
        (PgType::Bool, "0", "f", vec![0]),
        (
            PgType::Date,
            "2000-01-01",
            "2000-01-01",
            0i32.to_be_bytes().to_vec(),
        ),
        (
            PgType::Date,
            "1999-12-31",
            "1999-12-31",
            (-1i32).to_be_bytes().to_vec(),
        ),
        (
            PgType::Date,
            "2024-02-29",
            "2024-02-29",
            8825i32.to_be_bytes().to_vec(),
        ),
        (
            PgType::Date,
            "0044-03-15 BC",
            "0044-03-15 BC",
            (-746_117i32).to_be_bytes().to_vec(),
        ),
        (
            PgType::Date,
            "infinity",
            "infinity",
            i32::MAX.to_be_bytes().to_vec(),
        ),
        (
            PgType::Date,
            "epoch",
            "1970-01-01",
            (-10957i32).to_be_bytes().to_vec(),
        ),
        (
            PgType::Timestamp,
            "2000-01-01 00:00:01.5",
            "2000-01-01 00:00:01.5",
            1_500_000i64.to_be_bytes().to_vec(),
        ),
        (
            PgType::Timestamp,
            "2000-01-01T00:00:00.0000005",
            "2000-01-01 00:00:00.000001",
            1i64.to_be_bytes().to_vec(),
        ),
        (
            PgType::Timestamp,
            "1999-12-31 23:59:59",
            "1999-12-31 23:59:59",
            (-1_000_000i64).to_be_bytes().to_vec(),
        ),
        (
            PgType::Timestamp,
            "2000-01-01 10:00:00+05",
            "2000-01-01 10:00:00",
            36_000_000_000i64.to_be_bytes().to_vec(),
        ),
        (
            PgType::Timestamp,
            "2000-01-02",
            "2000-01-02 00:00:00",
            86_400_000_000i64.to_be_bytes().to_vec(),
        ),
        (
            PgType::Timestamp,
            "-infinity",
            "-infinity",
            i64::MIN.to_be_bytes().to_vec(),
        ),
        (
            PgType::Timestamptz,
            "2000-01-01 02:00:00+02",
            "2000-01-01 00:00:00+00",
            0i64.to_be_bytes().to_vec(),
        ),
        (
            PgType::Timestamptz,
            "2000-01-01T00:00:00Z",
            "2000-01-01 00:00:00+00",
            0i64.to_be_bytes().to_vec(),
        ),
        (
            PgType::Timestamptz,
            "2000-01-01 05:30:00+05:30",
            "2000-01-01 00:00:00+00",
            0i64.to_be_bytes().to_vec(),
        ),
        (
            PgType::Timestamptz,
            "1999-12-31 19:00:00-0500",
            "2000-01-01 00:00:00+00",
            0i64.to_be_bytes().to_vec(),
        ),
        (
            PgType::Uuid,
            "{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            hex::decode("a0eebc999c0b4ef8bb6d6bb9bd380a11").unwrap(),
        ),
        (
            PgType::Uuid,
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            hex::decode("a0eebc999c0b4ef8bb6d6bb9bd380a11").unwrap(),
        ),
        (
            PgType::Jsonb,
            r#" {"bb":1, "a" : [1.50, "x\u0041\n", null, true], "a": {"z": -0}} "#,
            r#"{"a": {"z": 0}, "bb": 1}"#,
            [&[1u8][..], br#"{"a": {"z": 0}, "bb": 1}"#].concat(),
        ),
        (
            PgType::Jsonb,
            r#"[1.50, "\u00e9\"", 1e2, {}]"#,
            r#"[1.50, "é\"", 100, {}]"#,
            [&[1u8][..], r#"[1.50, "é\"", 100, {}]"#.as_bytes()].concat(),
        ),
        (PgType::Jsonb, "\"s\"", "\"s\"", b"\x01\"s\"".to_vec()),
        (PgType::Bytea, "\\x01 02ff", "\\x0102ff", vec![1, 2, 0xff]),
        (
            PgType::Bytea,
            "ab\\\\\\001",
            "\\x61625c01",
            vec![b'a', b'b', b'\\', 1],
        ),
        (PgType::Bytea, "", "\\x", vec![]),
    ]
}

#[test]
fn every_type_round_trips_in_both_formats() {
    let mut seen = std::collections::HashSet::new();
    for (ty, input, output, binary) in cases() {
        seen.insert(ty);
        let c = text(ty, input);
        assert_eq!(out_text(ty, &c), output, "{ty} {input:?}");
        // Text output parses back to the same canonical form.
        assert_eq!(text(ty, output), c, "{ty} {output:?}");
        // Binary wire form: same canonical form, and rendered identically.
        let cb = canonicalize(ty, Format::Binary, &binary).unwrap_or_else(|e| panic!("{ty}: {e}"));
        assert_eq!(&cb[..], &c[..], "{ty} {input:?} binary");
        assert_eq!(
            render(ty, Format::Binary, &c).unwrap(),
            binary,
            "{ty} {input:?} render binary"
        );
    }
    for t in PgType::ALL {
        assert!(seen.contains(&t), "no case for {t}");
    }
}

#[test]
fn ints_share_one_canonical_form() {
    assert_eq!(text(PgType::Int2, "42"), text(PgType::Int8, "42"));
    assert_eq!(text(PgType::Int4, "42"), 42i64.to_be_bytes());
}

#[test]
fn garbage_is_rejected_without_echoing_it() {
    let bad: &[(PgType, &str)] = &[
        (PgType::Int2, "32768"),
        (PgType::Int4, "4x2"),
        (PgType::Int8, ""),
        (PgType::Numeric, "1.2.3"),
        (PgType::Numeric, "1e99999"),
        (PgType::Bool, "maybe"),
        (PgType::Bool, "o"),
        (PgType::Date, "2023-02-29"),
        (PgType::Date, "0000-01-01"),
        (PgType::Date, "2023-13-01"),
        (PgType::Timestamp, "2023-01-01 25:00"),
        (PgType::Timestamptz, "2023-01-01 10:00"),
        (PgType::Uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1"),
        (PgType::Uuid, "a0eebc99--9c0b4ef8bb6d6bb9bd380a11"),
        (PgType::Jsonb, "{\"a\":}"),
        (PgType::Jsonb, "[1,]"),
        (PgType::Jsonb, "01"),
        (PgType::Jsonb, "\"\\u0000\""),
        (PgType::Bytea, "\\x0"),
        (PgType::Bytea, "\\q"),
        (PgType::Text, "a\0b"),
    ];
    for (ty, v) in bad {
        let sentinel = format!("{v}SENTINEL");
        let e = canonicalize(*ty, Format::Text, v.as_bytes());
        assert!(e.is_err(), "{ty} accepted {v:?}");
        let e = canonicalize(*ty, Format::Text, sentinel.as_bytes()).unwrap_err();
        assert!(!e.to_string().contains("SENTINEL"), "{e}");
    }
    assert!(canonicalize(PgType::Int4, Format::Binary, &[0, 0, 1]).is_err());
    assert!(canonicalize(PgType::Bool, Format::Binary, &[2]).is_err());
    assert!(canonicalize(PgType::Jsonb, Format::Binary, b"\x02{}").is_err());
    assert!(
        canonicalize(
            PgType::Numeric,
            Format::Binary,
            &[0, 1, 0, 0, 0, 0, 0, 0, 0x27, 0x10]
        )
        .is_err()
    );
    assert!(canonicalize(PgType::Text, Format::Binary, &[0xff]).is_err());
    let deep = "[".repeat(5000) + &"]".repeat(5000);
    assert!(canonicalize(PgType::Jsonb, Format::Text, deep.as_bytes()).is_err());
}

#[test]
fn numeric_index_form_ignores_scale() {
    let a = text(PgType::Numeric, "1.5");
    let b = text(PgType::Numeric, "1.500");
    assert_ne!(a, b);
    assert_eq!(
        index_form(PgType::Numeric, &a),
        index_form(PgType::Numeric, &b)
    );
    assert_eq!(
        &index_form(PgType::Numeric, &text(PgType::Numeric, "2.000"))[..],
        b"2"
    );
    assert_eq!(
        &index_form(PgType::Numeric, &text(PgType::Numeric, "-0.0"))[..],
        b"0"
    );
}

fn key() -> DataKey {
    DataKey::from_bytes(&(0u8..32).collect::<Vec<_>>()).unwrap()
}

fn ctx() -> ColumnContext {
    ColumnContext::new("public", "users", "email", PgType::Text)
}

fn kref(tenant: Option<&str>) -> KeyRef {
    KeyRef {
        key_id: 7,
        version: 2,
        tenant: tenant.map(str::to_string),
    }
}

#[test]
fn envelope_round_trip_and_peek() {
    let dek = DataKey::generate();
    for (c, r) in [
        (ctx(), kref(None)),
        (ctx().with_tenant("acme"), kref(Some("acme"))),
    ] {
        for pt in [&b""[..], b"alice@example.com", &[7u8; 5000][..]] {
            let env = envelope::encrypt(&dek, &r, &c, pt).unwrap();
            assert_eq!(
                env.len(),
                envelope::OVERHEAD + pt.len() + r.tenant().map_or(0, str::len)
            );
            assert!(envelope::is_envelope(&env));
            assert_eq!(envelope::peek_key(&env).unwrap(), r);
            assert_eq!(&envelope::decrypt(&dek, &c, &env).unwrap()[..], pt);
            let t = envelope::to_text(&env);
            assert!(t.starts_with("pgv1:"));
            assert_eq!(envelope::from_text(&t).unwrap(), env);
        }
    }
    // Fresh randomness every time.
    let a = envelope::encrypt(&dek, &kref(None), &ctx(), b"x").unwrap();
    let b = envelope::encrypt(&dek, &kref(None), &ctx(), b"x").unwrap();
    assert_ne!(a, b);
    // The tenant of the key must be the value's.
    assert!(envelope::encrypt(&dek, &kref(Some("a")), &ctx(), b"x").is_err());
}

#[test]
fn flipping_any_byte_fails() {
    let dek = key();
    let c = ctx().with_tenant("acme");
    let env = envelope::encrypt(&dek, &kref(Some("acme")), &c, b"alice@example.com").unwrap();
    for i in 0..env.len() {
        for bit in [0x01u8, 0x80] {
            let mut t = env.clone();
            t[i] ^= bit;
            let r = envelope::decrypt(&dek, &c, &t);
            assert!(r.is_err(), "byte {i} bit {bit:#x} accepted");
        }
    }
    for cut in 0..env.len() {
        assert!(envelope::decrypt(&dek, &c, &env[..cut]).is_err());
        assert!(!envelope::is_envelope(&env[..cut]));
    }
    let mut longer = env.clone();
    longer.push(0);
    assert!(envelope::decrypt(&dek, &c, &longer).is_err());
}

#[test]
fn aad_binds_column_table_tenant_and_type() {
    let dek = key();
    let c = ctx().with_tenant("acme");
    let env = envelope::encrypt(&dek, &kref(Some("acme")), &c, b"alice@example.com").unwrap();
    let mut col = c.clone();
    col.column = "phone".into();
    let mut table = c.clone();
    table.table = "pay_customers".into();
    let mut schema = c.clone();
    schema.schema = "phi".into();
    let mut ty = c.clone();
    ty.ty = PgType::Varchar;
    let other_tenant = ctx().with_tenant("globex");
    let no_tenant = ctx();
    for (what, wrong) in [
        ("column", col),
        ("table", table),
        ("schema", schema),
        ("type", ty),
        ("tenant", other_tenant),
        ("no tenant", no_tenant),
    ] {
        let e = envelope::decrypt(&dek, &wrong, &env).unwrap_err();
        assert!(
            matches!(e, CryptoError::DecryptFailed { .. }),
            "{what}: {e}"
        );
        assert!(!e.to_string().contains("alice"), "{e}");
    }
    // Wrong key.
    assert!(envelope::decrypt(&DataKey::generate(), &c, &env).is_err());
    // Length-prefixing: moving bytes between names changes the AAD.
    let a = ColumnContext::new("ab", "c", "d", PgType::Text);
    let b = ColumnContext::new("a", "bc", "d", PgType::Text);
    assert_ne!(envelope::aad(b"h", &a), envelope::aad(b"h", &b));
}

#[test]
fn is_envelope_and_from_text_reject_plaintext() {
    for s in [
        "",
        "alice@example.com",
        "pgv1:",
        "pgv1:not base64!",
        "pgv1:cHY",
    ] {
        assert!(envelope::from_text(s).is_none(), "{s:?}");
        assert!(!envelope::is_envelope(s.as_bytes()), "{s:?}");
    }
    let mut fake = b"pv\x01".to_vec();
    fake.extend_from_slice(&[0u8; 100]);
    assert!(!envelope::is_envelope(&fake));
    // Future format versions are named in the error.
    let mut v2 = envelope::encrypt(&key(), &kref(None), &ctx(), b"x").unwrap();
    v2[2] = 2;
    assert_eq!(
        envelope::peek_key(&v2).unwrap_err(),
        CryptoError::UnsupportedVersion(2)
    );
}

/// The vector printed in docs/crypto.md.
/// Reproduced independently with Python `cryptography` (docs/crypto.md).
pub(crate) const VECTOR_HEX: &str = "70760100000007000000020461636d65c0c1c2c3c4c5c6c7c8c9cacb0000001161244e041238f326f9b48dce57828b39213d4ddee9fc1097cda16cce2b3a0ea875";

#[test]
fn test_vector() {
    let dek = key();
    let nonce: [u8; 12] = core::array::from_fn(|i| 0xc0 + i as u8);
    let c = ctx().with_tenant("acme");
    let env = envelope::encrypt_with(&dek, &kref(Some("acme")), &c, b"alice@example.com", &nonce)
        .unwrap();
    println!("envelope: {}", hex::encode(&env));
    println!("text: {}", envelope::to_text(&env));
    println!(
        "aad: {}",
        hex::encode(envelope::aad(&env[..envelope::HEADER_LEN + 4], &c))
    );
    assert_eq!(hex::encode(&env), VECTOR_HEX);
    assert_eq!(
        &envelope::decrypt(&dek, &c, &env).unwrap()[..],
        b"alice@example.com"
    );
}

#[test]
fn nonces_are_fresh_across_pool_refills_and_threads() {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..5_000 {
        assert!(seen.insert(envelope::fresh_nonce()), "nonce repeated");
    }
    let other: Vec<_> =
        std::thread::spawn(|| (0..1_000).map(|_| envelope::fresh_nonce()).collect())
            .join()
            .unwrap();
    for n in other {
        assert!(seen.insert(n), "nonce repeated across threads");
    }
    // Two envelopes of one value differ (fresh nonce), both decrypt.
    let a = envelope::encrypt(&key(), &kref(None), &ctx(), b"same").unwrap();
    let b = envelope::encrypt(&key(), &kref(None), &ctx(), b"same").unwrap();
    assert_ne!(a, b);
    assert_eq!(&envelope::decrypt(&key(), &ctx(), &b).unwrap()[..], b"same");
}

#[test]
fn blind_index() {
    let root = BlindIndexRoot::from_bytes(&[0x42; 32]).unwrap();
    let email = root.column_key("public", "users", "email");
    let other = root.column_key("public", "pay_customers", "email");
    let norm = [Normalizer::Trim, Normalizer::Lowercase];
    let a = email.compute(PgType::Text, &norm, b"Alice@Example.com ");
    let b = email.compute(PgType::Text, &norm, b"alice@example.com");
    assert_eq!(a, b);
    assert!(email.matches(PgType::Text, &norm, b"ALICE@example.com", &a));
    assert!(!email.matches(PgType::Text, &norm, b"bob@example.com", &a));
    assert_ne!(a, other.compute(PgType::Text, &norm, b"alice@example.com"));
    assert_ne!(a, email.compute(PgType::Text, &[], b"Alice@Example.com "));
    // text and varchar index alike; text/binary wire formats index alike.
    assert_eq!(
        a,
        email.compute(PgType::Varchar, &norm, b"alice@example.com")
    );
    let i_text = text(PgType::Int4, "42");
    let i_bin = canonicalize(PgType::Int4, Format::Binary, &42i32.to_be_bytes()).unwrap();
    assert_eq!(
        email.compute(PgType::Int4, &[], &i_text),
        email.compute(PgType::Int4, &[], &i_bin)
    );
    // numeric: equal values with different scales match.
    assert_eq!(
        email.compute(PgType::Numeric, &[], &text(PgType::Numeric, "1.5")),
        email.compute(PgType::Numeric, &[], &text(PgType::Numeric, "1.50"))
    );
    // digits_only on a non-text type uses its text rendering.
    let d1 = email.compute(
        PgType::Numeric,
        &[Normalizer::DigitsOnly],
        &text(PgType::Numeric, "-12.5"),
    );
    let d2 = email.compute(
        PgType::Numeric,
        &[Normalizer::DigitsOnly],
        &text(PgType::Numeric, "125"),
    );
    assert_eq!(d1, d2);
    // Types are separated.
    assert_ne!(
        email.compute(PgType::Text, &[], b"42"),
        email.compute(PgType::Numeric, &[], b"42")
    );
    println!("bidx vector: {}", hex::encode(b));
    assert_eq!(hex::encode(b), BIDX_HEX);
    assert!(BlindIndexRoot::from_bytes(&[0; 31]).is_err());
    assert!(format!("{root:?}").contains("redacted"));
}

pub(crate) const BIDX_HEX: &str =
    "9478580923e66a7239850dd784db33a57f7a871b266e94343f242565960a1da0";

#[test]
fn ct_eq_works() {
    assert!(ct_eq(b"abc", b"abc"));
    assert!(!ct_eq(b"abc", b"abd"));
    assert!(!ct_eq(b"abc", b"ab"));
}

#[test]
fn debug_never_prints_keys() {
    let k = key();
    let s = format!("{k:?}");
    assert!(!s.contains("0, 1, 2"), "{s}");
    assert!(s.contains("redacted"));
}
