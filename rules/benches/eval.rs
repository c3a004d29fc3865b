//! Per-message cost of a typical rule. `cargo bench -p cmq-rules --bench eval`.
//!
//! `SELECT clientid, payload.temp AS t FROM "sensors/+/data" WHERE payload.temp > 30` on a
//! ~100-byte JSON payload, for a message that passes WHERE and one that does not, plus
//! topic matching and rendering the row as JSON (what a sink does next).

use std::hint::black_box;

use cmq_rules::{Message, Rule, Template};
use criterion::{Criterion, criterion_group, criterion_main};

const SQL: &str =
    r#"SELECT clientid, payload.temp AS t FROM "sensors/+/data" WHERE payload.temp > 30"#;

fn payload(temp: f64) -> Vec<u8> {
    format!(
        r#"{{"device":"sensor-0042","site":"plant-7","temp":{temp},"hum":41.2,"battery":87,"ts":1700000000123,"ok":true}}"#
    )
    .into_bytes()
}

fn message<'a>(payload: &'a [u8], props: &'a [(String, String)]) -> Message<'a> {
    Message {
        id: "0006a1b2c3d4e5f6",
        topic: "sensors/42/data",
        payload,
        clientid: "sensor-0042",
        username: Some("fleet-a"),
        qos: 1,
        retain: false,
        timestamp_ms: 1_700_000_000_123,
        user_properties: props,
        peerhost: Some("10.1.2.3"),
        protocol: "mqtt",
        node: "hub-0",
    }
}

fn bench(c: &mut Criterion) {
    let rule = Rule::parse(SQL).expect("valid rule");
    let hot = payload(31.5);
    let cold = payload(12.25);
    assert!(
        (95..=110).contains(&hot.len()),
        "payload is {} bytes",
        hot.len()
    );
    let props = Vec::new();
    let value = Template::parse("${.}").expect("valid template");

    c.bench_function("evaluate/pass", |b| {
        let msg = message(&hot, &props);
        b.iter(|| rule.evaluate(black_box(&msg)))
    });
    c.bench_function("evaluate/filtered", |b| {
        let msg = message(&cold, &props);
        b.iter(|| rule.evaluate(black_box(&msg)))
    });
    c.bench_function("matches_topic", |b| {
        b.iter(|| rule.matches_topic(black_box("sensors/42/data")))
    });
    c.bench_function("evaluate_and_render_json", |b| {
        let msg = message(&hot, &props);
        b.iter(|| {
            let row = rule.evaluate(black_box(&msg)).ok().flatten();
            row.map(|r| value.render(&r))
        })
    });
    c.bench_function("parse", |b| b.iter(|| Rule::parse(black_box(SQL))));
}

criterion_group!(benches, bench);
criterion_main!(benches);
