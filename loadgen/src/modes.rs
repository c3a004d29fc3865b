//! `idle` and `connect` modes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, sleep_until, timeout};

use crate::codec::{DISCONNECT_BYTES, PINGREQ_BYTES};
use crate::net::{self, ConnCfg};
use crate::{BenchArgs, BenchReport, Errors, hist_us, procstat, record_us};

enum ConnEvent {
    Up { latency: Duration, at: Instant },
    Failed(String),
}

/// Holds one idle connection until `release` flips; answers keep-alive.
/// Returns true if the broker closed it while held.
async fn hold_idle(
    mut stream: TcpStream,
    keep_alive: u16,
    mut release: watch::Receiver<bool>,
) -> bool {
    let ping_every = Duration::from_secs(u64::from(keep_alive).max(2) / 2);
    let mut buf = [0u8; 64];
    let mut dropped = false;
    loop {
        tokio::select! {
            _ = async { release.wait_for(|v| *v).await.is_ok() } => break,
            r = stream.read(&mut buf) => {
                // Only PINGRESP is expected; EOF/error means the broker dropped us.
                if !matches!(r, Ok(n) if n > 0) {
                    dropped = true;
                    break;
                }
            }
            _ = sleep(ping_every), if keep_alive > 0 => {
                if stream.write_all(&PINGREQ_BYTES).await.is_err() {
                    dropped = true;
                    break;
                }
            }
        }
    }
    if !dropped {
        let _ = timeout(Duration::from_secs(2), async {
            stream.write_all(&DISCONNECT_BYTES).await?;
            stream.shutdown().await
        })
        .await;
    }
    dropped
}

pub(crate) async fn run_idle(args: &BenchArgs, cfg: ConnCfg) -> anyhow::Result<BenchReport> {
    let n = args.connections;
    let rate = args.connect_rate;
    let hold = Duration::from_secs_f64(args.hold.max(0.0));
    let pid = std::process::id();
    let t0 = Instant::now();
    let spawn_phase = if rate > 0 {
        Duration::from_secs_f64(n as f64 / rate as f64)
    } else {
        Duration::ZERO
    };
    // Bounded: pacing + one connect timeout + hold + 10 s.
    let deadline = t0 + spawn_phase + cfg.timeout + hold + Duration::from_secs(10);
    let before = procstat::sample_all(&args.broker_pid);

    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<ConnEvent>();
    let (release_tx, release_rx) = watch::channel(false);
    let mut handles = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        if rate > 0 {
            let at = start + Duration::from_secs_f64(i as f64 / rate as f64);
            if at > Instant::now() {
                sleep_until(at.into()).await;
            }
        }
        let cfg = cfg.clone();
        let tx = ev_tx.clone();
        let release = release_rx.clone();
        let idle_subscribe = args.idle_subscribe_qos;
        let prefix = args.topic_prefix.clone();
        handles.push(tokio::spawn(async move {
            let t = Instant::now();
            let connected = match net::connect(&cfg, &format!("b{pid}i{i}"), i).await {
                Ok(mut sess) => match idle_subscribe {
                    Some(qos) => {
                        let filter = format!("{prefix}/idle/{i}");
                        net::subscribe(&cfg, &mut sess, &filter, qos)
                            .await
                            .map(|()| sess)
                    }
                    None => Ok(sess),
                },
                Err(e) => Err(e),
            };
            match connected {
                Ok(sess) => {
                    let _ = tx.send(ConnEvent::Up {
                        latency: t.elapsed(),
                        at: Instant::now(),
                    });
                    drop(tx);
                    hold_idle(sess.stream, cfg.keep_alive, release).await
                }
                Err(e) => {
                    let _ = tx.send(ConnEvent::Failed(format!("connection {i}: {e:#}")));
                    false
                }
            }
        }));
    }
    drop(ev_tx);

    let mut errors = Errors::default();
    let mut hist = hist_us(3);
    let mut up = 0u64;
    let mut failed = 0u64;
    let mut last_up = start;
    while up + failed < n as u64 {
        match timeout(
            deadline.saturating_duration_since(Instant::now()),
            ev_rx.recv(),
        )
        .await
        {
            Ok(Some(ConnEvent::Up { latency, at })) => {
                up += 1;
                record_us(&mut hist, latency.as_micros() as u64);
                last_up = last_up.max(at);
            }
            Ok(Some(ConnEvent::Failed(e))) => {
                failed += 1;
                errors.add(e);
            }
            Ok(None) | Err(_) => break,
        }
    }
    let connect_secs = last_up.duration_since(start).as_secs_f64();
    // Let the broker settle, then measure memory.
    let settle = Duration::from_secs(1);
    sleep(settle).await;
    let after = procstat::sample_all(&args.broker_pid);
    let rest = hold.saturating_sub(settle);
    let hold_end = (Instant::now() + rest).min(deadline);
    sleep_until(hold_end.into()).await;
    let cpu_end = procstat::sample_all(&args.broker_pid);
    let _ = release_tx.send(true);
    let mut dropped = 0u64;
    let join_by = Instant::now() + Duration::from_secs(5);
    for h in handles {
        match timeout(join_by.saturating_duration_since(Instant::now()), h).await {
            Ok(Ok(true)) => dropped += 1,
            Ok(Ok(false)) => {}
            Ok(Err(e)) => errors.add(format!("task: {e}")),
            Err(_) => {
                errors.add("timed out closing connections");
                break;
            }
        }
    }
    let q = |x: f64| (!hist.is_empty()).then(|| hist.value_at_quantile(x));
    let (rss_before, rss_after, per_conn) = match (before, after) {
        (Some(b), Some(a)) => (
            Some(b.rss_bytes),
            Some(a.rss_bytes),
            (up > 0).then(|| (a.rss_bytes as f64 - b.rss_bytes as f64) / up as f64),
        ),
        _ => (None, None, None),
    };
    Ok(BenchReport {
        mode: "idle".into(),
        mqtt_version: if cfg.v5 { 5 } else { 4 },
        duration_s: t0.elapsed().as_secs_f64(),
        errors: errors.count + dropped,
        error_samples: errors.samples,
        connections_established: up,
        connections_failed: failed,
        connections_dropped: dropped,
        connect_rate: if connect_secs > 0.0 {
            up as f64 / connect_secs
        } else {
            0.0
        },
        connect_p50_us: q(0.5),
        connect_p99_us: q(0.99),
        broker_rss_before: rss_before,
        broker_rss_after: rss_after,
        rss_per_connection: per_conn,
        broker_cpu_s: match (before, cpu_end) {
            (Some(a), Some(b)) => Some(b.cpu_s - a.cpu_s),
            _ => None,
        },
        ..Default::default()
    })
}

pub(crate) async fn run_connect(args: &BenchArgs, cfg: ConnCfg) -> anyhow::Result<BenchReport> {
    let n = args.connections;
    let c = args.concurrency.clamp(1, n.max(1));
    let pid = std::process::id();
    // Bounded: stop starting handshakes after 60 s; each has its own timeout.
    let stop_starting = Instant::now() + Duration::from_secs(60);
    let before = procstat::sample_all(&args.broker_pid);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = Vec::with_capacity(c);
    for _ in 0..c {
        let next = next.clone();
        let cfg = cfg.clone();
        workers.push(tokio::spawn(async move {
            let mut hist = hist_us(3);
            let mut streams = Vec::new();
            let mut errors = Errors::default();
            let mut last = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || Instant::now() >= stop_starting {
                    break;
                }
                let t = Instant::now();
                match net::connect(&cfg, &format!("b{pid}c{i}"), i).await {
                    Ok(sess) => {
                        let done = Instant::now();
                        record_us(&mut hist, done.duration_since(t).as_micros() as u64);
                        last = Some(done);
                        streams.push(sess.stream);
                    }
                    Err(e) => errors.add(format!("connection {i}: {e:#}")),
                }
            }
            (hist, streams, errors, last)
        }));
    }
    let mut hist = hist_us(3);
    let mut errors = Errors::default();
    let mut streams = Vec::with_capacity(n);
    let mut last = start;
    for w in workers {
        match w.await {
            Ok((h, s, e, l)) => {
                let _ = hist.add(&h);
                streams.extend(s);
                errors.count += e.count;
                for m in e.samples {
                    if errors.samples.len() < 5 {
                        errors.samples.push(m);
                    }
                }
                if let Some(l) = l {
                    last = last.max(l);
                }
            }
            Err(e) => errors.add(format!("worker: {e}")),
        }
    }
    let after = procstat::sample_all(&args.broker_pid);
    let secs = last.duration_since(start).as_secs_f64();
    let up = streams.len() as u64;
    // Close: DISCONNECT on each (best effort, non-blocking), then drop.
    for s in &streams {
        let _ = s.try_write(&DISCONNECT_BYTES);
    }
    drop(streams);
    let q = |x: f64| (!hist.is_empty()).then(|| hist.value_at_quantile(x));
    Ok(BenchReport {
        mode: "connect".into(),
        mqtt_version: if cfg.v5 { 5 } else { 4 },
        duration_s: secs,
        errors: errors.count,
        error_samples: errors.samples,
        connections_established: up,
        connections_failed: errors.count,
        connect_rate: if secs > 0.0 { up as f64 / secs } else { 0.0 },
        connect_p50_us: q(0.5),
        connect_p99_us: q(0.99),
        broker_cpu_s: match (before, after) {
            (Some(a), Some(b)) => Some(b.cpu_s - a.cpu_s),
            _ => None,
        },
        ..Default::default()
    })
}
