//! Unit tests of `seal`'s pure pieces: tenant ids in their canonical
//! forms, bytea's text forms and literals, and the blind index of a value
//! as sent. Encryption needs a data key from the keystore: it is tested
//! end to end (tests/encryption.rs, tests/operations.rs).

use std::sync::Arc;

use super::*;
use crate::keys::{KeyManagerOptions, Keystore, LocalProvider};
use crate::policy::{BlindIndexPolicy, ColumnPolicy};

/// Crypto with a blind-index root and a keystore it never reaches: what
/// needs no data key can be tested without PostgreSQL.
fn crypto() -> ValueCrypto {
    let provider = LocalProvider::new(vec![("k1".into(), Zeroizing::new([1u8; 32]))]).unwrap();
    let store = Keystore::new_no_tls("postgres://nobody@127.0.0.1:1/none").unwrap();
    ValueCrypto::new(
        KeyManager::new(Arc::new(provider), store, KeyManagerOptions::default()),
        Some(BlindIndexRoot::from_hex(&"11".repeat(32)).unwrap()),
    )
}

fn attr(ty: crate::crypto::PgType, blind_index: bool) -> ProtectedAttr {
    ProtectedAttr {
        column: ColumnRef::new("public", "users", "n"),
        storage: Storage::Bytea,
        policy: ColumnPolicy {
            name: "n".into(),
            ty,
            blind_index: blind_index.then(|| BlindIndexPolicy {
                column: "n_bidx".into(),
                normalize: vec![],
                next: Some("n_bidx_next".into()),
                line: None,
            }),
            access: vec![],
            line: None,
        },
        tenant: None,
        tenant_type: None,
    }
}

#[test]
fn index_reads_a_value_as_canonical_param_does() {
    let c = crypto();
    let a = attr(crate::crypto::PgType::Int8, true);
    let by_hand = |next| {
        c.blind_index(&a, next, &c.canonical(&a, 0, b"42").unwrap())
            .unwrap()
    };
    let int2 = 42i16.to_be_bytes();
    let canonical = c.canonical(&a, 0, b"42").unwrap();
    for next in [false, true] {
        // A literal or COPY field: text, no declared type.
        assert_eq!(c.index(&a, next, Sent::Text(b"42")).unwrap(), by_hand(next));
        // A Bind parameter declared int2, in binary: read through its
        // text form, as PostgreSQL's cast would.
        let param = Sent::Param {
            declared: 21,
            format: 1,
            value: &int2,
        };
        assert_eq!(c.index(&a, next, param).unwrap(), by_hand(next));
        // Plaintext already canonical (backfill).
        let given = Sent::Canonical(&canonical);
        assert_eq!(c.index(&a, next, given).unwrap(), by_hand(next));
    }
    assert_ne!(by_hand(false), by_hand(true));
    assert!(matches!(
        c.index(&a, false, Sent::Text(b"forty-two")),
        Err(ValueError::Invalid { .. })
    ));
    let plain = attr(crate::crypto::PgType::Int8, false);
    assert!(matches!(
        c.index(&plain, false, Sent::Text(b"42")),
        Err(ValueError::NoBlindIndexKey { .. })
    ));
}

#[test]
fn tenant_ids_are_canonical_for_their_column_type() {
    assert_eq!(canonical_tenant(Some("bigint"), "042").unwrap(), "42");
    assert_eq!(canonical_tenant(Some("bigint"), " +42 ").unwrap(), "42");
    assert_eq!(canonical_tenant(Some("integer"), "-007").unwrap(), "-7");
    assert!(canonical_tenant(Some("smallint"), "40000").is_none());
    assert!(canonical_tenant(Some("bigint"), "4 2").is_none());
    assert!(canonical_tenant(Some("bigint"), "").is_none());
    assert_eq!(canonical_tenant(Some("text"), "042").unwrap(), "042");
    assert_eq!(canonical_tenant(None, "042").unwrap(), "042");
    assert_eq!(
        canonical_tenant(Some("uuid"), "{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}").unwrap(),
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    );
    assert!(same_tenant_spelling("042", "42"));
    assert!(!same_tenant_spelling("42", "43"));
    assert!(!same_tenant_spelling("acme", "ACME"));
}

#[test]
fn binary_tenants() {
    assert_eq!(
        binary_tenant("integer", &42i32.to_be_bytes()).unwrap(),
        "42"
    );
    assert_eq!(binary_tenant("bigint", &7i64.to_be_bytes()).unwrap(), "7");
    assert_eq!(
        binary_tenant("uuid", &[0x11; 16]).unwrap(),
        "11111111-1111-1111-1111-111111111111"
    );
    assert!(binary_tenant("integer", &[1, 2]).is_none());
}

#[test]
fn bytea_text_forms() {
    assert_eq!(decode_bytea_text(b"\\x00ff").unwrap(), vec![0, 255]);
    assert_eq!(
        decode_bytea_text(b"a\\\\b\\001").unwrap(),
        b"a\\b\x01".to_vec()
    );
    assert!(decode_bytea_text(b"\\xzz").is_none());
    assert!(decode_bytea_text(b"\\x0").is_none());
    assert!(decode_bytea_text(b"\\x0g").is_none());
    assert_eq!(decode_bytea_text(b"\\xABcd").unwrap(), vec![0xab, 0xcd]);
    let all: Vec<u8> = (0..=255).collect();
    assert_eq!(
        decode_bytea_text(format!("\\x{}", hex::encode(&all)).as_bytes()).unwrap(),
        all
    );
    assert_eq!(bytea_literal(&[1, 2]), "E'\\\\x0102'::bytea");
    assert_eq!(
        array_literal(Storage::Bytea, &[Some(vec![1, 2]), None]),
        r#"E'{"\\\\x0102",NULL}'::bytea[]"#
    );
}
