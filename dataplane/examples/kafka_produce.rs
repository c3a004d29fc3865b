//! The baseline of `bench/forward_kafka.py`: rdkafka producing straight to Kafka, with the
//! producer settings CMQ's Kafka sink uses (idempotent, acks=all, linger 5 ms,
//! murmur2_random), so "through CMQ" and "direct" differ only by CMQ.
//!
//! `cargo run --release -p cmq --example kafka_produce -- BOOTSTRAP TOPIC COUNT SIZE [KEYS]`
//! prints one JSON line: records, seconds, records per second.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, bootstrap, topic, count, size, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: kafka_produce BOOTSTRAP TOPIC COUNT SIZE [KEYS]");
    };
    let count: usize = count.parse()?;
    let size: usize = size.parse()?;
    let keys: usize = rest.first().map_or(Ok(8), |k| k.parse())?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", "60000")
        .create()?;
    let value = vec![b'x'; size];
    let keys: Vec<String> = (0..keys.max(1)).map(|k| format!("dev-{k}")).collect();
    let started = Instant::now();
    let mut pending = Vec::with_capacity(count);
    for i in 0..count {
        let key = &keys[i % keys.len()];
        let mut record = FutureRecord::to(topic).payload(&value).key(key);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((_, back)) => {
                    // Queue full: let librdkafka drain a little.
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
    let mut failed = 0usize;
    for delivery in pending {
        if !matches!(delivery.await, Ok(Ok(_))) {
            failed += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"records\": {count}, \"failed\": {failed}, \"seconds\": {secs:.3}, \"per_s\": {:.0}}}",
        count as f64 / secs
    );
    Ok(())
}
