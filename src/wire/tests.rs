//! The message families' tests: each message read back as written, and
//! malformed input refused.

use bytes::{Bytes, BytesMut};

use super::auth::*;
use super::body::read_cstr;
use super::error::*;
use super::query::*;
use super::result::*;
use super::startup::*;
use super::status::*;
use super::tag::{be, fe, field, txn};

#[test]
fn startup_round_trip() {
    let s = Startup {
        version: PROTOCOL_V3,
        params: vec![
            ("user".into(), "alice".into()),
            ("database".into(), "app".into()),
            ("application_name".into(), "x".into()),
        ],
    };
    let raw = s.encode();
    assert_eq!(parse_first_packet(&raw).unwrap(), FirstPacket::Startup(s));
}

#[test]
fn startup_names_as_postgres_reads_them() {
    let s = |params: &[(&str, &str)]| Startup {
        version: PROTOCOL_V3,
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let dup = s(&[
        ("user", "calmony_app"),
        ("database", "app"),
        ("user", "dba"),
    ]);
    assert_eq!(dup.repeated_key(), Some("user"));
    let dup = s(&[("database", "a"), ("user", "u"), ("DataBase", "b")]);
    assert_eq!(dup.repeated_key(), Some("DataBase"));
    let dup = s(&[("user", "u"), ("options", "-c role=a"), ("options", "")]);
    assert_eq!(dup.repeated_key(), Some("options"));
    let one = s(&[("user", "u"), ("database", ""), ("application_name", "x")]);
    assert_eq!(one.repeated_key(), None);
    // An empty database is the user's, as in PostgreSQL.
    assert_eq!(one.database(), Some("u"));
    let long = "r".repeat(70);
    let one = s(&[("user", &long), ("database", &format!("{long}x"))]);
    assert_eq!(one.user(), Some(&long[..63]));
    assert_eq!(one.database(), Some(&long[..63]));
    // Cut at the character boundary before byte 63.
    let wide = format!("{}é", "a".repeat(62));
    assert_eq!(pg_name(&wide), &wide[..62]);
    assert_eq!(pg_name("app"), "app");
}

#[test]
fn first_packets() {
    assert_eq!(
        parse_first_packet(&ssl_request()).unwrap(),
        FirstPacket::SslRequest
    );
    assert_eq!(
        parse_first_packet(&cancel_request(7, 9)).unwrap(),
        FirstPacket::Cancel { pid: 7, secret: 9 }
    );
    let mut v = vec![0, 0, 0, 8];
    v.extend_from_slice(&1234u32.to_be_bytes());
    assert!(parse_first_packet(&v).is_err());
}

#[test]
fn error_fields() {
    let e = error_response_with("ERROR", "42501", "no", Some("do this"));
    let fields = parse_error_fields(&e[5..]);
    assert!(fields.contains(&(field::CODE, "42501".into())));
    assert!(fields.contains(&(field::HINT, "do this".into())));
    assert_eq!(error_code(&e[5..]).as_deref(), Some("42501"));
}

#[test]
fn sasl() {
    let m = auth_sasl(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
    assert_eq!(auth_code(&m[5..]), Some(AUTH_SASL));
    assert_eq!(
        sasl_mechanisms(&m[5..]),
        vec!["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
    );
    let p = sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc");
    assert_eq!(
        parse_sasl_initial_response(&p[5..]).unwrap(),
        ("SCRAM-SHA-256".into(), b"n,,n=,r=abc".to_vec())
    );
}

#[test]
fn bind_round_trip() {
    let m = BindMsg {
        portal: "p".into(),
        statement: "s".into(),
        param_formats: vec![0, 1],
        params: vec![Some(Bytes::from_static(b"abc")), None],
        result_formats: vec![1],
    };
    let mut out = BytesMut::new();
    m.encode(&mut out);
    let body = Bytes::copy_from_slice(&out[5..]);
    assert_eq!(BindMsg::decode(&body).unwrap(), m);
    assert_eq!(m.param_format(1), 1);
    // Truncated input is rejected, not trusted.
    assert!(BindMsg::decode(&body.slice(..body.len() - 3)).is_none());
}

#[test]
fn row_description_round_trip() {
    let f = vec![Field {
        name: "email".into(),
        table_oid: 16384,
        attnum: 2,
        type_oid: 17,
        type_len: -1,
        type_mod: -1,
        format: 0,
    }];
    let mut out = BytesMut::new();
    encode_row_description(&mut out, &f);
    assert_eq!(decode_row_description(&out[5..]).unwrap(), f);
}

#[test]
fn arrays() {
    // What pgveil sends upstream reads back in PostgreSQL's reader.
    let bin = encode_binary_array(25, &[Some(b"a".to_vec()), None]);
    let a = crate::sql::array::decode_binary(&bin).unwrap();
    assert_eq!((a.elem_oid, a.items), (25, vec![Some(b"a".to_vec()), None]));
    let empty = encode_binary_array(17, &[]);
    assert!(
        crate::sql::array::decode_binary(&empty)
            .unwrap()
            .items
            .is_empty()
    );
}

#[test]
fn cstr() {
    let mut b: &[u8] = b"user\0bob\0";
    assert_eq!(read_cstr(&mut b), Some("user"));
    assert_eq!(read_cstr(&mut b), Some("bob"));
    assert_eq!(read_cstr(&mut b), None);
}

#[test]
fn status_messages_read_back() {
    let k = backend_key_data(7, 0xdead_beef);
    assert_eq!(k[0], be::BACKEND_KEY_DATA);
    assert_eq!(decode_backend_key_data(&k[5..]), Some((7, 0xdead_beef)));
    assert_eq!(decode_backend_key_data(&k[5..12]), None);
    let p = parameter_status("session_authorization", "alice");
    assert_eq!(p[0], be::PARAMETER_STATUS);
    assert_eq!(
        decode_parameter_status(&p[5..]),
        Some(("session_authorization", "alice"))
    );
    assert_eq!(decode_parameter_status(b"name\0"), None);
    assert_eq!(
        &ready_for_query(txn::IDLE)[..],
        &[be::READY_FOR_QUERY, 0, 0, 0, 5, txn::IDLE]
    );
}

#[test]
fn data_row_round_trip() {
    let cols = vec![Some(Bytes::from_static(b"x")), None, Some(Bytes::new())];
    let mut out = BytesMut::new();
    encode_data_row(&mut out, &cols);
    assert_eq!(out[0], be::DATA_ROW);
    let body = Bytes::copy_from_slice(&out[5..]);
    assert_eq!(decode_data_row(&body).unwrap(), cols);
    assert_eq!(
        data_row_values(&body).unwrap(),
        vec![Some(&b"x"[..]), None, Some(&b""[..])]
    );
    assert!(data_row_values(&body[..body.len() - 1]).is_none());
    assert!(data_row_values(&body[..4]).is_none());
}

#[test]
fn bodiless_messages() {
    let mut out = BytesMut::new();
    encode_sync(&mut out);
    encode_flush(&mut out);
    assert_eq!(&out[..], &[fe::SYNC, 0, 0, 0, 4, fe::FLUSH, 0, 0, 0, 4]);
    assert_eq!(TERMINATE_MESSAGE, [fe::TERMINATE, 0, 0, 0, 4]);
}

#[test]
fn error_fields_in_order_and_absent_ones_left_out() {
    let e = error_response_fields(&[
        (field::SEVERITY, Some("FATAL")),
        (field::CODE, Some("08P01")),
        (field::HINT, None),
        (field::DETAIL, Some("d")),
    ]);
    assert_eq!(e[0], be::ERROR_RESPONSE);
    assert_eq!(&e[5..], b"SFATAL\0C08P01\0Dd\0\0");
    assert_eq!(
        error_response("ERROR", "42501", "no"),
        error_response_fields(&[
            (field::SEVERITY, Some("ERROR")),
            (field::SEVERITY_NONLOCALIZED, Some("ERROR")),
            (field::CODE, Some("42501")),
            (field::MESSAGE, Some("no")),
        ])
    );
}

#[test]
fn a_negative_value_length_other_than_null_is_malformed() {
    // PostgreSQL reads -1 as NULL and fails any other negative length: a
    // Bind pgveil rewrites must not turn such a parameter into a NULL.
    let null = (-1i32).to_be_bytes();
    let mut b = &null[..];
    assert_eq!(crate::wire::body::get_value(&mut b), Some(None));
    let bad = (-2i32).to_be_bytes();
    let mut b = &bad[..];
    assert_eq!(crate::wire::body::get_value(&mut b), None);
    let mut bind = bytes::BytesMut::new();
    bind.extend_from_slice(b"\0\0"); // portal, statement
    bind.extend_from_slice(&0i16.to_be_bytes()); // formats
    bind.extend_from_slice(&1i16.to_be_bytes()); // one parameter
    bind.extend_from_slice(&(-5i32).to_be_bytes());
    bind.extend_from_slice(&0i16.to_be_bytes()); // result formats
    assert!(crate::wire::query::BindMsg::decode(&bind.freeze()).is_none());
}
