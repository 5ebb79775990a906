//! One generated connection against the real server, in process: its bytes go
//! in through one end of a duplex pipe, the write side is then shut (the
//! server sees EOF), and whatever the server writes is read and dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tributary::Server;

use super::generate::Chunk;
use super::panics::{self, PanicRecord};

/// Bytes the pipe holds each way.
const PIPE_BUFFER: usize = 64 * 1024;
/// A connection not over this long after its device stopped sending hangs: the
/// longest wait the link may have is a takeover (5 s) plus its goodbye (1 s).
pub const HANG_AFTER: Duration = Duration::from_secs(20);

/// How one connection ended.
#[derive(Debug)]
pub enum Outcome {
    Closed,
    /// It panicked (contained by the server), with what the hook saw.
    Panicked(Vec<PanicRecord>),
    /// Still running long after its last byte was sent ([`HANG_AFTER`]).
    Hung,
}

/// Serves `chunks` as one connection from `peer`, to its end; a hang after
/// `hang_after`.
pub async fn run(
    server: Arc<Server>,
    chunks: Vec<Chunk>,
    peer: SocketAddr,
    hang_after: Duration,
) -> Outcome {
    let mut task = tokio::spawn(serve(server, chunks, peer));
    let task_id = task.id();
    let outcome = match tokio::time::timeout(hang_after, &mut task).await {
        Ok(Ok(Ok(()))) => Outcome::Closed,
        // Contained by the server, or (a harness bug) not.
        Ok(Ok(Err(_))) | Ok(Err(_)) => Outcome::Panicked(Vec::new()),
        Err(_) => {
            task.abort();
            Outcome::Hung
        }
    };
    let records = panics::take_for(task_id);
    match outcome {
        Outcome::Closed if records.is_empty() => Outcome::Closed,
        Outcome::Hung => Outcome::Hung,
        _ => Outcome::Panicked(records),
    }
}

async fn serve(
    server: Arc<Server>,
    chunks: Vec<Chunk>,
    peer: SocketAddr,
) -> Result<(), tributary::listener::Panicked> {
    let (device, served) = tokio::io::duplex(PIPE_BUFFER);
    let (mut from_server, mut to_server) = tokio::io::split(device);
    let writer = tokio::spawn(async move {
        for chunk in chunks {
            if to_server.write_all(&chunk.bytes).await.is_err() {
                return;
            }
            if chunk.pause_ms > 0 {
                tokio::time::sleep(Duration::from_millis(chunk.pause_ms)).await;
            }
        }
        let _ = to_server.shutdown().await;
    });
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = from_server.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    let served = server.serve_connection(served, peer).await;
    writer.abort();
    reader.abort();
    served
}

/// What the server answers to `bytes` (then EOF), for the health check.
pub async fn answer(server: &Server, bytes: &[u8], peer: SocketAddr) -> Vec<u8> {
    let (mut device, served) = tokio::io::duplex(PIPE_BUFFER);
    device.write_all(bytes).await.unwrap();
    let serving = server.serve_connection(served, peer);
    let reading = async {
        let mut answer = Vec::new();
        // Until the server has said enough: the EOF would end the connection
        // before the answers were written.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let mut buf = [0u8; 256];
            while answer.len() < 6 {
                match device.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        device.shutdown().await.unwrap();
        answer
    };
    let (served, answer) = tokio::join!(serving, reading);
    assert!(served.is_ok(), "the health check's connection panicked");
    answer
}
