//! `pubsub` mode: publishers → broker → subscribers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::time::{MissedTickBehavior, interval, sleep_until, timeout};

use crate::codec::{
    self, CodecError, DISCONNECT_BYTES, PINGREQ_BYTES, PublishTemplate, Stamp, next_frame,
};
use crate::net::{self, ConnCfg, Session};
use crate::{BenchArgs, BenchReport, Errors, hist_us, procstat, record_us};

/// Target size of one publisher write.
const BATCH_BYTES: usize = 64 * 1024;
/// Refill the publisher's write buffer when it drops below this.
const LOW_WATER: usize = 16 * 1024;
/// Subscriber read buffer size.
const READ_BUF: usize = 256 * 1024;
/// QoS 0 window written off after this long without progress.
const WINDOW_STALL: Duration = Duration::from_millis(200);
/// Subscribers stop after publishers are done and nothing arrived for this long.
const QUIET: Duration = Duration::from_millis(500);
/// Publishers wait this long past the window for outstanding QoS 1/2 acks.
const ACK_DRAIN: Duration = Duration::from_secs(5);
const TICK: Duration = Duration::from_millis(50);

/// The measured window, fixed once all publishers are connected.
#[derive(Debug, Clone, Copy)]
struct Timing {
    start: Instant,
    measure_start: Instant,
    measure_end: Instant,
    measure_start_ns: u64,
    measure_end_ns: u64,
}

struct Shared {
    origin: Instant,
    deadline: Instant,
    timing: OnceLock<Timing>,
    /// Deliveries per publisher, summed over all subscribers (QoS 0 window).
    delivered: Vec<AtomicU64>,
    /// Woken by subscribers when `delivered[i]` moves.
    notify: Vec<Notify>,
    pubs_done: AtomicBool,
}

impl Shared {
    #[inline]
    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.origin).as_nanos() as u64
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct StreamState {
    next: u64,
    lost: u64,
    ooo: u64,
}

struct SubResult {
    delivered: u64,
    hist: Histogram<u64>,
    streams: Vec<StreamState>,
    error: Option<String>,
}

struct PubResult {
    sent_total: u64,
    sent_measured: u64,
    window_resets: u64,
    error: Option<String>,
}

fn topic(prefix: &str, i: usize, topics: usize) -> String {
    format!("{prefix}/{}", i % topics)
}

pub(crate) async fn run(
    args: &BenchArgs,
    cfg: ConnCfg,
    origin: Instant,
) -> anyhow::Result<BenchReport> {
    let p = args.publishers;
    let s = args.subscribers;
    let t = args.topics.max(1);
    let qos = args.qos.min(2);
    let payload = args.payload.max(codec::STAMP_LEN);
    let inflight = args.inflight.clamp(1, 65_000) as u64;
    let warmup = Duration::from_secs_f64(args.warmup.max(0.0));
    let duration = Duration::from_secs_f64(args.duration.max(0.001));
    let deadline = origin + warmup + duration + Duration::from_secs(10);
    let pid = std::process::id();

    let pub_topics: Vec<String> = (0..p).map(|i| topic(&args.topic_prefix, i, t)).collect();
    let sub_filters: Vec<String> = (0..s)
        .map(|j| {
            args.sub_filter
                .clone()
                .unwrap_or_else(|| topic(&args.topic_prefix, j, t))
        })
        .collect();
    // expects[j][i]: subscriber j should receive publisher i's messages.
    let expects: Vec<Vec<bool>> = sub_filters
        .iter()
        .map(|f| {
            pub_topics
                .iter()
                .map(|tp| codec::topic_matches(f, tp))
                .collect()
        })
        .collect();
    let fanout: Vec<u64> = (0..p)
        .map(|i| expects.iter().filter(|e| e[i]).count() as u64)
        .collect();

    let shared = Arc::new(Shared {
        origin,
        deadline,
        timing: OnceLock::new(),
        delivered: (0..p).map(|_| AtomicU64::new(0)).collect(),
        notify: (0..p).map(|_| Notify::new()).collect(),
        pubs_done: AtomicBool::new(false),
    });
    let mut errors = Errors::default();
    // Limit simultaneous handshakes so a big fan-out doesn't overflow the
    // broker's listen backlog.
    let connect_slots = Arc::new(Semaphore::new(256));

    // ---- subscribers: connect + SUBACK first ----
    let sigfig = if s <= 64 { 3 } else { 2 };
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let mut sub_handles = Vec::with_capacity(s);
    for (j, filter) in sub_filters.iter().enumerate() {
        let cfg = cfg.clone();
        let shared = shared.clone();
        let ready = ready_tx.clone();
        let slots = connect_slots.clone();
        let filter = filter.clone();
        let id = format!("b{pid}s{j}");
        sub_handles.push(tokio::spawn(async move {
            let setup = async {
                let _permit = slots.acquire().await?;
                let mut sess = net::connect(&cfg, &id, j).await?;
                net::subscribe(&cfg, &mut sess, &filter, qos).await?;
                anyhow::Ok(sess)
            }
            .await;
            match setup {
                Ok(sess) => {
                    let _ = ready.send(Ok(()));
                    subscriber(sess, &cfg, &shared, qos, p, sigfig).await
                }
                Err(e) => {
                    let msg = format!("subscriber {j}: {e:#}");
                    let _ = ready.send(Err(msg.clone()));
                    SubResult {
                        delivered: 0,
                        hist: hist_us(1),
                        streams: Vec::new(),
                        error: Some(msg),
                    }
                }
            }
        }));
    }
    let mut subs_ok = 0usize;
    for _ in 0..s {
        match timeout(
            deadline.saturating_duration_since(Instant::now()),
            ready_rx.recv(),
        )
        .await
        {
            Ok(Some(Ok(()))) => subs_ok += 1,
            Ok(Some(Err(_))) => {} // reported from the join result
            Ok(None) | Err(_) => break,
        }
    }

    // ---- publishers: connect, then wait for the start signal ----
    let (start_tx, start_rx) = watch::channel(false);
    let mut pub_handles = Vec::with_capacity(p);
    let per_pub_rate = if args.rate > 0 && p > 0 {
        args.rate as f64 / p as f64
    } else {
        0.0
    };
    for (i, tp) in pub_topics.iter().enumerate() {
        let cfg = cfg.clone();
        let shared = shared.clone();
        let ready = ready_tx.clone();
        let slots = connect_slots.clone();
        let mut start_rx = start_rx.clone();
        let id = format!("b{pid}p{i}");
        let tmpl = PublishTemplate::new(tp, qos, payload, cfg.v5);
        let fan = fanout[i];
        pub_handles.push(tokio::spawn(async move {
            let setup = async {
                let _permit = slots.acquire().await?;
                net::connect(&cfg, &id, s + i).await
            }
            .await;
            let sess = match setup {
                Ok(sess) => {
                    let _ = ready.send(Ok(()));
                    sess
                }
                Err(e) => {
                    let msg = format!("publisher {i}: {e:#}");
                    let _ = ready.send(Err(msg.clone()));
                    return PubResult {
                        sent_total: 0,
                        sent_measured: 0,
                        window_resets: 0,
                        error: Some(msg),
                    };
                }
            };
            let started = timeout(
                shared.deadline.saturating_duration_since(Instant::now()),
                async { start_rx.wait_for(|v| *v).await.is_ok() },
            )
            .await;
            if !matches!(started, Ok(true)) {
                return PubResult {
                    sent_total: 0,
                    sent_measured: 0,
                    window_resets: 0,
                    error: Some(format!("publisher {i}: never started")),
                };
            }
            let inflight = match sess.receive_max {
                Some(rm) if qos > 0 => inflight.min(u64::from(rm.max(1))),
                _ => inflight,
            };
            let cfg_ka = cfg.keep_alive;
            publisher(
                sess,
                PubParams {
                    id: i,
                    qos,
                    tmpl,
                    inflight,
                    fanout: fan,
                    rate: per_pub_rate,
                    keep_alive: cfg_ka,
                },
                &shared,
            )
            .await
        }));
    }
    drop(ready_tx);
    let mut pubs_ok = 0usize;
    for _ in 0..p {
        match timeout(
            deadline.saturating_duration_since(Instant::now()),
            ready_rx.recv(),
        )
        .await
        {
            Ok(Some(Ok(()))) => pubs_ok += 1,
            Ok(Some(Err(_))) => {}
            Ok(None) | Err(_) => break,
        }
    }
    tracing::debug!(subs_ok, pubs_ok, "pubsub connected");

    // ---- go ----
    let start = Instant::now();
    let timing = Timing {
        start,
        measure_start: start + warmup,
        measure_end: start + warmup + duration,
        measure_start_ns: shared.ns(start + warmup),
        measure_end_ns: shared.ns(start + warmup + duration),
    };
    let _ = shared.timing.set(timing);
    let _ = start_tx.send(true);

    let broker_pid = &args.broker_pid;
    sleep_until(timing.measure_start.into()).await;
    let cpu0 = procstat::sample_all(broker_pid);
    sleep_until(timing.measure_end.into()).await;
    let cpu1 = procstat::sample_all(broker_pid);

    let mut sent = 0u64;
    let mut window_resets = 0u64;
    let mut sent_total = vec![0u64; p];
    for (i, h) in pub_handles.into_iter().enumerate() {
        match h.await {
            Ok(r) => {
                sent += r.sent_measured;
                window_resets += r.window_resets;
                sent_total[i] = r.sent_total;
                if let Some(e) = r.error {
                    errors.add(e);
                }
            }
            Err(e) => errors.add(format!("publisher {i} task: {e}")),
        }
    }
    shared.pubs_done.store(true, Ordering::Release);

    let mut delivered = 0u64;
    let mut hist = hist_us(3);
    let mut lost = 0u64;
    let mut ooo = 0u64;
    let check = qos > 0;
    for (j, h) in sub_handles.into_iter().enumerate() {
        match h.await {
            Ok(r) => {
                delivered += r.delivered;
                let _ = hist.add(&r.hist);
                if let Some(e) = r.error {
                    errors.add(e);
                }
                if check {
                    for i in 0..p {
                        if !expects[j][i] {
                            continue;
                        }
                        let st = r.streams.get(i).copied().unwrap_or_default();
                        lost += st.lost + sent_total[i].saturating_sub(st.next);
                        ooo += st.ooo;
                    }
                }
            }
            Err(e) => errors.add(format!("subscriber {j} task: {e}")),
        }
    }

    let secs = duration.as_secs_f64();
    let q = |x: f64| (!hist.is_empty()).then(|| hist.value_at_quantile(x));
    let broker_cpu_s = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(b.cpu_s - a.cpu_s),
        _ => None,
    };
    Ok(BenchReport {
        mode: "pubsub".into(),
        mqtt_version: if cfg.v5 { 5 } else { 4 },
        qos,
        publishers: p,
        subscribers: s,
        topics: t,
        payload,
        duration_s: secs,
        sent,
        delivered,
        publishes_per_s: sent as f64 / secs,
        deliveries_per_s: delivered as f64 / secs,
        latency_p50_us: q(0.5),
        latency_p90_us: q(0.9),
        latency_p99_us: q(0.99),
        latency_p999_us: q(0.999),
        latency_max_us: (!hist.is_empty()).then(|| hist.max()),
        loss_checked: check,
        lost,
        out_of_order: ooo,
        window_resets,
        errors: errors.count,
        error_samples: errors.samples,
        connections_established: (subs_ok + pubs_ok) as u64,
        connections_failed: (s + p - subs_ok - pubs_ok) as u64,
        broker_cpu_s,
        deliveries_per_broker_cpu_s: broker_cpu_s
            .filter(|c| *c > 0.0)
            .map(|c| delivered as f64 / c),
        ..Default::default()
    })
}

/// Per-subscriber receive state (kept apart from the socket so the select
/// branches can borrow independently).
struct SubState {
    v5: bool,
    check: bool,
    wbuf: BytesMut,
    counts: Vec<u64>,
    dirty: Vec<usize>,
    hist: Histogram<u64>,
    streams: Vec<StreamState>,
    delivered: u64,
}

impl SubState {
    /// Handles every complete packet in `buf`; returns bytes consumed.
    fn process(
        &mut self,
        buf: &[u8],
        now_ns: u64,
        timing: Option<&Timing>,
    ) -> Result<usize, CodecError> {
        let (ms, me) = timing.map_or((u64::MAX, 0), |t| (t.measure_start_ns, t.measure_end_ns));
        let measured = now_ns >= ms && now_ns < me;
        let mut pos = 0;
        while let Some(f) = next_frame(&buf[pos..])? {
            let body = &buf[pos + f.body_start..pos + f.end];
            match f.kind() {
                codec::PUBLISH => {
                    let v = codec::decode_publish(f.header, body, self.v5)?;
                    match v.qos {
                        1 => codec::put_ack(&mut self.wbuf, codec::PUBACK, v.pkid),
                        2 => codec::put_ack(&mut self.wbuf, codec::PUBREC, v.pkid),
                        _ => {}
                    }
                    if let Some(st) = Stamp::read(v.payload) {
                        if measured {
                            self.delivered += 1;
                            record_us(&mut self.hist, now_ns.saturating_sub(st.ts_ns) / 1000);
                        }
                        let idx = st.publisher as usize;
                        if let Some(c) = self.counts.get_mut(idx) {
                            if *c == 0 {
                                self.dirty.push(idx);
                            }
                            *c += 1;
                        }
                        if self.check
                            && let Some(s) = self.streams.get_mut(idx)
                        {
                            let seq = u64::from(st.seq);
                            if seq == s.next {
                                s.next += 1;
                            } else if seq > s.next {
                                s.lost += seq - s.next;
                                s.next = seq + 1;
                            } else {
                                s.ooo += 1;
                            }
                        }
                    }
                }
                codec::PUBREL => {
                    codec::put_ack(&mut self.wbuf, codec::PUBCOMP, codec::ack_pkid(body)?);
                }
                codec::DISCONNECT => return Err(CodecError::Malformed("broker sent DISCONNECT")),
                _ => {} // SUBACK, PINGRESP, ...
            }
            pos += f.end;
        }
        Ok(pos)
    }
}

async fn subscriber(
    sess: Session,
    cfg: &ConnCfg,
    shared: &Shared,
    qos: u8,
    publishers: usize,
    sigfig: u8,
) -> SubResult {
    let Session {
        mut stream,
        mut rbuf,
        ..
    } = sess;
    let mut st = SubState {
        v5: cfg.v5,
        check: qos > 0,
        wbuf: BytesMut::with_capacity(4096),
        counts: vec![0; publishers],
        dirty: Vec::new(),
        hist: hist_us(sigfig),
        streams: if qos > 0 {
            vec![StreamState::default(); publishers]
        } else {
            Vec::new()
        },
        delivered: 0,
    };
    let mut error = None;
    let ping_every = Duration::from_secs(u64::from(cfg.keep_alive).max(2) / 2);
    let mut last_tx = Instant::now();
    let mut last_rx = Instant::now();
    let mut tick = interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    rbuf.reserve(READ_BUF);
    {
        let (mut rd, mut wr) = stream.split();
        loop {
            tokio::select! {
                // Acks first: under a flood the socket is always readable,
                // and a broker waiting for PUBACKs must not be starved.
                biased;
                w = wr.write(&st.wbuf), if !st.wbuf.is_empty() => match w {
                    Ok(n) => {
                        st.wbuf.advance(n);
                        last_tx = Instant::now();
                    }
                    Err(e) => {
                        error = Some(format!("subscriber write: {e}"));
                        break;
                    }
                },
                r = rd.read_buf(&mut rbuf) => match r {
                    Ok(0) => {
                        error = Some("subscriber: connection closed by broker".to_string());
                        break;
                    }
                    Ok(_) => {
                        let now = Instant::now();
                        last_rx = now;
                        match st.process(&rbuf, shared.ns(now), shared.timing.get()) {
                            Ok(used) => rbuf.advance(used),
                            Err(e) => {
                                error = Some(format!("subscriber: {e}"));
                                break;
                            }
                        }
                        for idx in st.dirty.drain(..) {
                            if let (Some(c), Some(d), Some(n)) = (
                                st.counts.get_mut(idx),
                                shared.delivered.get(idx),
                                shared.notify.get(idx),
                            ) {
                                d.fetch_add(*c, Ordering::Relaxed);
                                *c = 0;
                                n.notify_one();
                            }
                        }
                        if rbuf.capacity() - rbuf.len() < READ_BUF / 4 {
                            rbuf.reserve(READ_BUF);
                        }
                    }
                    Err(e) => {
                        error = Some(format!("subscriber read: {e}"));
                        break;
                    }
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    if now >= shared.deadline {
                        break;
                    }
                    if shared.pubs_done.load(Ordering::Acquire) && now.duration_since(last_rx) >= QUIET {
                        break;
                    }
                    if cfg.keep_alive > 0 && st.wbuf.is_empty() && now.duration_since(last_tx) >= ping_every {
                        st.wbuf.extend_from_slice(&PINGREQ_BYTES);
                    }
                }
            }
        }
    }
    if error.is_none() {
        let _ = timeout(Duration::from_secs(1), async {
            st.wbuf.extend_from_slice(&DISCONNECT_BYTES);
            stream.write_all(&st.wbuf).await?;
            stream.shutdown().await
        })
        .await;
    }
    SubResult {
        delivered: st.delivered,
        hist: st.hist,
        streams: st.streams,
        error,
    }
}

struct PubParams {
    id: usize,
    qos: u8,
    tmpl: PublishTemplate,
    inflight: u64,
    /// Subscribers matching this publisher's topic (QoS 0 window divisor).
    fanout: u64,
    /// msgs/s for this publisher, 0 = flood.
    rate: f64,
    keep_alive: u16,
}

/// Packet-id allocator for QoS 1/2.
struct Pkids {
    in_use: Vec<bool>,
    next: u16,
    outstanding: u64,
}

impl Pkids {
    fn new(qos: u8) -> Self {
        Pkids {
            in_use: if qos > 0 {
                vec![false; 65_536]
            } else {
                Vec::new()
            },
            next: 1,
            outstanding: 0,
        }
    }

    /// Caller guarantees outstanding < 65535.
    #[inline]
    fn alloc(&mut self) -> u16 {
        loop {
            let id = self.next;
            self.next = if self.next == u16::MAX {
                1
            } else {
                self.next + 1
            };
            if let Some(slot) = self.in_use.get_mut(id as usize)
                && !*slot
            {
                *slot = true;
                self.outstanding += 1;
                return id;
            }
        }
    }

    #[inline]
    fn free(&mut self, id: u16) {
        if let Some(slot) = self.in_use.get_mut(id as usize)
            && *slot
        {
            *slot = false;
            self.outstanding -= 1;
        }
    }
}

/// Handles acks in `buf`; queues PUBRELs into `wbuf`. Returns bytes consumed.
fn process_acks(
    buf: &[u8],
    qos: u8,
    pkids: &mut Pkids,
    wbuf: &mut BytesMut,
) -> Result<usize, CodecError> {
    let mut pos = 0;
    while let Some(f) = next_frame(&buf[pos..])? {
        let body = &buf[pos + f.body_start..pos + f.end];
        match f.kind() {
            codec::PUBACK if qos == 1 => pkids.free(codec::ack_pkid(body)?),
            codec::PUBREC if qos == 2 => {
                codec::put_ack(wbuf, codec::PUBREL, codec::ack_pkid(body)?);
            }
            codec::PUBCOMP if qos == 2 => pkids.free(codec::ack_pkid(body)?),
            codec::DISCONNECT => return Err(CodecError::Malformed("broker sent DISCONNECT")),
            _ => {}
        }
        pos += f.end;
    }
    Ok(pos)
}

async fn publisher(sess: Session, pp: PubParams, shared: &Shared) -> PubResult {
    let Session {
        mut stream,
        mut rbuf,
        ..
    } = sess;
    let mut res = PubResult {
        sent_total: 0,
        sent_measured: 0,
        window_resets: 0,
        error: None,
    };
    let Some(timing) = shared.timing.get().copied() else {
        res.error = Some(format!("publisher {}: no timing", pp.id));
        return res;
    };
    let pkt_len = pp.tmpl.packet_len();
    let batch_max = (BATCH_BYTES / pkt_len).max(1) as u64;
    let mut wbuf = BytesMut::with_capacity(BATCH_BYTES + LOW_WATER + pkt_len);
    rbuf.reserve(16 * 1024);
    let mut pkids = Pkids::new(pp.qos);
    let mut seq: u64 = 0;
    let mut forgiven: u64 = 0;
    let mut blocked_since: Option<Instant> = None;
    let drain_until = (timing.measure_end + ACK_DRAIN).min(shared.deadline);
    let ping_every = Duration::from_secs(u64::from(pp.keep_alive).max(2) / 2);
    let mut last_tx = Instant::now();
    let mut tick = interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let delivered = shared.delivered.get(pp.id);
    let notify = shared.notify.get(pp.id);
    let (mut rd, mut wr) = stream.split();
    loop {
        let now = Instant::now();
        let sending = now < timing.measure_end;
        if !sending && ((wbuf.is_empty() && pkids.outstanding == 0) || now >= drain_until) {
            break;
        }
        let mut window_blocked = false;
        let mut rate_wait: Option<Instant> = None;
        if sending && wbuf.len() < LOW_WATER {
            let mut allow = batch_max;
            if pp.rate > 0.0 {
                let elapsed = now.saturating_duration_since(timing.start).as_secs_f64();
                let due = ((elapsed * pp.rate) as u64 + 1).saturating_sub(seq);
                if due == 0 {
                    let at = timing.start + Duration::from_secs_f64(seq as f64 / pp.rate);
                    rate_wait = Some(at.min(timing.measure_end));
                }
                allow = allow.min(due);
            }
            if pp.qos == 0 && pp.fanout > 0 {
                let done =
                    delivered.map_or(seq, |d| d.load(Ordering::Relaxed) / pp.fanout) + forgiven;
                let out = seq.saturating_sub(done);
                let room = pp.inflight.saturating_sub(out);
                if room == 0 && allow > 0 {
                    window_blocked = true;
                    match blocked_since {
                        None => blocked_since = Some(now),
                        Some(b) if now.duration_since(b) >= WINDOW_STALL => {
                            forgiven += out;
                            res.window_resets += 1;
                            blocked_since = None;
                            continue;
                        }
                        Some(_) => {}
                    }
                } else {
                    blocked_since = None;
                }
                allow = allow.min(room);
            }
            if pp.qos > 0 {
                allow = allow.min(pp.inflight.saturating_sub(pkids.outstanding));
            }
            if allow > 0 {
                let ts = shared.ns(now);
                let measured = now >= timing.measure_start;
                for _ in 0..allow {
                    let pkid = if pp.qos > 0 { pkids.alloc() } else { 0 };
                    pp.tmpl.encode(
                        &mut wbuf,
                        pkid,
                        Stamp {
                            ts_ns: ts,
                            publisher: pp.id as u32,
                            seq: seq as u32,
                        },
                    );
                    seq += 1;
                }
                if measured {
                    res.sent_measured += allow;
                }
            }
        }
        if pp.keep_alive > 0 && wbuf.is_empty() && now.duration_since(last_tx) >= ping_every {
            wbuf.extend_from_slice(&PINGREQ_BYTES);
        }
        let wait_notify = window_blocked && notify.is_some();
        tokio::select! {
            biased;
            r = rd.read_buf(&mut rbuf) => match r {
                Ok(0) => {
                    res.error = Some(format!("publisher {}: connection closed by broker", pp.id));
                    break;
                }
                Ok(_) => match process_acks(&rbuf, pp.qos, &mut pkids, &mut wbuf) {
                    Ok(used) => {
                        rbuf.advance(used);
                        if rbuf.capacity() - rbuf.len() < 4096 {
                            rbuf.reserve(16 * 1024);
                        }
                    }
                    Err(e) => {
                        res.error = Some(format!("publisher {}: {e}", pp.id));
                        break;
                    }
                },
                Err(e) => {
                    res.error = Some(format!("publisher {} read: {e}", pp.id));
                    break;
                }
            },
            w = wr.write(&wbuf), if !wbuf.is_empty() => match w {
                Ok(n) => {
                    wbuf.advance(n);
                    last_tx = Instant::now();
                }
                Err(e) => {
                    res.error = Some(format!("publisher {} write: {e}", pp.id));
                    break;
                }
            },
            _ = async {
                if let Some(n) = notify {
                    n.notified().await;
                }
            }, if wait_notify => {}
            _ = sleep_until(rate_wait.unwrap_or(now).into()), if rate_wait.is_some() => {}
            _ = tick.tick() => {}
        }
    }
    res.sent_total = seq;
    if res.error.is_none() {
        let _ = timeout(Duration::from_secs(1), async {
            wbuf.extend_from_slice(&DISCONNECT_BYTES);
            stream.write_all(&wbuf).await?;
            stream.shutdown().await
        })
        .await;
    }
    res
}
