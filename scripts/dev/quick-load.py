#!/usr/bin/env python3
"""Quick QoS 1 load against an MQTT broker with raw sockets (no dependencies).

N connections each keep up to W publishes in flight and time every PUBACK.
Prints msg/s and PUBACK latency percentiles. A stop-gap measurement until the
benchmark tool (tributary-bench) lands; it trusts the broker's PUBACKs and does
not check Kafka.

  scripts/dev/quick-load.py --port 1883 --connections 10 --messages 10000
"""
import argparse
import asyncio
import struct
import time


def remaining_length(n):
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(client_id):
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack("!H", len(cid)) + cid
    return b"\x10" + remaining_length(len(body)) + body


def publish_packet(topic, pkid, payload):
    t = topic.encode()
    body = struct.pack("!H", len(t)) + t + struct.pack("!H", pkid) + payload
    return b"\x32" + remaining_length(len(body)) + body


async def read_packet(reader):
    header = await reader.readexactly(1)
    mult, length = 1, 0
    while True:
        b = (await reader.readexactly(1))[0]
        length += (b & 0x7F) * mult
        mult *= 128
        if not b & 0x80:
            break
    return header[0], await reader.readexactly(length)


async def connection(args, index, latencies):
    reader, writer = await asyncio.open_connection(args.host, args.port)
    writer.write(connect_packet(f"quick-load-{index}"))
    kind, body = await read_packet(reader)
    assert kind == 0x20 and body[1] == 0, f"CONNACK refused: {body!r}"
    sent = {}
    window = asyncio.Semaphore(args.inflight)
    payload = b"x" * args.payload_size
    done = asyncio.Event()
    acked = 0

    async def acks():
        nonlocal acked
        while acked < args.messages:
            kind, body = await read_packet(reader)
            if kind >> 4 == 4:
                pkid = struct.unpack("!H", body[:2])[0]
                latencies.append(time.perf_counter() - sent.pop(pkid))
                acked += 1
                window.release()
        done.set()

    ack_task = asyncio.create_task(acks())
    for seq in range(args.messages):
        await window.acquire()
        pkid = seq % 65535 + 1
        sent[pkid] = time.perf_counter()
        writer.write(publish_packet(args.topic.format(conn=index), pkid, payload))
        if seq % 32 == 0:
            await writer.drain()
    await writer.drain()
    await done.wait()
    await ack_task
    writer.write(b"\xe0\x00")
    await writer.drain()
    writer.close()


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--messages", type=int, default=10000, help="per connection")
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument("--payload-size", type=int, default=64)
    parser.add_argument("--topic", default="sensors/load/{conn}")
    args = parser.parse_args()
    latencies = []
    start = time.perf_counter()
    await asyncio.gather(*(connection(args, i, latencies) for i in range(args.connections)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    total = len(latencies)

    def pct(p):
        return latencies[min(total - 1, int(total * p))] * 1000

    print(f"{total} QoS 1 publishes acknowledged in {elapsed:.2f} s: {total / elapsed:,.0f} msg/s")
    print(
        f"PUBACK latency ms: p50 {pct(0.5):.2f}  p90 {pct(0.9):.2f}  p99 {pct(0.99):.2f}  "
        f"p99.9 {pct(0.999):.2f}  max {latencies[-1] * 1000:.2f}"
    )


asyncio.run(main())
