//! Every file of the committed corpus (and of `fuzz/regressions/<target>/`,
//! crash inputs kept after their fix) through the fuzz targets' own
//! functions, without libFuzzer: a stable-toolchain smoke test that the
//! harness still builds against pgveil and that no known input fails.
//!
//! The harness source (`fuzz/src/lib.rs`) is compiled into this test of the
//! main crate rather than through the fuzz workspace, so `cargo test` builds
//! the dependency tree (the AWS SDK, aws-lc-sys) once, not twice: a second
//! debug build of it costs CI ~15 GB of disk and many minutes.

use std::path::Path;

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod pgveil_fuzz;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if dir == "corpus" && !name.starts_with("seed-") {
                continue; // local fuzzing output, not committed
            }
            let data = std::fs::read(&path).unwrap();
            eprintln!("{target}: {}", path.display());
            run(&data);
            n += 1;
        }
    }
    assert!(n > 0, "no seeds for {target}");
}

#[test]
fn frontend_corpus() {
    replay("frontend", pgveil_fuzz::frontend);
}

#[test]
fn backend_corpus() {
    replay("backend", pgveil_fuzz::backend);
}

#[test]
fn analyzer_corpus() {
    replay("analyzer", pgveil_fuzz::analyzer);
}

/// The harness's keystore is live, so the targets reach encryption and
/// decryption instead of ending in the no-keystore refusal.
#[test]
fn keystore_is_live() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ks = pgveil::keys::Keystore::new_no_tls(&pgveil_fuzz::keystore_url()).unwrap();
    rt.block_on(ks.check())
        .unwrap_or_else(|e| panic!("fuzz keystore: {e}"));
}
