//! The README's first command: `pgveil demo` starts a throwaway PostgreSQL,
//! writes rows through pgveil and shows both views. Run here with
//! `--no-wait` so it exits after printing.

mod common;

#[test]
fn demo_shows_plaintext_through_pgveil_and_ciphertext_direct() {
    let out = common::pgveil::pgveil_cmd()
        .args(["demo", "--no-wait"])
        .output()
        .expect("run pgveil demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    // The application's view: plaintext.
    assert!(stdout.contains("Ada@Example.com"), "{stdout}");
    assert!(stdout.contains("Grace Hopper"), "{stdout}");
    // The blind-index lookup with normalisers found the mixed-case email.
    assert!(
        stdout.contains("(rewritten to the blind index): Ada Lovelace"),
        "{stdout}"
    );
    // The analyst's lookup is refused, with pgveil's message.
    assert!(
        stdout.contains("refused before PostgreSQL sees it")
            && stdout.contains("role analyst may not search protected column public.users.email"),
        "{stdout}"
    );
    // No Rust debug formatting.
    assert!(
        !stdout.contains("Some(") && !stdout.contains("None"),
        "{stdout}"
    );
    // The analyst's view: envelopes and blind indexes only.
    let direct: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains(" | \\x…"))
        .map(|l| l.split(" | ").nth(1).unwrap_or(""))
        .collect();
    assert_eq!(direct.len(), 3, "{stdout}");
    for d in direct {
        assert!(d.contains("pgv1:…") && d.matches("\\x").count() == 2, "{d}");
        assert!(
            !d.contains("Lovelace") && !d.contains("grace") && !d.contains("Turing"),
            "{d}"
        );
    }
    assert!(stdout.contains("Connection strings"), "{stdout}");
}
