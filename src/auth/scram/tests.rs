//! SCRAM against RFC 7677's example and PostgreSQL's message rules.

use super::*;

// RFC 7677 section 3: user "user", password "pencil".
const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
const SERVER_FIRST: &str =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

fn rfc_verifier() -> Verifier {
    let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
    Verifier::from_password("pencil", &salt, 4096)
}

#[test]
fn rfc7677_server_side() {
    let v = rfc_verifier();
    let first = parse_client_first(CLIENT_FIRST.as_bytes(), false).unwrap();
    assert_eq!(first.flag, Gs2Flag::No);
    assert_eq!(first.gs2_header, "n,,");
    assert_eq!(first.bare, "n=user,r=rOprNGfwEbeRWgbNEkqO");
    assert_eq!(first.nonce, "rOprNGfwEbeRWgbNEkqO");
    let sf = parse_server_first(SERVER_FIRST.as_bytes(), &first.nonce).unwrap();
    assert_eq!(server_first(&sf.nonce, &v.salt, v.iterations), SERVER_FIRST);
    let fin = parse_client_final(CLIENT_FINAL.as_bytes()).unwrap();
    assert_eq!(fin.channel_binding, b"n,,");
    assert_eq!(fin.nonce, sf.nonce);
    assert_eq!(
        fin.without_proof,
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    );
    let auth_message = format!("{},{},{}", first.bare, SERVER_FIRST, fin.without_proof);
    let key = v
        .verify_client_proof(auth_message.as_bytes(), &fin.proof)
        .expect("RFC proof verifies");
    // The recovered ClientKey reproduces the same proof (as pgveil's
    // upstream leg will compute it).
    assert_eq!(key.proof(&v.stored_key, auth_message.as_bytes()), fin.proof);
    let sig = v.server_signature(auth_message.as_bytes());
    assert_eq!(format!("v={}", B64.encode(sig)), SERVER_FINAL);
    let parsed = parse_server_final(SERVER_FINAL.as_bytes()).unwrap();
    assert!(v.check_server_signature(auth_message.as_bytes(), &parsed));
    // A flipped bit in the proof fails.
    let mut bad = fin.proof;
    bad[0] ^= 1;
    assert!(
        v.verify_client_proof(auth_message.as_bytes(), &bad)
            .is_none()
    );
    assert!(!v.check_server_signature(auth_message.as_bytes(), &[0u8; 32]));
}

#[test]
fn verifier_round_trip_and_postgres_format() {
    let v = rfc_verifier();
    let text = v.encode();
    assert!(text.starts_with("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"));
    assert_eq!(Verifier::parse(&text).unwrap(), v);
    // Independent cross-check: postgres-protocol's own verifier maker.
    let theirs = postgres_protocol::password::scram_sha_256(b"secret");
    let parsed = Verifier::parse(&theirs).unwrap();
    assert_eq!(parsed.iterations, 4096);
    assert_eq!(parsed.salt.len(), DEFAULT_SALT_LEN);
    assert_eq!(
        Verifier::from_password("secret", &parsed.salt, 4096),
        parsed
    );
    for bad in [
        "SCRAM-SHA-256$4096:c2FsdA==$abc:def",
        "SCRAM-SHA-1$4096:c2FsdA==$8Dd6hJdZTdyLDOxdPdDnTlDPBAF/OC0zvP0SGBVtsIc=:cHvRPTpTFTtaHe8IbZ4mQ0eB7Wp1g6Zkd0A2Vj7yEpA=",
        "SCRAM-SHA-256$x:c2FsdA==$8Dd6hJdZTdyLDOxdPdDnTlDPBAF/OC0zvP0SGBVtsIc=:cHvRPTpTFTtaHe8IbZ4mQ0eB7Wp1g6Zkd0A2Vj7yEpA=",
        "SCRAM-SHA-256$0:c2FsdA==$8Dd6hJdZTdyLDOxdPdDnTlDPBAF/OC0zvP0SGBVtsIc=:cHvRPTpTFTtaHe8IbZ4mQ0eB7Wp1g6Zkd0A2Vj7yEpA=",
        "SCRAM-SHA-256$4096:c2FsdA==$8Dd6hJdZTdyLDOxdPdDnTlDPBAF/OC0zvP0SGBVtsIc=",
    ] {
        assert!(Verifier::parse(bad).is_none(), "{bad}");
    }
}

#[test]
fn classify_like_postgres() {
    assert_eq!(
        Secret::classify("md5c4ca4238a0b923820dcc509a6f75849b"),
        Secret::Md5
    );
    assert!(matches!(
        Secret::classify(&rfc_verifier().encode()),
        Secret::Scram(_)
    ));
    assert_eq!(
        Secret::classify("md5notreallyhex"),
        Secret::Plain("md5notreallyhex".into())
    );
    assert_eq!(Secret::classify("pencil"), Secret::Plain("pencil".into()));
}

#[test]
fn gs2_header_rules() {
    let p = parse_client_first(b"p=tls-server-end-point,,n=,r=abc", true).unwrap();
    assert_eq!(p.flag, Gs2Flag::Bound("tls-server-end-point".into()));
    assert_eq!(p.gs2_header, "p=tls-server-end-point,,");
    assert_eq!(p.bare, "n=,r=abc");
    let y = parse_client_first(b"y,,n=,r=abc", false).unwrap();
    assert_eq!(y.flag, Gs2Flag::Yes);
    // PLUS selected without binding data, and the reverse.
    assert!(parse_client_first(b"n,,n=,r=abc", true).is_err());
    assert!(parse_client_first(b"p=tls-server-end-point,,n=,r=abc", false).is_err());
    assert!(parse_client_first(b"n,a=admin,n=,r=abc", false).is_err());
    assert!(parse_client_first(b"n,,m=ext,n=,r=abc", false).is_err());
    assert!(parse_client_first(b"n,,n=,r=a\x01b", false).is_err());
    assert!(parse_client_first(b"x,,n=,r=abc", false).is_err());
    // Trailing extensions are ignored.
    assert!(parse_client_first(b"n,,n=,r=abc,x=1", false).is_ok());
}

#[test]
fn client_final_rules() {
    assert!(parse_client_final(b"c=biws,r=abc").is_err());
    assert!(parse_client_final(b"c=biws,r=abc,p=AAAA").is_err());
    let ok = format!("c=biws,r=abc,x=1,p={}", B64.encode([7u8; 32]));
    let f = parse_client_final(ok.as_bytes()).unwrap();
    assert_eq!(f.without_proof, "c=biws,r=abc,x=1");
    assert_eq!(f.proof, [7u8; 32]);
    assert!(parse_client_final(format!("{ok},").as_bytes()).is_err());
}

#[test]
fn server_first_must_extend_nonce() {
    assert!(parse_server_first(b"r=abcdef,s=c2FsdA==,i=4096", "abc").is_ok());
    assert!(parse_server_first(b"r=xbcdef,s=c2FsdA==,i=4096", "abc").is_err());
    assert!(parse_server_first(b"r=abc,s=c2FsdA==,i=4096", "abc").is_err());
    assert!(parse_server_first(b"r=abcd,s=c2FsdA==,i=0", "abc").is_err());
    assert!(parse_server_final(b"e=invalid-proof").is_err());
}

/// postgres-protocol's SCRAM client (what tokio-postgres uses) against
/// pgveil's server side, with and without channel binding.
#[test]
fn independent_client_against_server_side() {
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    let salt = b"0123456789abcdef";
    let v = Verifier::from_password("hunter2", salt, 4096);
    let cbind = sha256(b"a certificate");
    for (binding, plus, header) in [
        (ChannelBinding::unsupported(), false, "n,,"),
        (ChannelBinding::unrequested(), false, "y,,"),
        (
            ChannelBinding::tls_server_end_point(cbind.to_vec()),
            true,
            "p=tls-server-end-point,,",
        ),
    ] {
        let mut client = ScramSha256::new(b"hunter2", binding);
        let first = parse_client_first(client.message(), plus).unwrap();
        assert_eq!(first.gs2_header, header);
        let nonce = format!("{}{}", first.nonce, nonce());
        let sf = server_first(&nonce, &v.salt, v.iterations);
        client.update(sf.as_bytes()).unwrap();
        let fin = parse_client_final(client.message()).unwrap();
        let mut expected = header.as_bytes().to_vec();
        if plus {
            expected.extend_from_slice(&cbind);
        }
        assert_eq!(fin.channel_binding, expected);
        assert_eq!(fin.nonce, nonce);
        let am = format!("{},{},{}", first.bare, sf, fin.without_proof);
        let key = v.verify_client_proof(am.as_bytes(), &fin.proof).unwrap();
        assert_eq!(key.proof(&v.stored_key, am.as_bytes()), fin.proof);
        let server_final = format!("v={}", b64(&v.server_signature(am.as_bytes())));
        client.finish(server_final.as_bytes()).unwrap();
    }
    // A wrong password does not verify.
    let mut client = ScramSha256::new(b"hunter3", ChannelBinding::unsupported());
    let first = parse_client_first(client.message(), false).unwrap();
    let nonce = format!("{}{}", first.nonce, nonce());
    let sf = server_first(&nonce, &v.salt, v.iterations);
    client.update(sf.as_bytes()).unwrap();
    let fin = parse_client_final(client.message()).unwrap();
    let am = format!("{},{},{}", first.bare, sf, fin.without_proof);
    assert!(v.verify_client_proof(am.as_bytes(), &fin.proof).is_none());
}

#[test]
fn secrets_are_not_printed() {
    let v = rfc_verifier();
    assert_eq!(format!("{v:?}"), "Verifier(<redacted>)");
    assert!(!format!("{:?}", Secret::Plain("pencil".into())).contains("pencil"));
}
