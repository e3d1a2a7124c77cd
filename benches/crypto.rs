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
        g.bench_function("encrypt_fixed_salt_nonce", |b| {
            b.iter(|| {
                envelope::encrypt_with(&dek, &key_ref, &ctx, black_box(&value), &[1; 16], &[2; 12])
                    .unwrap()
            })
        });
        g.bench_function("csprng_28_bytes", |b| {
            let mut r = [0u8; 28];
            b.iter(|| aws_lc_rs::rand::fill(black_box(&mut r[..])).unwrap())
        });
        g.bench_function("getrandom_28_bytes", |b| {
            let mut r = [0u8; 28];
            b.iter(|| getrandom_fill(black_box(&mut r[..])))
        });
        g.bench_function("thread_rng_28_bytes", |b| {
            let mut r = [0u8; 28];
            b.iter(|| rand::Rng::fill_bytes(&mut rand::rng(), black_box(&mut r[..])))
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

fn getrandom_fill(b: &mut [u8]) {
    rand::TryRng::try_fill_bytes(&mut rand::rngs::SysRng, b).unwrap()
}

criterion_group!(benches, bench);
criterion_main!(benches);
