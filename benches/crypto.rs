//! Crypto core benchmarks: envelope encrypt/decrypt and blind index of a
//! 32-byte value and of 1 KiB, plus raw AES-256-GCM for comparison, and
//! the `per_value` group: what the open of one 25-byte value costs with
//! the envelope's AAD, a fixed 32-byte AAD (a per-column digest), no AAD,
//! a key schedule per call, and one call over eight values (what batching
//! could save at most). Run: `cargo bench --bench crypto`.

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
    per_value(c, &dek, &key_ref, &ctx);
}

/// Issue 18's question, measured: of the ~300 ns an open of a 25-byte
/// value costs, how much is the AAD's GHASH (the envelope's ~90 bytes vs
/// a 32-byte digest computed once per column) and how much per-call setup
/// (the key schedule; the call itself, bounded by opening eight values in
/// one call).
fn per_value(c: &mut Criterion, dek: &DataKey, key_ref: &KeyRef, ctx: &ColumnContext) {
    let value = [b'a'; 25];
    let env = envelope::encrypt(dek, key_ref, ctx, &value).unwrap();
    let h = envelope::parse_header(&env).unwrap();
    let full_aad = envelope::aad(&env[..env.len() - h.sealed().len()], ctx);
    let digest: [u8; 32] = {
        use sha2::Digest;
        sha2::Sha256::digest(&full_aad).into()
    };
    let key_bytes = *dek.expose_secret();
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key_bytes).unwrap());
    let sealed = |aad: &[u8], len: usize| -> Vec<u8> {
        let mut buf = vec![b'a'; len];
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key([3u8; 12]),
                Aad::from(aad),
                &mut buf,
            )
            .unwrap();
        buf.extend_from_slice(tag.as_ref());
        buf
    };
    let open = |k: &LessSafeKey, aad: &[u8], ct: &[u8], buf: &mut Vec<u8>| {
        buf.clear();
        buf.extend_from_slice(ct);
        k.open_in_place(
            Nonce::assume_unique_for_key([3u8; 12]),
            Aad::from(aad),
            &mut buf[..],
        )
        .unwrap()
        .len()
    };
    let mut g = c.benchmark_group("per_value");
    g.throughput(Throughput::Elements(1));
    // What a version-2 AAD would be: the header (it carries the nonce, so it
    // cannot be precomputed) followed by a 32-byte digest of the rest,
    // computed once per (key, table, column, tenant).
    let header_digest: Vec<u8> = env[..env.len() - h.sealed().len()]
        .iter()
        .chain(digest.iter())
        .copied()
        .collect();
    eprintln!(
        "per_value: envelope AAD {} bytes, header + digest {} bytes",
        full_aad.len(),
        header_digest.len()
    );
    for (name, aad) in [
        ("open_25B_envelope_aad", &full_aad[..]),
        ("open_25B_header_plus_digest", &header_digest[..]),
        ("open_25B_aad_digest_32B", &digest[..]),
        ("open_25B_no_aad", &[][..]),
    ] {
        let ct = sealed(aad, 25);
        let mut buf = Vec::with_capacity(64);
        g.bench_function(name, |b| {
            b.iter(|| open(&key, black_box(aad), black_box(&ct), &mut buf))
        });
    }
    let ct = sealed(&full_aad, 25);
    let mut buf = Vec::with_capacity(64);
    g.bench_function("open_25B_key_schedule_per_call", |b| {
        b.iter(|| {
            let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key_bytes).unwrap());
            open(&k, black_box(&full_aad), black_box(&ct), &mut buf)
        })
    });
    g.bench_function("aad_digest_sha256", |b| {
        use sha2::Digest;
        b.iter(|| sha2::Sha256::digest(black_box(&full_aad)))
    });
    g.bench_function("envelope_decrypt_25B", |b| {
        b.iter(|| envelope::decrypt(dek, ctx, black_box(&env)).unwrap())
    });
    // Eight values in one call vs eight calls: the most any batching of
    // values into one library call could save (one tag per value is still
    // needed, so this is a bound, not a design).
    g.throughput(Throughput::Elements(8));
    let ct8 = sealed(&digest, 25 * 8);
    g.bench_function("open_8x25B_one_call", |b| {
        b.iter(|| open(&key, black_box(&digest), black_box(&ct8), &mut buf))
    });
    let ct1 = sealed(&digest, 25);
    g.bench_function("open_8x25B_eight_calls", |b| {
        b.iter(|| {
            let mut n = 0;
            for _ in 0..8 {
                n += open(&key, black_box(&digest), black_box(&ct1), &mut buf);
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
