//! The shadow diff of two ~10 KiB JSON order documents that differ in a few
//! fields, parsing included: the work done per shadowed request.
//! Target: well under 1 ms.

use bytes::Bytes;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::{json, Value};

use gateway::shadow::{diff, Answer, DiffOptions, FieldPattern};

/// An order with `lines` line items, roughly 10 KiB at 56 lines.
fn order(lines: usize, tweak: bool) -> Value {
    let items: Vec<Value> = (0..lines)
        .map(|i| {
            let price = 3.5 + i as f64 * 1.25;
            json!({
                "line": i,
                "sku": format!("SKU-{:06}", 1000 + i * 7),
                "name": format!("Product number {i} in the winter catalogue"),
                "quantity": 1 + i % 4,
                "unit_price": if tweak && i == 2 { price + 1.0 } else { price },
                "currency": "EUR",
                "tags": ["gift", "winter", if i % 2 == 0 { "even" } else { "odd" }],
                "timestamp": if tweak { 1_700_000_100 + i } else { 1_700_000_000 + i },
            })
        })
        .collect();
    json!({
        "order_id": "ord-2026-11-000123",
        "status": if tweak { "confirmed" } else { "pending" },
        "customer": {"id": 1001, "name": "Alice Example", "email": "alice@example.com", "tier": "gold"},
        "shipping": {"street": "1 Main St", "city": "Springfield", "zip": "12345", "country": "US", "method": "express"},
        "items": items,
        "totals": {"net": 1234.56, "tax": 234.56, "gross": if tweak { 1469.13 } else { 1469.12 }},
        "meta": {"trace_id": if tweak { "c-7f3a" } else { "s-19be" }, "generated_at": "2026-11-05T10:00:00Z"},
    })
}

fn answer(v: &Value) -> Answer {
    Answer {
        status: 200,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("cache-control".into(), "no-store".into()),
            ("x-request-id".into(), "abc".into()),
        ],
        body: Bytes::from(v.to_string()),
        ..Answer::default()
    }
}

fn bench(c: &mut Criterion) {
    let (stable, canary) = (answer(&order(56, false)), answer(&order(56, true)));
    let pattern = |p: &str| FieldPattern::parse(p).expect("pattern");
    let opts = DiffOptions {
        ignore_fields: vec![pattern("$.meta.trace_id"), pattern("$..timestamp")],
        array_sets: vec![pattern("$.items[*].tags")],
        numeric_tolerance: Some(1e-6),
        ..DiffOptions::default()
    };
    let found = diff(&stable, &canary, &opts);
    assert_eq!(found.len(), 3, "status, unit_price and gross differ: {found:?}");
    let kib = (stable.body.len() / 1024, canary.body.len() / 1024);
    c.bench_function(&format!("json diff, {} + {} KiB", kib.0, kib.1), |b| {
        b.iter(|| diff(black_box(&stable), black_box(&canary), black_box(&opts)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
