//! Unit tests of the local provider and secret loading (keystore and KMS
//! tests are in tests/keystore.rs and tests/kms.rs).

use std::path::Path;

use zeroize::Zeroizing;

use super::*;
use crate::config::SecretRef;
use crate::crypto::DataKey;
use crate::yaml::EnvString;

fn k(b: u8) -> Zeroizing<[u8; 32]> {
    Zeroizing::new([b; 32])
}

fn wctx() -> WrapContext {
    WrapContext {
        key_id: 3,
        version: 1,
        table: "public.users".into(),
        tenant: Some("acme".into()),
    }
}

#[tokio::test]
async fn local_wrap_unwrap_and_master_rotation() {
    let old = LocalProvider::new(vec![("k1".into(), k(1))]).unwrap();
    let dek = DataKey::generate();
    let w = old.wrap(&dek, &wctx()).await.unwrap();
    assert_eq!(w.master_key_id, "k1");
    let back = old.unwrap(&w, &wctx()).await.unwrap();
    assert_eq!(back.expose_secret(), dek.expose_secret());
    // Newest first: k2 wraps, k1 still unwraps.
    let new = LocalProvider::new(vec![("k2".into(), k(2)), ("k1".into(), k(1))]).unwrap();
    assert_eq!(new.current_master_key_id().await.unwrap(), "k2");
    assert!(new.unwrap(&w, &wctx()).await.is_ok());
    assert_eq!(new.wrap(&dek, &wctx()).await.unwrap().master_key_id, "k2");
    let (g, gw) = new.generate(&wctx()).await.unwrap();
    assert_eq!(
        new.unwrap(&gw, &wctx()).await.unwrap().expose_secret(),
        g.expose_secret()
    );
}

#[tokio::test]
async fn wrong_master_key_names_the_id_never_the_key() {
    let right = LocalProvider::new(vec![("k1".into(), k(0xab))]).unwrap();
    let w = right.wrap(&DataKey::generate(), &wctx()).await.unwrap();
    let wrong = LocalProvider::new(vec![("k1".into(), k(0xcd))]).unwrap();
    let e = wrong.unwrap(&w, &wctx()).await.unwrap_err();
    let s = e.to_string();
    assert!(matches!(e, KeyError::WrongMasterKey { .. }), "{s}");
    assert!(s.contains("\"k1\"") && s.contains("data key 3 v1"), "{s}");
    assert!(!s.contains("abab") && !s.contains("cdcd"), "{s}");
    // An id that is no longer configured.
    let other = LocalProvider::new(vec![("k9".into(), k(0xab))]).unwrap();
    let s = other.unwrap(&w, &wctx()).await.unwrap_err().to_string();
    assert!(s.contains("\"k1\"") && s.contains("not configured"), "{s}");
}

#[tokio::test]
async fn wrapping_is_bound_to_its_context() {
    let p = LocalProvider::new(vec![("k1".into(), k(1))]).unwrap();
    let w = p.wrap(&DataKey::generate(), &wctx()).await.unwrap();
    for f in [
        |c: &mut WrapContext| c.version = 2,
        |c: &mut WrapContext| c.key_id = 4,
        |c: &mut WrapContext| c.tenant = Some("globex".into()),
        |c: &mut WrapContext| c.tenant = None,
        |c: &mut WrapContext| c.table = "public.orders".into(),
    ] {
        let mut c = wctx();
        f(&mut c);
        assert!(p.unwrap(&w, &c).await.is_err());
    }
}

#[test]
fn secrets_from_env_and_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mk"), format!("{}\n", "11".repeat(32))).unwrap();
    let r = SecretRef {
        env: None,
        file: Some(EnvString("mk".into())),
    };
    let s = load_secret(&r, dir.path(), "master key k1").unwrap();
    assert_eq!(decode_key_hex(&s, "x").unwrap()[0], 0x11);
    let r = SecretRef {
        env: Some(EnvString("PGVEIL_SURELY_UNSET_MK".into())),
        file: None,
    };
    let e = load_secret(&r, Path::new("/"), "master key k1")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("PGVEIL_SURELY_UNSET_MK") && e.contains("k1"),
        "{e}"
    );
    let e = decode_key_hex("abcd", "master key k1")
        .unwrap_err()
        .to_string();
    assert!(e.contains("64 hex digits") && !e.contains("abcd"), "{e}");
    assert_eq!(generate_key_hex().len(), 64);
    assert!(LocalProvider::new(vec![]).is_err());
    assert!(LocalProvider::new(vec![("a".into(), k(1)), ("a".into(), k(2))]).is_err());
}
