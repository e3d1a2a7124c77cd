//! Application programs in other languages (driver and ORM scripts under
//! `tests/drivers` and `tests/orm`) run against a [`Calmony`] fixture: each
//! prints one JSON object per line, a step with `"ok": true`, and this
//! checks the report.

use std::process::{Command, Output};

use super::Calmony;

/// Run `cmd` (libpq's `PG*` variables removed, so only its connection
/// string counts): it must exit 0, every line starting with `{` must be a
/// JSON object, every step but `final` must report `"ok": true`, and each
/// of `want` must be reported. On failure the message carries the
/// program's output and the tail of pgveil's log. Returns the report lines.
pub fn run_program(
    fx: &Calmony,
    what: &str,
    cmd: &mut Command,
    want: &[&str],
) -> Vec<serde_json::Value> {
    let out: Output = cmd
        .env_remove("PGPASSWORD")
        .env_remove("PGHOST")
        .env_remove("PGPORT")
        .env_remove("PGUSER")
        .env_remove("PGDATABASE")
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = || {
        let logs = fx.pv.logs();
        let mut start = logs.len().saturating_sub(8000);
        while !logs.is_char_boundary(start) {
            start += 1;
        }
        format!(
            "--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n--- pgveil log (tail) ---\n{}",
            &logs[start..]
        )
    };
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        context()
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{what}: bad report line {l:?}: {e}\n{}", context()))
        })
        .collect();
    for l in &lines {
        if l["step"] != "final" {
            assert_eq!(l["ok"], true, "{what}: step failed: {l}\n{}", context());
        }
    }
    for step in want {
        assert!(
            lines.iter().any(|l| l["step"] == *step),
            "{what}: step {step} not reported\n{}",
            context()
        );
    }
    lines
}
