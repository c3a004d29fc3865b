//! A deliberately minimal QoS 0 "broker" used only to measure the load
//! generator itself: every PUBLISH from any client is forwarded (raw bytes,
//! in bulk) to every client that sent a SUBSCRIBE, ignoring topics.
//!
//! `cargo run --release -p cmq-loadgen --example sink_broker -- PORT [THREADS]`

use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};
use cmq_loadgen::codec::{self, next_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

type Subs = Arc<Mutex<Vec<mpsc::Sender<Bytes>>>>;

async fn conn(stream: TcpStream, subs: Subs) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(256);
    tokio::spawn(async move {
        let mut out = BytesMut::with_capacity(256 * 1024);
        while let Some(b) = rx.recv().await {
            out.extend_from_slice(&b);
            while out.len() < 256 * 1024 {
                match rx.try_recv() {
                    Ok(b) => out.extend_from_slice(&b),
                    Err(_) => break,
                }
            }
            if wr.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
        }
    });
    let mut buf = BytesMut::with_capacity(256 * 1024);
    loop {
        if rd.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        let mut pos = 0;
        let mut pub_start = None;
        let mut forward: Vec<(usize, usize)> = Vec::new();
        while let Some(f) = next_frame(&buf[pos..])? {
            let body = &buf[pos + f.body_start..pos + f.end];
            if f.kind() == codec::PUBLISH {
                pub_start.get_or_insert(pos);
            } else {
                if let Some(s) = pub_start.take() {
                    forward.push((s, pos));
                }
                match f.kind() {
                    1 => tx.send(Bytes::from_static(&[0x20, 2, 0, 0])).await?,
                    8 => {
                        let (a, b) = (body[0], body[1]);
                        tx.send(Bytes::copy_from_slice(&[0x90, 3, a, b, 0])).await?;
                        if let Ok(mut s) = subs.lock() {
                            s.push(tx.clone());
                        }
                    }
                    12 => tx.send(Bytes::from_static(&[0xD0, 0])).await?,
                    14 => return Ok(()),
                    _ => {}
                }
            }
            pos += f.end;
        }
        if let Some(s) = pub_start.take() {
            forward.push((s, pos));
        }
        let mut chunk = buf.split_to(pos).freeze();
        let targets: Vec<_> = subs.lock().map(|s| s.clone()).unwrap_or_default();
        for (s, e) in forward {
            let data = chunk.slice(s..e);
            for t in &targets {
                let _ = t.send(data.clone()).await;
            }
        }
        chunk.advance(chunk.len());
        buf.reserve(64 * 1024);
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().as_deref().unwrap_or("18831").parse()?;
    let threads: usize = args.next().as_deref().unwrap_or("1").parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let subs: Subs = Arc::default();
        loop {
            let (s, _) = listener.accept().await?;
            let subs = subs.clone();
            tokio::spawn(async move {
                let _ = conn(s, subs).await;
            });
        }
    })
}
