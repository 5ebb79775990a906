#!/usr/bin/env python3
"""Connections per second a broker completes (TCP, TLS, MQTT CONNECT).

Every worker loops for --duration seconds: TCP connect to --host:--port, with
--tls a full TLS handshake, an MQTT 3.1.1 CONNECT (clean session, keep-alive
60 s, a client id unique to the run), wait for the CONNACK, send DISCONNECT,
close. A connection counts as completed when its CONNACK arrives with return
code 0x00; anything else (refused or reset connect, failed TLS handshake,
another return code, the broker closing first, no CONNACK within --timeout
seconds) counts as failed, by reason. The latency is from the start of the TCP
connect to the CONNACK (so it includes the TLS handshake and the broker's
CONNECT processing, and with many workers the wait in the broker's accept
queue). Workers start together and stop starting connections at the end of
--duration; connections in flight then are finished and counted, and the rate
is completed connections / time until the last worker stopped.

Printed: connections completed and failed (failures by reason), connections
per second, latency p50/p99/max, and the CPU used during the run (user+system
seconds from /proc and getrusage):
  - with --pid, the broker's CPU seconds (/proc/PID/stat utime+stime, all its
    threads) and broker CPU ms per completed connection;
  - the client's CPU seconds (all worker processes) and client CPU ms per
    connection;
  - the whole machine's busy share (/proc/stat, all cores, including other
    work), and the number of cores.
Read them together: when broker + client CPU is close to the machine's cores
(or the machine is busy), the rate measures the machine, not the broker; broker
CPU ms per connection is the figure that carries over. On one machine this
client is usually the bottleneck: a TLS connection costs it (OpenSSL, from
Python) 3 to 4 times the broker's CPU, a plain one about 1.3 times.

Workers. --workers connection loops in total, threads spread over --processes
worker processes (default: one per core, at most one per worker), so Python's
own per-connection cost is spread over cores instead of one interpreter lock.
Each loop is blocking (one connection at a time). Keep --workers under the
broker's listen backlog, or connects wait for SYN retransmission (1 s, 3 s ...).

TLS. --tls CAFILE verifies the broker's certificate against CAFILE and the name
--tls-server-name ("localhost" by default, whatever --host is); --tls-cert
CERTFILE [--tls-key KEYFILE] presents a client certificate (for listeners with
require_client_cert). Every connection is a full handshake: no session is
resumed (devices that resume cost the broker less).

Limits. Closed connections leave the client side in TIME_WAIT (60 s on Linux),
one loopback port each, about 28,000 ports per source address: client sockets
are bound to 127.0.0.2, 127.0.0.3, ... (--sources addresses, worker i uses
number i modulo --sources; IP_BIND_ADDRESS_NO_PORT lets the kernel reuse ports
towards other destinations) so the broker must listen on 127.0.0.1 or 0.0.0.0
when --host is a loopback address; with another --host sockets are not bound.
A worker that failed waits 10 ms before its next attempt (a broker that
refuses everything is not hammered). The exit status is 1 when no connection
completed or more than 1% failed.

  scripts/dev/handshake-rate.py --port 1883 --workers 8 --duration 20 \\
      --pid $(pgrep -f 'tributary --config')
  scripts/dev/handshake-rate.py --port 8883 --tls ca.pem --workers 32 --pid ...
  scripts/dev/handshake-rate.py --port 8884 --tls ca.pem --tls-cert client.pem \\
      --tls-key client.key --workers 32 --processes 2 --pid ...
"""
import argparse
import collections
import ipaddress
import math
import multiprocessing
import os
import resource
import socket
import ssl
import struct
import sys
import threading
import time

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of pid (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_ticks():
    """(busy, total) clock ticks of all cores since boot."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal
    idle = values[3] + values[4]
    return total - idle, total


def remaining_length(n):
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(client_id, keep_alive=60):
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02" + struct.pack("!H", keep_alive)
    body += struct.pack("!H", len(cid)) + cid
    return b"\x10" + remaining_length(len(body)) + body


def tls_context(args):
    if args.tls is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, checks the host name
    context.load_verify_locations(args.tls)
    if args.tls_cert:
        context.load_cert_chain(args.tls_cert, args.tls_key)
    return context


def reason_of(err):
    if isinstance(err, ssl.SSLError):
        return f"TLS {getattr(err, 'reason', None) or err}"
    if isinstance(err, socket.timeout):
        return "timeout"
    return err.strerror or type(err).__name__


class Failed(Exception):
    pass


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise Failed("closed by the broker before CONNACK")
        data += chunk
    return data


def one_connection(args, context, source, client_id):
    """Latency in seconds of one connection; raises Failed or OSError."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(args.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
        start = time.perf_counter()
        sock.connect((args.host, args.port))
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname=args.tls_server_name)
        sock.sendall(connect_packet(client_id))
        header = read_exact(sock, 2)
        if header != b"\x20\x02":
            raise Failed(f"expected CONNACK, got {header.hex()}")
        code = read_exact(sock, 2)[1]
        latency = time.perf_counter() - start
        if code != 0:
            raise Failed(f"CONNACK return code {code}")
        sock.sendall(b"\xe0\x00")
        return latency
    finally:
        sock.close()


def worker_process(args, index, go, deadline, ready, results):
    """Worker process `index`: its share of the connection loops.

    Loops start when `go` is set and stop starting connections at
    `deadline` (time.monotonic(), set before `go`); then the process puts
    (index, latencies, failures by reason, its CPU seconds) on `results`.
    """
    context = tls_context(args)
    latencies = []
    failures = collections.Counter()
    lock = threading.Lock()
    host_is_loopback = ipaddress.ip_address(
        socket.gethostbyname(args.host)).is_loopback

    def loop(worker):
        source = None
        if host_is_loopback and args.sources:
            source = f"127.0.0.{2 + worker % args.sources}"
        mine, failed = [], collections.Counter()
        go.wait()
        end = deadline.value
        n = 0
        while time.monotonic() < end:
            n += 1
            client_id = f"hr-{os.getpid()}-{worker}-{n}"
            try:
                mine.append(one_connection(args, context, source, client_id))
            except Failed as err:
                failed[str(err)] += 1
                time.sleep(0.01)
            except (OSError, ValueError) as err:
                failed[reason_of(err)] += 1
                time.sleep(0.01)
        with lock:
            latencies.extend(mine)
            failures.update(failed)

    workers = [
        threading.Thread(target=loop, args=(w,), daemon=True)
        for w in range(index, args.workers, args.processes)
    ]
    for t in workers:
        t.start()
    ready.put(index)
    for t in workers:
        t.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    results.put((index, latencies, dict(failures), usage.ru_utime + usage.ru_stime))


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--workers", type=int, default=8, help="connection loops in total")
    parser.add_argument(
        "--processes", type=int, default=0,
        help="worker processes (default: cores, at most --workers)",
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds")
    parser.add_argument("--pid", type=int, help="the broker's process id (for its CPU)")
    parser.add_argument(
        "--tls", metavar="CAFILE",
        help="connect over TLS, verifying the broker's certificate against CAFILE (PEM)",
    )
    parser.add_argument(
        "--tls-server-name", default="localhost",
        help="name the broker's certificate must have (SNI and host name check)",
    )
    parser.add_argument("--tls-cert", metavar="CERTFILE", help="client certificate (PEM)")
    parser.add_argument(
        "--tls-key", metavar="KEYFILE", help="its private key (default: in CERTFILE)"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per connection")
    parser.add_argument(
        "--sources", type=int, default=8,
        help="client source addresses 127.0.0.2 ... (0: do not bind)",
    )
    args = parser.parse_args()
    if args.workers < 1 or args.duration <= 0 or not 0 <= args.sources <= 250:
        parser.error("--workers >= 1, --duration > 0, 0 <= --sources <= 250")
    if (args.tls_cert or args.tls_key) and not args.tls:
        parser.error("--tls-cert and --tls-key need --tls CAFILE")
    if args.tls_key and not args.tls_cert:
        parser.error("--tls-key needs --tls-cert")
    cores = os.cpu_count() or 1
    if args.processes <= 0:
        args.processes = min(cores, args.workers)
    args.processes = min(args.processes, args.workers)
    try:
        tls_context(args)  # fail here, once, on bad files
    except (OSError, ssl.SSLError) as err:
        sys.exit(f"TLS files: {err}")
    broker = None
    if args.pid:
        with open(f"/proc/{args.pid}/comm") as comm:
            broker = comm.read().strip()
        cpu_seconds(args.pid)

    # The measurement starts when every worker process is ready: its
    # threads wait for `go`, and read the deadline once it is set.
    mp = multiprocessing.get_context("fork")
    go, ready, results = mp.Event(), mp.Queue(), mp.Queue()
    deadline = mp.Value("d", 0.0, lock=False)
    procs = []
    for index in range(args.processes):
        p = mp.Process(target=worker_process,
                       args=(args, index, go, deadline, ready, results), daemon=True)
        p.start()
        procs.append(p)
    for _ in procs:
        ready.get(timeout=60)

    broker_cpu0 = cpu_seconds(args.pid) if args.pid else None
    busy0, total0 = machine_ticks()
    own0 = resource.getrusage(resource.RUSAGE_SELF)
    start_at = time.monotonic()
    deadline.value = start_at + args.duration
    go.set()

    latencies, failures, client_cpu = [], collections.Counter(), 0.0
    for _ in procs:
        index, lat, failed, cpu = results.get(timeout=args.duration + args.timeout + 120)
        latencies.extend(lat)
        failures.update(failed)
        client_cpu += cpu
    elapsed = time.monotonic() - start_at
    broker_cpu = cpu_seconds(args.pid) - broker_cpu0 if args.pid else None
    busy1, total1 = machine_ticks()
    own1 = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu += (own1.ru_utime + own1.ru_stime) - (own0.ru_utime + own0.ru_stime)
    for p in procs:
        p.join(timeout=30)

    completed, failed = len(latencies), sum(failures.values())
    latencies.sort()
    rate = completed / elapsed
    transport = "plain"
    if args.tls:
        transport = "TLS + client cert" if args.tls_cert else "TLS"
    print(f"{args.host}:{args.port} {transport}, {args.workers} workers in "
          f"{args.processes} processes, {elapsed:.1f} s")
    print(f"completed {completed}, failed {failed}, {rate:.0f} connections/s")
    if failures:
        print("failures: " + ", ".join(f"{r} x{n}" for r, n in failures.most_common()))
    ms = lambda s: s * 1000  # noqa: E731
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    worst = latencies[-1] if latencies else float("nan")
    print(f"latency TCP connect -> CONNACK: p50 {ms(p50):.2f} ms, p99 {ms(p99):.2f} ms, "
          f"max {ms(worst):.2f} ms")
    per_conn = lambda cpu: ms(cpu) / completed if completed else float("nan")  # noqa: E731
    machine = (busy1 - busy0) / (total1 - total0) if total1 > total0 else float("nan")
    broker_text = "-"
    if broker_cpu is not None:
        broker_text = f"{broker_cpu:.2f}"
        print(f"broker {broker} (pid {args.pid}) CPU {broker_cpu:.2f} s "
              f"({broker_cpu / elapsed * 100:.0f}% of one core), "
              f"{per_conn(broker_cpu):.3f} ms per connection")
    print(f"client CPU {client_cpu:.2f} s ({client_cpu / elapsed * 100:.0f}% of one core), "
          f"{per_conn(client_cpu):.3f} ms per connection")
    print(f"machine: {cores} cores, {machine * 100:.0f}% busy (all processes)")
    print()
    print("| transport | workers | processes | completed | failed | conn/s | p50 ms "
          "| p99 ms | broker CPU s | broker CPU ms/conn | client CPU s "
          "| client CPU ms/conn | machine busy |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    broker_per = f"{per_conn(broker_cpu):.3f}" if broker_cpu is not None else "-"
    print(f"| {transport} | {args.workers} | {args.processes} | {completed} | {failed} "
          f"| {rate:.0f} | {ms(p50):.2f} | {ms(p99):.2f} | {broker_text} | {broker_per} "
          f"| {client_cpu:.2f} | {per_conn(client_cpu):.3f} | {machine * 100:.0f}% |")
    return 1 if completed == 0 or failed > completed / 100 else 0


if __name__ == "__main__":
    sys.exit(main())
