//! `/healthz` and `/readyz` on the metrics listener, and `pgveil
//! healthcheck`: readiness follows PostgreSQL (and the keystore in it)
//! going away and coming back, with a JSON body naming what failed.

mod common;

use std::time::Duration;

use common::calmony::Calmony;
use common::http::get;
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
