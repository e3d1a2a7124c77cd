//! Unit tests of the backend's pure helpers; the message flow is tested
//! end to end against PostgreSQL (tests/adversarial.rs, tests/cursors.rs,
//! tests/copy_out.rs and others).

use super::errors::without_rejection_context;

fn body(fields: &[&str]) -> Vec<u8> {
    let mut b = Vec::new();
    for f in fields {
        b.extend_from_slice(f.as_bytes());
        b.push(0);
    }
    b.push(0);
    b
}

#[test]
fn refusals_lose_the_do_block_context_only() {
    let ours = body(&[
        "SERROR",
        "C42501",
        "Mpgveil: ordering by public.users.email is not possible",
        "WPL/pgSQL function inline_code_block line 1 at RAISE",
        "Rexec_stmt_raise",
    ]);
    assert_eq!(
        without_rejection_context(&ours).unwrap(),
        body(&[
            "SERROR",
            "C42501",
            "Mpgveil: ordering by public.users.email is not possible",
            "Rexec_stmt_raise",
        ])
    );
    let theirs = body(&[
        "SERROR",
        "CP0001",
        "Mmine",
        "WPL/pgSQL function inline_code_block line 1 at RAISE",
    ]);
    assert!(without_rejection_context(&theirs).is_none());
    assert!(without_rejection_context(&body(&["SERROR", "Mpgveil: x"])).is_none());
}
