//! The order path's hot functions, in isolation: a reservation in the
//! in-memory ledger, a seckill token check, order-number generation, and
//! parsing an order request's JSON. `cargo bench`; figures in
//! docs/BENCHMARKS.md.
#![recursion_limit = "256"]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use seckill::cache::memory::{MemoryKvStore, MemoryStockLedger};
use seckill::cache::{KvStore, Reservation, StockLedger};
use seckill::domain::{IdGenerator, OrderNo, PromoId, UserId};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

fn reservation(c: &mut Criterion) {
    let rt = runtime();
    let ledger = MemoryStockLedger::new();
    let ids = IdGenerator::new(1);
    let promo = PromoId(1);
    rt.block_on(ledger.warm(promo, i64::MAX / 2, 1)).unwrap();
    let mut user = 0i64;
    let mut g = c.benchmark_group("ledger");
    g.throughput(Throughput::Elements(1));
    g.bench_function("reserve one (memory)", |b| {
        b.iter(|| {
            user += 1;
            let r = Reservation {
                promo,
                user: UserId(user),
                amount: 1,
                id: ids.next_id(),
            };
            rt.block_on(ledger.reserve(std::slice::from_ref(&r)))
                .unwrap()
        })
    });
    g.throughput(Throughput::Elements(128));
    g.bench_function("reserve a batch of 128 (memory)", |b| {
        b.iter_batched(
            || {
                (0..128)
                    .map(|_| {
                        user += 1;
                        Reservation {
                            promo,
                            user: UserId(user),
                            amount: 1,
                            id: ids.next_id(),
                        }
                    })
                    .collect::<Vec<_>>()
            },
            |batch| rt.block_on(ledger.reserve(&batch)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn token_check(c: &mut Criterion) {
    let rt = runtime();
    let kv = MemoryKvStore::new();
    let mut n = 0u64;
    c.bench_function("seckill token: issue + check once (memory)", |b| {
        b.iter(|| {
            n += 1;
            let key = format!("token:{n}");
            rt.block_on(async {
                kv.set(&key, "1:2:3", Duration::from_secs(60))
                    .await
                    .unwrap();
                kv.take(&key).await.unwrap()
            })
        })
    });
}

fn order_numbers(c: &mut Criterion) {
    let ids = IdGenerator::new(7);
    let now = chrono::Utc::now();
    c.bench_function("order number (Snowflake id + yyyyMMdd)", |b| {
        b.iter(|| OrderNo::new(now, ids.next_id()))
    });
}

fn request_json(c: &mut Criterion) {
    let body = br#"{"promo_id": 12, "item_id": 34, "amount": 1, "token": "3q2-7wEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#;
    c.bench_function("order request JSON parse", |b| {
        b.iter(|| serde_json::from_slice::<seckill::http::orders::OrderRequest>(body).unwrap())
    });
}

criterion_group!(
    benches,
    reservation,
    token_check,
    order_numbers,
    request_json
);
criterion_main!(benches);
