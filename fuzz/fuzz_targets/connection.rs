//! The whole connection state machine (`cmq::connection::serve` over an in-memory pipe), fed
//! arbitrary bytes after an optional valid CONNECT.
//!
//! Input layout: `data[0]` picks the mode, the rest is sent to the server.
//! - `data[0] & 0x07`: 0, 2, 4, 6 → an MQTT 5 CONNECT is sent first; 1, 5 → a 3.1.1
//!   CONNECT; 3 → a 3.1 CONNECT; 7 → raw bytes only (the fuzzer writes its own CONNECT).
//! - `data[0] & 0x80`: two connections with the same client id at once (session takeover):
//!   the rest is split in two halves, one per connection, each after its own prefix.
//!
//! One broker and one current-thread runtime serve every input, so retained messages and
//! persistent sessions carry over between inputs as they would in a long-running hub.
//! A connection that has not ended 2 s after the client closed its side is a hang: it is
//! logged to stderr (and written to `$CMQ_FUZZ_HANG_DIR` when set), not turned into a crash.
//! The harness keeps waiting for it (up to 30 s, then cancels and aborts it) so that the
//! broker's state stays what a real hub would have, and logs how long it took.

#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cmq::broker::Broker;
use cmq::config::Limits;
use cmq::connection::{Transport, serve};
use cmq::metrics::Metrics;
use cmq::state::State;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

const PIPE: usize = 64 * 1024;
/// A connection still open this long after its client closed is reported as a hang...
const HANG_AFTER: Duration = Duration::from_secs(2);
/// ...and one still open after this is abandoned (cancelled and aborted), so the run goes on.
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

/// CONNECT, MQTT 5, clean start, keep-alive 60, no properties, client id "fuzz".
const CONNECT_V5: &[u8] = &[
    0x10, 0x11, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3c, 0x00, 0x00, 0x04, b'f',
    b'u', b'z', b'z',
];
/// CONNECT, MQTT 3.1.1, clean session, keep-alive 60, client id "fuzz".
const CONNECT_V311: &[u8] = &[
    0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x04, b'f', b'u',
    b'z', b'z',
];
/// CONNECT, MQTT 3.1 (`MQIsdp`), clean session, keep-alive 60, client id "fuzz".
const CONNECT_V31: &[u8] = &[
    0x10, 0x12, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x3c, 0x00, 0x04,
    b'f', b'u', b'z', b'z',
];

struct Harness {
    rt: Runtime,
    broker: Arc<Broker>,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let limits = Limits {
            connect_timeout: Duration::from_millis(200),
            ..Limits::default()
        };
        let broker = {
        let metrics = Arc::new(Metrics::new());
        let access = cmq::access::Access::empty(metrics.access.clone());
        Broker::new(limits, State::memory(), metrics, access)
    };
        Harness { rt, broker }
    })
}

/// Writes `input` and closes the client's write side while reading (and dropping) whatever
/// the server sends, until the server closes.
async fn client(pipe: DuplexStream, input: Vec<u8>) {
    let (mut rx, mut tx) = tokio::io::split(pipe);
    let write = async move {
        // The server may close first (protocol violation): a failed write is expected.
        let _ = tx.write_all(&input).await;
        let _ = tx.shutdown().await;
    };
    let read = async move {
        let mut sink = vec![0u8; 16 * 1024];
        while let Ok(n) = rx.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::join!(write, read);
}

fn report_hang(data: &[u8], took: Option<Duration>) {
    let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
    let took = match took {
        Some(t) => format!("ended after {t:?}"),
        None => format!("still open after {GIVE_UP_AFTER:?}, aborted"),
    };
    eprintln!(
        "HANG: connection open over {HANG_AFTER:?} after client EOF ({took}); input hex: {hex}"
    );
    if let Ok(dir) = std::env::var("CMQ_FUZZ_HANG_DIR") {
        let _ = std::fs::create_dir_all(&dir);
        let name = format!("hang-{:016x}", fnv1a(data));
        let _ = std::fs::write(std::path::Path::new(&dir).join(name), data);
    }
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let prefix: &[u8] = match mode & 0x07 {
        0 | 2 | 4 | 6 => CONNECT_V5,
        1 | 5 => CONNECT_V311,
        3 => CONNECT_V31,
        _ => &[],
    };
    let inputs: Vec<Vec<u8>> = if mode & 0x80 != 0 {
        let (a, b) = rest.split_at(rest.len() / 2);
        vec![[prefix, a].concat(), [prefix, b].concat()]
    } else {
        vec![[prefix, rest].concat()]
    };

    let h = harness();
    let peer: SocketAddr = "127.0.0.1:1".parse().expect("peer address");
    let hung = h.rt.block_on(async {
        let shutdown = CancellationToken::new();
        let mut servers = Vec::new();
        let mut clients = Vec::new();
        for input in inputs {
            let (client_side, server_side) = tokio::io::duplex(PIPE);
            servers.push(tokio::spawn(serve(
                h.broker.clone(),
                Transport::Memory(server_side),
                peer,
                shutdown.clone(),
            )));
            clients.push(tokio::spawn(client(client_side, input)));
        }
        let aborts: Vec<_> = clients
            .iter()
            .chain(servers.iter())
            .map(|t| t.abort_handle())
            .collect();
        let all = async {
            for task in clients.iter_mut().chain(servers.iter_mut()) {
                if let Err(e) = task.await
                    && e.is_panic()
                {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        };
        let started = tokio::time::Instant::now();
        tokio::pin!(all);
        if tokio::time::timeout(HANG_AFTER, &mut all).await.is_ok() {
            return None;
        }
        if tokio::time::timeout(GIVE_UP_AFTER - HANG_AFTER, &mut all)
            .await
            .is_ok()
        {
            return Some(Some(started.elapsed()));
        }
        shutdown.cancel();
        for task in aborts {
            task.abort();
        }
        Some(None)
    });
    if let Some(took) = hung {
        report_hang(data, took);
    }
});
