#!/usr/bin/env python3
"""Memory of a broker process before and after N distinct client ids connect once.

Each client connects (MQTT 3.1.1, or MQTT 5 with --v5-expiry), gets its
CONNACK, sends DISCONNECT and closes. Reads the server's RSS from
/proc/<pid>/status. With --warmup, that many other clients connect first and
the "before" figure is taken after them: the idle RSS of a broker that has
served traffic, without the one-time cost of its first connections.

  scripts/dev/client-id-memory.py --pid $(pgrep -f 'tributary --config') --clients 100000
  scripts/dev/client-id-memory.py --pid ... --persistent --v5-expiry 10 --settle 30 --warmup 100
"""
import argparse
import socket
import struct
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def connect_packet(client_id, clean, v5_expiry):
    cid = client_id.encode()
    flags = 0x02 if clean else 0x00
    if v5_expiry is None:
        body = b"\x00\x04MQTT\x04" + bytes([flags]) + b"\x00\x3c"
    else:
        properties = b"\x11" + struct.pack("!I", v5_expiry)
        body = b"\x00\x04MQTT\x05" + bytes([flags]) + b"\x00\x3c"
        body += bytes([len(properties)]) + properties
    body += struct.pack("!H", len(cid)) + cid
    return b"\x10" + bytes([len(body)]) + body


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--clients", type=int, default=100000)
    parser.add_argument("--persistent", action="store_true", help="clean session = 0")
    parser.add_argument(
        "--v5-expiry", type=int, help="MQTT 5 with this Session Expiry Interval (s)"
    )
    parser.add_argument(
        "--settle", type=float, default=2.0, help="seconds to wait before measuring"
    )
    parser.add_argument(
        "--warmup", type=int, default=0, help="clients to connect before measuring 'before'"
    )
    args = parser.parse_args()
    cold = rss_kib(args.pid)

    def connect_all(prefix, count):
        for i in range(count):
            with socket.create_connection(("127.0.0.1", args.port)) as s:
                s.sendall(connect_packet(f"{prefix}-{i}", not args.persistent, args.v5_expiry))
                connack = s.recv(64)
                assert connack[0] == 0x20 and connack[3] == 0, connack
                s.sendall(b"\xe0\x00")

    if args.warmup:
        connect_all("memwarm", args.warmup)
        time.sleep(args.settle)
        print(f"idle {cold / 1024:.1f} MiB at start, {rss_kib(args.pid) / 1024:.1f} MiB "
              f"after {args.warmup} warm-up clients")
    before = rss_kib(args.pid)
    start = time.time()
    connect_all("memtest", args.clients)
    time.sleep(args.settle)
    after = rss_kib(args.pid)
    print(
        f"{args.clients} distinct client ids (clean session {not args.persistent}, "
        f"v5 expiry {args.v5_expiry}) in "
        f"{time.time() - start:.0f} s: RSS {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB "
        f"(+{(after - before) / args.clients * 1024:.0f} bytes per client id)"
    )


main()
