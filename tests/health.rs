//! `/healthz` and `/readyz` on the metrics listener, and `pgveil
//! healthcheck`: readiness follows PostgreSQL (and the keystore in it)
//! going away and coming back, with a JSON body naming what failed.

mod common;

use std::time::Duration;

use common::calmony::Calmony;
use common::http::{get, try_status};
use common::*;

const WAIT: Duration = Duration::from_secs(90);

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

#[tokio::test]
async fn readyz_follows_postgresql_and_the_keystore() {
    let mut fx = Calmony::builder()
        .rust_log("info")
        .extra_yaml(&format!("metrics:\n  listen: 127.0.0.1:{}\n", free_port()))
        .start();
    let port = fx.pv.metrics_port();

    let (code, body) = get(port, "/healthz");
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["status"], "ok");
    let (code, body) = get(port, "/readyz");
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["status"], "ready", "{body}");
    for check in ["upstream", "keystore", "master_keys"] {
        assert_eq!(v["checks"][check]["ok"], true, "{check}: {body}");
    }
    let ok = fx.run(&["healthcheck", "--ready"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    // PostgreSQL (holding the keystore too) goes away.
    fx.pg.stop_server();
    let mut last = String::new();
    wait_for(WAIT, "/readyz to answer 503", || {
        let (code, body) = get(port, "/readyz");
        last = body;
        async move { code == 503 }
    })
    .await;
    let v = json(&last);
    assert_eq!(v["status"], "not ready", "{last}");
    let failed: Vec<&str> = v["failed"]
        .as_array()
        .unwrap_or_else(|| panic!("no failed list: {last}"))
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(failed.contains(&"upstream"), "{last}");
    assert!(failed.contains(&"keystore"), "{last}");
    assert_eq!(v["checks"]["upstream"]["ok"], false);
    let why = v["checks"]["upstream"]["error"].as_str().unwrap();
    assert!(why.contains("PostgreSQL"), "{why}");
    // Alive all the same.
    let (code, _) = get(port, "/healthz");
    assert_eq!(code, 200);
    let live = fx.run(&["healthcheck"]);
    assert!(live.status.success());
    let ready = fx.run(&["healthcheck", "--ready"]);
    assert_eq!(ready.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&ready.stderr).contains("503"));

    // Back.
    fx.pg.start_server();
    wait_for(WAIT, "/readyz to answer 200 again", || async {
        get(port, "/readyz").0 == 200
    })
    .await;
    let c = fx.app("calmony_app").await;
    c.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn admin_listener_answers_only_what_it_serves() {
    let fx = Calmony::builder()
        .rust_log("info")
        .extra_yaml(&format!("metrics:\n  listen: 127.0.0.1:{}\n", free_port()))
        .start();
    let port = fx.pv.metrics_port();
    assert_eq!(get(port, "/nowhere").0, 404);
    assert_eq!(common::http::request(port, "POST", "/readyz").0, 405);
    assert_eq!(get(port, "/reload").0, 405);
    // POST /reload from this host reloads (nothing changed here).
    let (code, body) = common::http::request(port, "POST", "/reload");
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["ok"], true);
    assert_eq!(v["generation"], 1);
}

/// The admin listener takes no credentials and is often reachable by the
/// whole network (for Prometheus). Idle connections to it must not take
/// the process's file descriptors from the proxy: pgveil runs here with
/// 128 of them, the admin port gets 300 connections that send nothing,
/// and a PostgreSQL client is still served; the admin listener answers
/// again once they are gone.
#[tokio::test]
async fn idle_admin_connections_cannot_starve_the_proxy() {
    use std::os::unix::process::CommandExt;
    let pg = PgCluster::start(Hba::Trust);
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let yaml = format!(
        "{}metrics:\n  listen: 127.0.0.1:{metrics_port}\n",
        Pgveil::config_for(&pg)
    );
    let listen_port: u16 = yaml
        .lines()
        .find_map(|l| l.strip_prefix("listen: 127.0.0.1:"))
        .unwrap()
        .parse()
        .unwrap();
    let cfg = dir.path().join("pgveil.yaml");
    std::fs::write(&cfg, &yaml).unwrap();
    let log = std::fs::File::create(dir.path().join("pgveil.log")).unwrap();
    let mut cmd = pgveil_cmd();
    cmd.args(["serve", "--config"])
        .arg(&cfg)
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .env_remove("PGVEIL_CONFIG")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let l = libc::rlimit {
                rlim_cur: 128,
                rlim_max: 128,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let logs = || std::fs::read_to_string(dir.path().join("pgveil.log")).unwrap_or_default();
    wait_for(WAIT, "pgveil to listen", || async {
        std::net::TcpStream::connect(("127.0.0.1", metrics_port)).is_ok()
            && std::net::TcpStream::connect(("127.0.0.1", listen_port)).is_ok()
    })
    .await;

    let idle: Vec<std::net::TcpStream> = (0..300)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Well within the time an idle admin client is given (10 s).
    let served = tokio::time::timeout(Duration::from_secs(5), async {
        let c = try_connect_to(listen_port, "postgres", None, "postgres").await?;
        c.simple_query("SELECT 1").await.map(drop)
    })
    .await;
    assert!(
        matches!(served, Ok(Ok(()))),
        "a PostgreSQL client was not served while idle admin connections were open: {served:?}\n{}",
        logs()
    );
    drop(idle);
    wait_for(WAIT, "/healthz to answer again", || async {
        try_status(metrics_port, "/healthz") == Some(200)
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
}
