//! Shrinks a crashing input: whole packets first, then bytes inside each packet
//! (re-framed, so lengths stay right), then any byte ranges; a try is kept when
//! it still panics at the same place. Each try runs on a server of its own, so
//! what earlier tries left behind (sessions, retained messages, a dead router)
//! plays no part.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tributary_wire::FixedHeader;

use super::device::{self, Outcome};
use super::generate::Chunk;
use super::panics;

/// A try that has not ended by then is taken as not reproducing (a router that
/// panicked leaves its connections waiting).
const TRY_FOR: Duration = Duration::from_secs(3);

/// The shortest bytes found that still panic where `bytes` does.
/// `setup` is served first, one connection each, every time.
pub async fn minimize(setup: &[Vec<u8>], bytes: Vec<u8>) -> Vec<u8> {
    let place = match panic_place(setup, &bytes).await {
        Some(place) => place,
        None => panic!("the case does not panic when served alone"),
    };
    println!("panics at {place}");
    let mut frames = split(&bytes);
    let mut tries = 0;

    // Whole packets.
    let mut i = frames.len();
    while i > 0 {
        i -= 1;
        let mut fewer = frames.clone();
        fewer.remove(i);
        tries += 1;
        if panic_place(setup, &fewer.concat()).await.as_ref() == Some(&place) {
            frames = fewer;
        }
    }
    println!("{} packets left after {tries} tries", frames.len());
    // Bytes inside each packet, re-framed.
    for f in 0..frames.len() {
        let Ok(Some(header)) = FixedHeader::peek(&frames[f]) else {
            continue;
        };
        let Some(body) = frames[f].get(header.header_len..) else {
            continue;
        };
        let mut body = body.to_vec();
        let mut size = body.len().div_ceil(2).max(1);
        loop {
            let mut at = 0;
            while at < body.len() {
                let mut shorter = body.clone();
                shorter.drain(at..(at + size).min(body.len()));
                let mut candidate = frames.clone();
                candidate[f] = tributary_wire::packet(header.byte1, &shorter);
                tries += 1;
                if panic_place(setup, &candidate.concat()).await.as_ref() == Some(&place) {
                    body = shorter;
                    frames = candidate;
                } else {
                    at += size;
                }
            }
            if size == 1 {
                break;
            }
            size = size.div_ceil(2);
        }
    }
    println!("{} bytes left after {tries} tries", frames.concat().len());
    frames.concat()
}

/// Where serving `bytes` alone on a new server panics, if it does: in the
/// connection's task or anywhere else (the router's thread).
async fn panic_place(setup: &[Vec<u8>], bytes: &[u8]) -> Option<String> {
    let server = Arc::new(super::fuzz_server().await);
    for (i, earlier) in setup.iter().enumerate() {
        let chunks = vec![Chunk {
            bytes: earlier.clone(),
            pause_ms: 0,
        }];
        let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, 3 + i as u16));
        device::run(server.clone(), chunks, peer, TRY_FOR).await;
    }
    let chunks = vec![Chunk {
        bytes: bytes.to_vec(),
        pause_ms: 0,
    }];
    let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, 2));
    let outcome = device::run(server.clone(), chunks, peer, TRY_FOR).await;
    // Give a panic elsewhere (the router's thread) time to happen.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let elsewhere = panics::take_all();
    panics::take_router_died();
    if let Ok(server) = Arc::try_unwrap(server) {
        // Not waited for: a server whose router died may not shut down.
        tokio::spawn(server.shutdown());
    }
    match outcome {
        Outcome::Panicked(records) => records.first().map(|r| r.location.clone()),
        Outcome::Closed | Outcome::Hung => elsewhere.first().map(|r| r.location.clone()),
    }
}

/// The packets in `bytes`; what cannot be framed is the last piece.
fn split(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        match FixedHeader::peek(rest) {
            Ok(Some(header)) if header.frame_len() <= rest.len() => {
                frames.push(rest[..header.frame_len()].to_vec());
                rest = &rest[header.frame_len()..];
            }
            _ => {
                frames.push(rest.to_vec());
                break;
            }
        }
    }
    frames
}
