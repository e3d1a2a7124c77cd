//! plan() for a point lookup and an insert, and the no-parse pre-check on a
//! statement that touches no protected table.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use pgveil::policy::Policy;
use pgveil::sql::{Analyzer, Mode};

fn bench(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/calmony.yaml");
    let an = Analyzer::new(Arc::new(Policy::load(&path).unwrap()));
    let lookup = "SELECT id, email, name FROM public.users WHERE email = $1";
    let insert = "INSERT INTO public.users (id, email, name) VALUES ($1, $2, $3) RETURNING id";
    let other = "SELECT o.id, o.total, o.created_at FROM orders o WHERE o.customer_id = $1 AND o.status = 'open' LIMIT 50";
    assert!(!an.may_touch_protected(other));
    c.bench_function("plan_point_lookup", |b| {
        b.iter(|| {
            an.plan(
                black_box(lookup),
                "calmony_app",
                Mode::Extended { param_types: &[] },
            )
        })
    });
    c.bench_function("plan_insert", |b| {
        b.iter(|| {
            an.plan(
                black_box(insert),
                "calmony_app",
                Mode::Extended { param_types: &[] },
            )
        })
    });
    c.bench_function("precheck_unprotected_100b", |b| {
        b.iter(|| an.may_touch_protected(black_box(other)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
