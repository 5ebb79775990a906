//! QoS 0 load over a plain socket. An MQTT client library may buffer QoS 0
//! publishes in memory and count them as sent; here a message counts only once
//! the kernel took its bytes, and the run ends with a QoS 1 "fence" publish
//! whose PUBACK proves the broker read everything before it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Barrier;

use super::{connect_before_start, Outcome, Pace, PublishArgs};
use crate::manifest::ConnectionAccount;
use crate::payload::Stamp;
use crate::progress::Progress;
use crate::report;

/// Publishes written per socket write.
const BATCH: u64 = 64;
/// Socket send buffer of each load connection, in bytes.
const SEND_BUFFER: u32 = 64 * 1024;
/// Packet identifier of the fence publish.
const FENCE_PKID: u16 = 1;

fn connect_packet(client_id: &str, protocol: u8) -> BytesMut {
    let mut body = BytesMut::new();
    body.put_slice(b"\x00\x04MQTT");
    body.put_u8(protocol);
    body.put_u8(0x02); // clean session
    body.put_u16(60);
    if protocol == 5 {
        body.put_u8(0); // no properties
    }
    body.put_u16(client_id.len() as u16);
    body.put_slice(client_id.as_bytes());
    let mut out = BytesMut::new();
    out.put_u8(0x10);
    tributary_wire::write_varint(body.len(), &mut out);
    out.put_slice(&body);
    out
}

fn put_publish(out: &mut BytesMut, topic: &str, qos: u8, payload: &[u8], protocol: u8) {
    let pkid_len = if qos > 0 { 2 } else { 0 };
    let props_len = usize::from(protocol == 5);
    out.put_u8(0x30 | (qos << 1));
    tributary_wire::write_varint(2 + topic.len() + pkid_len + props_len + payload.len(), out);
    out.put_u16(topic.len() as u16);
    out.put_slice(topic.as_bytes());
    if qos > 0 {
        out.put_u16(FENCE_PKID);
    }
    if protocol == 5 {
        out.put_u8(0);
    }
    out.put_slice(payload);
}

/// Reads packets until one of type `kind` (high nibble) arrives.
async fn expect(stream: &mut TcpStream, buf: &mut BytesMut, kind: u8) -> anyhow::Result<()> {
    loop {
        while let Ok(Some(header)) = tributary_wire::FixedHeader::peek(buf) {
            if buf.len() < header.frame_len() {
                break;
            }
            let packet = buf.split_to(header.frame_len());
            if packet[0] >> 4 == kind {
                return Ok(());
            }
        }
        if stream.read_buf(buf).await? == 0 {
            anyhow::bail!("the broker closed the connection");
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn run(
    args: &PublishArgs,
    client_id: &str,
    topic: &str,
    run_id: u64,
    connection: u32,
    messages: u64,
    start: Arc<Barrier>,
    progress: Progress,
) -> anyhow::Result<Outcome> {
    let connected = async {
        // A device-sized send buffer, so TCP pushes back when the broker falls
        // behind instead of the kernel queueing megabytes on its behalf.
        let address = tokio::net::lookup_host((args.host.as_str(), args.port))
            .await?
            .next()
            .context("no address")?;
        let socket = if address.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_send_buffer_size(SEND_BUFFER)?;
        let mut stream = socket.connect(address).await?;
        stream.set_nodelay(true)?;
        stream
            .write_all(&connect_packet(client_id, args.protocol))
            .await?;
        let mut buf = BytesMut::new();
        expect(&mut stream, &mut buf, 2).await?;
        Ok::<_, anyhow::Error>((stream, buf))
    };
    let (mut stream, mut buf) = connect_before_start(client_id, start, connected).await?;

    let Pace {
        deadline,
        per_connection_rate,
    } = Pace::start(args);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut out = BytesMut::new();
    loop {
        let done = match deadline {
            Some(deadline) => Instant::now() >= deadline,
            None => sent >= messages,
        };
        if done {
            break;
        }
        if let Some(rate) = per_connection_rate {
            let due = started + Duration::from_secs_f64(sent as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let batch = match deadline {
            Some(_) => BATCH,
            None => BATCH.min(messages - sent),
        };
        let batch = if per_connection_rate.is_some() {
            1
        } else {
            batch
        };
        for seq in sent..sent + batch {
            let payload = Stamp {
                run_id,
                connection,
                seq,
            }
            .encode(args.payload_format, args.payload_size);
            put_publish(&mut out, topic, 0, &payload, args.protocol);
        }
        stream.write_all(&out).await?;
        out.clear();
        sent += batch;
        progress.add(batch);
    }
    let fence = Stamp {
        run_id,
        connection,
        seq: u64::MAX,
    }
    .encode(args.payload_format, args.payload_size);
    put_publish(&mut out, topic, 1, &fence, args.protocol);
    stream.write_all(&out).await?;
    tokio::time::timeout(super::DRAIN_TIMEOUT, expect(&mut stream, &mut buf, 4))
        .await
        .map_err(|_| anyhow::anyhow!("{client_id}: the fence was not acknowledged"))??;
    let finished = Instant::now();
    let _ = stream.write_all(&[0xe0, 0x00]).await;
    Ok(Outcome {
        done: sent,
        failures: 0,
        disconnects: 0,
        histogram: report::latency_histogram(),
        account: ConnectionAccount {
            sent,
            unacked: Vec::new(),
        },
        finished,
    })
}
