//! What planning a large statement holds, counted by the allocator: the
//! bytes the frontend charges per byte of a rewritten statement
//! (`session::frontend::REWRITE_FACTOR`) must cover the peak measured here.
//! Counts bytes allocated, not time: no timed assertion.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use pgveil::policy::Policy;
use pgveil::sql::{Analyzer, Mode, StatementPlan};

struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = NOW.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        NOW.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            if new >= l.size() {
                let now = NOW.fetch_add(new - l.size(), Ordering::Relaxed) + new - l.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                NOW.fetch_sub(l.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static A: Counting = Counting;

const POLICY: &str = "\
version: 1
groups:
  app: [app_user]
tables:
  public.users:
    columns:
      email:
        type: text
        blind_index: { column: email_bidx, normalize: [trim, lowercase] }
        access: { app: write }
      name: { type: text, access: { app: write } }
";

/// Peak bytes allocated while `f` runs, beyond what was allocated before,
/// and what it returned still holds.
fn measure<T>(f: impl FnOnce() -> T) -> (usize, usize, T) {
    let base = NOW.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let out = f();
    let peak = PEAK.load(Ordering::SeqCst) - base;
    let kept = NOW.load(Ordering::SeqCst).saturating_sub(base);
    (peak, kept, out)
}

#[test]
fn planning_a_large_literal_holds_a_small_multiple_of_it() {
    let policy = Policy::from_text(Path::new("t.yaml"), POLICY).unwrap();
    let an = Analyzer::new(Arc::new(policy));
    let n = 32 << 20;
    // (statement, bound on the planning peak per byte of it)
    for (what, sql, bound) in [
        (
            "simple INSERT, one literal into a protected column",
            format!(
                "INSERT INTO users (email, name) VALUES ('big@example.com', '{}')",
                "a".repeat(n)
            ),
            // The parse (sqlparser's tokens, and its copies of the literal
            // while it parses) is the peak: 5.0 measured.
            6.0,
        ),
        (
            "simple INSERT, one literal into a plain column of a protected table",
            format!(
                "INSERT INTO users (email, note) VALUES ('big@example.com', '{}')",
                "a".repeat(n)
            ),
            // The literal stays in the text sent, so the check parse of
            // the spliced text holds it again: 9.1 measured.
            10.0,
        ),
    ] {
        let (peak, kept, plans) = measure(|| an.plan(&sql, "app_user", Mode::Simple));
        assert!(
            matches!(&plans[..], [StatementPlan::Rewrite(_)]),
            "{what}: {plans:?}"
        );
        let x = |b: usize| b as f64 / sql.len() as f64;
        println!(
            "{what}: planning peaked at {:.1}x the statement, the plan keeps {:.1}x",
            x(peak),
            x(kept)
        );
        assert!(
            x(peak) <= bound,
            "{what}: planning held {:.1}x the statement (bound {bound})",
            x(peak)
        );
        drop(plans);
    }
}
