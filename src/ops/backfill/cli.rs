//! The command-line end of `pgveil encrypt` and `pgveil rotate`: load the
//! config, re-wrap data keys (rotate), run, print each table's summary and
//! the failed rows, and turn the outcome into the exit code.

use std::path::Path;

use super::load::setup;
use super::summary::Summary;
use super::walk::run;
use super::{Mode, Options};
use crate::config::Config;

/// Print the summaries' failures (at most `max`, no values) and return the
/// exit code: 1 if any row failed.
pub fn report(summaries: &[Summary], max: usize) -> i32 {
    let failed: u64 = summaries.iter().map(|s| s.failed).sum();
    if failed == 0 {
        return 0;
    }
    eprintln!("{failed} row(s) failed and were left unchanged:");
    for f in summaries.iter().flat_map(|s| s.failures.iter()).take(max) {
        eprintln!("  {f}");
    }
    if failed as usize > max {
        eprintln!("  … and {} more", failed as usize - max);
    }
    eprintln!("fix those rows and run the command again (rows already done are skipped)");
    1
}

/// Helper for the CLI: load the config and run.
pub async fn command(config: &Path, url: &str, opts: Options) -> i32 {
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let setup = match setup(&cfg).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    if opts.mode == Mode::Rotate {
        match setup.crypto.keys.rewrap_all().await {
            Ok(0) => {}
            Ok(n) => println!("re-wrapped {n} data key version(s) under the current master key"),
            Err(e) => {
                eprintln!("error: re-wrapping data keys: {e}");
                return 1;
            }
        }
    }
    let res = run(&setup, url, &opts, &mut |s| println!("{s}")).await;
    match res {
        Ok(sums) => report(&sums, 100),
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("rows already processed are committed; run the command again to continue");
            1
        }
    }
}
