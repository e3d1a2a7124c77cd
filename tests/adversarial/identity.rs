//! Startup identity (issue 14, class 2): the policy identity is the login
//! role exactly as PostgreSQL reads it. Repeated startup keys are refused
//! before anything goes upstream; a session user other than the login role
//! closes the connection; startup settings (`role`, `session_authorization`,
//! `standard_conforming_strings`, `client_encoding`, as `options` or as
//! plain keys) are read from what PostgreSQL reports and cannot widen
//! access.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::calmony::{BIDX_KEY, MASTER_KEY, POLICY};
use crate::common::raw::{self, Raw, errors, query, rows};
use crate::common::*;

/// What an unlisted role sees of a protected value it asks for: no
/// plaintext, and lookups refused (42501).
async fn sees_no_plaintext(c: &mut Raw, v: &str, who: &str) {
    c.send(&[query("SELECT email FROM users")]).await;
    let m = c.until_ready().await;
    assert!(errors(&m).is_empty(), "{who}: {:?}", errors(&m));
    let got = rows(&m);
    assert_eq!(got.len(), 1, "{who}");
    let shown = got[0][0].clone().unwrap_or_default();
    assert!(
        shown.starts_with("\\x") && !shown.contains(v),
        "{who} sees {shown}"
    );
    c.send(&[query(&format!("SELECT id FROM users WHERE email = '{v}'"))])
        .await;
    let e = errors(&c.until_ready().await);
    assert_eq!(e.len(), 1, "{who}: {e:?}");
    assert_eq!(e[0].1, "42501", "{who}: {e:?}");
    assert!(!e[0].2.contains(v), "{who}: the refusal shows the value");
}

async fn stored(fx: &Calmony, v: &str) {
    let app = fx.app("calmony_app").await;
    app.execute(
        "INSERT INTO users (email, name) VALUES ($1, 'Alice')",
        &[&v],
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_startup_keys_are_refused_before_anything_goes_upstream() {
    let fx = Calmony::start();
    let v = "attack-dupkey-3301@example.com";
    stored(&fx, v).await;
    // Every login PostgreSQL accepts from now on is in its log.
    let d = fx.direct().await;
    d.batch_execute("ALTER SYSTEM SET log_connections = on")
        .await
        .unwrap();
    d.query("SELECT pg_reload_conf()", &[]).await.unwrap();
    let port = fx.pg.port();
    assert!(
        wait_until(Duration::from_secs(20), || {
            fx.pg.psql("postgres", "SHOW log_connections").trim() == "on"
        }),
        "log_connections did not take effect"
    );
    let cases: [&[(&str, &str)]; 5] = [
        &[
            ("user", "calmony_app"),
            ("database", "app"),
            ("user", "dba"),
        ],
        &[
            ("user", "dba"),
            ("database", "app"),
            ("user", "calmony_app"),
        ],
        &[
            ("user", "calmony_app"),
            ("database", "pgveil_keys"),
            ("database", "app"),
        ],
        &[
            ("user", "dba"),
            ("database", "app"),
            ("options", "-c role=calmony_app"),
            ("options", ""),
        ],
        &[
            ("user", "dba"),
            ("database", "app"),
            ("USER", "calmony_app"),
        ],
    ];
    for params in cases {
        let mut c = Raw::open(fx.pv.addr(), params).await;
        let m = c.until_closed().await;
        assert_eq!(raw::tags(&m), "E", "{params:?}");
        let e = errors(&m);
        assert_eq!((e[0].0.as_str(), e[0].1.as_str()), ("FATAL", "08P01"));
        assert!(e[0].2.contains("more than once"), "{e:?}");
        for (_, val) in params.iter().filter(|(_, val)| !val.is_empty()) {
            assert!(!e[0].2.contains(val), "the refusal shows a value: {e:?}");
        }
    }
    // A marker login after the attempts: once it is in PostgreSQL's log,
    // any login the attempts had made would be there before it.
    let marker = "pgveil-marker-dupkey-3301";
    let mut cfg = pg_config(port, "postgres", None, "app");
    cfg.application_name(marker);
    let (_m, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let log_path = fx.pg.log_path().to_path_buf();
    let log = || String::from_utf8_lossy(&std::fs::read(&log_path).unwrap()).into_owned();
    assert!(wait_until(Duration::from_secs(20), || log().contains(marker)));
    let log = log();
    for login in [
        "user=dba database=app",
        "user=calmony_app database=app",
        "user=calmony_app database=pgveil_keys",
    ] {
        assert!(
            !log.contains(&format!("connection authorized: {login}")),
            "PostgreSQL saw a login for {login}"
        );
    }
    // The stored value is intact for its reader, and nowhere in plaintext.
    let app = fx.app("calmony_app").await;
    let row = app.query_one("SELECT email FROM users", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), v);
    fx.assert_no_plaintext(&[v]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_role_and_session_authorization_cannot_widen_access() {
    let fx = Calmony::start();
    let v = "attack-startrole-4402@example.com";
    stored(&fx, v).await;
    fx.pg.psql("app", "GRANT calmony_app TO dba");
    let addr = fx.pv.addr();

    // `role` as an option and as a plain key: PostgreSQL makes the reader
    // the current user, the policy identity stays the login role `dba`.
    for params in [
        &[
            ("user", "dba"),
            ("database", "app"),
            ("options", "-c role=calmony_app"),
        ][..],
        &[
            ("user", "dba"),
            ("database", "app"),
            ("role", "calmony_app"),
        ][..],
    ] {
        let mut c = Raw::open(addr, params).await;
        let m = c.until_ready().await;
        assert!(errors(&m).is_empty(), "{params:?}: {:?}", errors(&m));
        c.send(&[query("SELECT current_user::text")]).await;
        assert_eq!(
            rows(&c.until_ready().await),
            vec![vec![Some("calmony_app".to_string())]]
        );
        sees_no_plaintext(&mut c, v, "dba with role=calmony_app").await;
    }

    // `session_authorization` for a role that is not a superuser:
    // PostgreSQL refuses the login itself (42501), pgveil relays it.
    for params in [
        &[
            ("user", "dba"),
            ("database", "app"),
            ("options", "-c session_authorization=calmony_app"),
        ][..],
        &[
            ("user", "dba"),
            ("database", "app"),
            ("session_authorization", "calmony_app"),
        ][..],
    ] {
        let mut c = Raw::open(addr, params).await;
        let m = c.until_closed().await;
        let e = errors(&m);
        assert_eq!(e.len(), 1, "{params:?}: {e:?}");
        assert_eq!((e[0].0.as_str(), e[0].1.as_str()), ("FATAL", "42501"));
        assert!(!m.iter().any(|t| t.0 == b'Z'), "{params:?} got a session");
    }

    // A superuser's startup `session_authorization`: PostgreSQL keeps the
    // login role as the session user (and reports it), so the identity is
    // `postgres`, which the policy does not list.
    let mut c = Raw::open(
        addr,
        &[
            ("user", "postgres"),
            ("database", "app"),
            ("options", "-c session_authorization=calmony_app"),
        ],
    )
    .await;
    let m = c.until_ready().await;
    assert!(errors(&m).is_empty(), "{:?}", errors(&m));
    c.send(&[query("SELECT session_user::text")]).await;
    assert_eq!(
        rows(&c.until_ready().await),
        vec![vec![Some("postgres".to_string())]]
    );
    sees_no_plaintext(&mut c, v, "postgres with session_authorization").await;

    // Settings that change how PostgreSQL reads SQL, as plain startup
    // keys: pgveil follows what PostgreSQL reports and refuses (0A000).
    let w = "attack-startlex-4403@example.com";
    for (key, value, sql) in [
        (
            "standard_conforming_strings",
            "off",
            format!("INSERT INTO users (email, name) VALUES ('{w}', 'x')"),
        ),
        (
            "client_encoding",
            "SJIS",
            format!("INSERT INTO users (email, name) VALUES ('{w}', 'a\\b')"),
        ),
    ] {
        let mut c = Raw::open(
            addr,
            &[("user", "calmony_app"), ("database", "app"), (key, value)],
        )
        .await;
        let m = c.until_ready().await;
        assert!(errors(&m).is_empty(), "{key}: {:?}", errors(&m));
        c.send(&[query(&sql)]).await;
        let e = errors(&c.until_ready().await);
        assert_eq!(e.len(), 1, "{key}: {e:?}");
        assert_eq!(e[0].1, "0A000", "{key}: {e:?}");
        assert!(!e[0].2.contains(w), "{key}: the refusal shows the value");
    }
    let app = fx.app("calmony_app").await;
    let n = app.query("SELECT email FROM users", &[]).await.unwrap();
    assert_eq!(n.len(), 1);
    fx.assert_no_plaintext(&[v, w]).await;
}

/// A fake PostgreSQL that logs everyone in (trust) and reports
/// `session_authorization` as `reported`; it records what it receives
/// after the startup, until pgveil closes the connection.
fn lying_upstream(reported: &'static str) -> (u16, Arc<Mutex<Option<Vec<u8>>>>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(None));
    let g = got.clone();
    std::thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut startup = vec![0; u32::from_be_bytes(len) as usize - 4];
        s.read_exact(&mut startup).unwrap();
        let frame = |tag: u8, body: &[u8]| {
            let mut v = vec![tag];
            v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
            v.extend_from_slice(body);
            v
        };
        let mut out = frame(b'R', &[0, 0, 0, 0]);
        for (k, v) in [
            ("server_version", "15.0"),
            ("client_encoding", "UTF8"),
            ("standard_conforming_strings", "on"),
            ("session_authorization", reported),
        ] {
            out.extend(frame(b'S', format!("{k}\0{v}\0").as_bytes()));
        }
        out.extend(frame(b'K', &[0, 0, 0x30, 0x39, 1, 2, 3, 4]));
        out.extend(frame(b'Z', b"I"));
        s.write_all(&out).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        *g.lock().unwrap() = Some(rest);
    });
    (port, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_user_other_than_the_login_role_closes_the_connection() {
    let fx = Calmony::start();
    let v = "attack-liar-5503@example.com";
    stored(&fx, v).await;
    let (fake, got) = lying_upstream("calmony_app");
    // A second pgveil with the reference policy whose upstream is the
    // fake (its keystore is the real cluster's).
    let config = Calmony::config(&fx.pg, "300s").replace(
        &format!("port: {}\n  tls", fx.pg.port()),
        &format!("port: {fake}\n  tls"),
    );
    assert!(config.contains(&format!("port: {fake}")));
    let b = Pgveil::builder()
        .env("PGVEIL_TEST_MASTER_KEY", MASTER_KEY)
        .env("PGVEIL_TEST_BIDX_KEY", BIDX_KEY)
        .env("RUST_LOG", "trace");
    std::fs::write(b.dir().join("policy.yaml"), POLICY).unwrap();
    let pv = b.start(&config);

    let mut c = Raw::open(pv.addr(), &[("user", "dba"), ("database", "app")]).await;
    let m = c.until_closed().await;
    let e = errors(&m);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!((e[0].0.as_str(), e[0].1.as_str()), ("FATAL", "28000"));
    assert!(!m.iter().any(|t| t.0 == b'Z'), "the client got a session");
    assert!(wait_until(Duration::from_secs(20), || got
        .lock()
        .unwrap()
        .is_some()));
    let rest = got.lock().unwrap().clone().unwrap();
    assert!(
        !rest.contains(&b'Q') && !rest.contains(&b'P'),
        "pgveil sent a statement upstream: {rest:?}"
    );
    fx.assert_no_plaintext(&[v]).await;
}
