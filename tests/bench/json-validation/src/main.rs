//! Validation of JSON input at memory speed (issue 15): how long each way of
//! checking that a value is UTF-8 and well-formed JSON takes per event, on
//! 10,000 events shaped like the generator's (about 230 bytes), each checked
//! 200 times. `ok` counts the events accepted (every one should be).
//!
//! cargo run --release --manifest-path tests/bench/json-validation/Cargo.toml

use std::time::Instant;

use serde::de::IgnoredAny;

/// One way of validating an event.
type Check = fn(&[u8]) -> bool;

fn main() {
    let events: Vec<Vec<u8>> = (0..10_000u64)
        .map(|i| {
            format!(
                r#"{{"user_id": "7869075c-bcb1-48ce-8bcb-{i:012}", "app_version": "2.3.{}", "device_type": "android", "ip": "129.37.127.{}", "locale": "US", "device_id": "081-59-{:04}", "timestamp": "1694479554"}}"#,
                i % 7,
                i % 255,
                i % 9999
            )
            .into_bytes()
        })
        .collect();
    let rounds = 200;
    let checks: [(&str, Check); 6] = [
        ("std utf8 + serde_json (the host)", |v| {
            std::str::from_utf8(v).is_ok() && serde_json::from_slice::<IgnoredAny>(v).is_ok()
        }),
        ("simdutf8 + serde_json", |v| {
            simdutf8::basic::from_utf8(v).is_ok() && serde_json::from_slice::<IgnoredAny>(v).is_ok()
        }),
        ("sonic-rs", |v| sonic_rs::from_slice::<IgnoredAny>(v).is_ok()),
        ("simd-json tape (with its copy)", |v| {
            simd_json::to_tape(&mut v.to_vec()).is_ok()
        }),
        ("std utf8 only", |v| std::str::from_utf8(v).is_ok()),
        ("simdutf8 only", |v| simdutf8::basic::from_utf8(v).is_ok()),
    ];
    for (name, check) in checks {
        let start = Instant::now();
        let mut ok = 0u64;
        for _ in 0..rounds {
            ok += events.iter().filter(|e| check(e)).count() as u64;
        }
        let ns = start.elapsed().as_nanos() as f64 / (rounds * events.len()) as f64;
        println!("{name:<34} {ns:>7.1} ns/event   ok {ok}");
    }
}
