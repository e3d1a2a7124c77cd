//! Crypto core benchmarks: envelope encrypt/decrypt and blind index of a
//! 32-byte value and of 1 KiB, plus raw AES-256-GCM for comparison.
//! Run: `cargo bench --bench crypto`.

use std::hint::black_box;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pgveil::crypto::envelope::{self, DataKey, KeyRef};
use pgveil::crypto::{BlindIndexRoot, ColumnContext, Normalizer, PgType};

fn bench(c: &mut Criterion) {
    let dek = DataKey::generate();
    let key_ref = KeyRef {
        key_id: 1,
        version: 1,
        tenant: None,
    };
    let ctx = ColumnContext::new("public", "users", "email", PgType::Text);
    let root = BlindIndexRoot::from_bytes(&[7u8; 32]).unwrap();
    let bidx = root.column_key("public", "users", "email");
    let raw = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[9u8; 32]).unwrap());

    for (name, len) in [("32B", 32usize), ("1KiB", 1024)] {
        let value = vec![b'a'; len];
        let env = envelope::encrypt(&dek, &key_ref, &ctx, &value).unwrap();
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function("encrypt", |b| {
            b.iter(|| envelope::encrypt(&dek, &key_ref, &ctx, black_box(&value)).unwrap())
        });
        g.bench_function("encrypt_fixed_nonce", |b| {
            b.iter(|| {
                envelope::encrypt_with(&dek, &key_ref, &ctx, black_box(&value), &[2; 12]).unwrap()
            })
        });
        g.bench_function("getrandom_12_bytes_per_call", |b| {
            let mut r = [0u8; 12];
            b.iter(|| getrandom::fill(black_box(&mut r[..])).unwrap())
        });
        g.bench_function("pooled_nonce", |b| b.iter(envelope::fresh_nonce));
        let names = envelope::aad_names(&ctx);
        g.bench_function("decrypt_into_reused_buffers", |b| {
            let h = envelope::parse_header(&env).unwrap();
            let (mut aad, mut out) = (Vec::new(), Vec::new());
            b.iter(|| {
                envelope::open_into(&dek, black_box(&h), None, &names, &mut aad, &mut out).unwrap()
            })
        });
        g.bench_function("decrypt", |b| {
            b.iter(|| envelope::decrypt(&dek, &ctx, black_box(&env)).unwrap())
        });
        g.bench_function("blind_index", |b| {
            b.iter(|| bidx.compute(PgType::Text, &[], black_box(&value)))
        });
        g.bench_function("blind_index_trim_lowercase", |b| {
            b.iter(|| {
                bidx.compute(
                    PgType::Text,
                    &[Normalizer::Trim, Normalizer::Lowercase],
                    black_box(&value),
                )
            })
        });
        g.bench_function("raw_aes_gcm_seal", |b| {
            let mut buf = value.clone();
            b.iter(|| {
                raw.seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key([0u8; 12]),
                    Aad::from(&b"aad"[..]),
                    black_box(&mut buf[..]),
                )
                .unwrap()
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
