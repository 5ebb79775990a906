#!/usr/bin/env python3
"""Memory of a broker process per idle MQTT connection.

Opens connections to the broker and keeps them open and idle: each one sends an
MQTT 3.1.1 CONNECT (clean session, keep-alive 600 s, a unique client id), waits
for its CONNACK and, with --subscribe, subscribes to its own filter mem/<i>/#
at QoS 1 and waits for the SUBACK. Then, after --settle seconds, it reads the
broker's VmRSS and VmHWM from /proc/<pid>/status.

--connections takes a list (1000,10000,19000): the steps are successive on the
same run, i.e. the connections of one step stay open and the next step adds to
them until that many are open. Each step reports the RSS before any connection
of this run, the RSS with the step's connections open, the delta, the KB per
connection (delta / open connections) and the marginal KB per connection since
the previous step (which leaves out one-time costs of the first connections).
Start a fresh broker for figures that must not depend on earlier runs.

TLS. With --tls CAFILE every connection does a TLS handshake (Python's ssl,
i.e. OpenSSL; TLS 1.2 or 1.3, whatever the broker picks) before its CONNECT:
the broker's certificate must chain to CAFILE and name --tls-server-name
("localhost" by default; the name is checked, whatever --host is).
--tls-cert CERTFILE [--tls-key KEYFILE] presents a client certificate (for
listeners with require_client_cert; without --tls-key the key is read from
CERTFILE). Handshakes are driven without blocking like the rest, so they count
against --window and --timeout; a failed TLS handshake (certificate refused
by either side) is retried like a failed TCP connect and reported with
OpenSSL's reason. Full handshakes only: no session is resumed. The RSS delta
then includes the broker's TLS state per connection (its buffers, the
session); this script's own memory grows too (tens of KB per TLS connection,
not measured). Mind that the broker's CPU, not memory, limits how fast TLS
connections open: 10,000 take tens of seconds on a small machine.

Limits. Every connection costs one file descriptor here and one in the broker.
This script raises its own RLIMIT_NOFILE soft limit to the hard limit (20,000
per process on the development machine, so 19,968 connections at most)
and stops with a message when the largest step does not fit; start the broker
with the same limit (ulimit -n 20000, or prlimit --nofile=20000 --pid PID).
Loopback client ports come from the ephemeral range (about 28,000 ports), so
client sockets are bound to 127.0.0.2, 127.0.0.3, ... in turn, --per-source
connections each (10,000 by default): the broker must listen on 127.0.0.1 or
0.0.0.0.

Connections are opened without blocking, --window handshakes at a time (64:
more than the broker's listen backlog overflows its accept queue, and the
dropped handshakes wait for TCP retransmission, seconds each); a handshake
that fails or takes longer than --timeout seconds is retried on a new socket
up to --retries times, then counted as failed. Every socket is closed at the
end (after a DISCONNECT). The exit status is 1 when a connection could not be
opened.

  scripts/dev/connection-memory.py --pid $(pgrep -f 'tributary --config') \\
      --port 1883 --connections 1000,10000,19000 --settle 5
  scripts/dev/connection-memory.py --pid ... --connections 10000 --subscribe
  scripts/dev/connection-memory.py --pid ... --port 8883 --tls ca.pem \\
      --connections 1000,10000
"""
import argparse
import collections
import errno
import os
import resource
import select
import selectors
import socket
import ssl
import struct
import sys
import time

# File descriptors this process needs besides the connections.
SPARE_FDS = 32

CONNECTING, TLS_HANDSHAKE, WAIT_CONNACK, WAIT_SUBACK = (
    "connecting", "in the TLS handshake", "waiting for CONNACK", "waiting for SUBACK")


def proc_status(pid):
    """VmRSS and VmHWM of pid, in KiB."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    if "VmRSS" not in values:
        raise RuntimeError(f"no VmRSS in /proc/{pid}/status")
    return values["VmRSS"], values.get("VmHWM", 0)


def open_files_limit(pid):
    """Soft 'Max open files' of pid, or None when unreadable/unlimited."""
    try:
        with open(f"/proc/{pid}/limits") as limits:
            for line in limits:
                if line.startswith("Max open files"):
                    soft = line.split()[3]
                    return None if soft == "unlimited" else int(soft)
    except OSError:
        pass
    return None


def tls_context(args):
    """The client SSLContext for --tls, or None without it."""
    if args.tls is None:
        if args.tls_cert or args.tls_key:
            sys.exit("--tls-cert and --tls-key need --tls CAFILE")
        return None
    if args.tls_key and not args.tls_cert:
        sys.exit("--tls-key needs --tls-cert")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, checks the host name
    try:
        context.load_verify_locations(args.tls)
        if args.tls_cert:
            context.load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as err:
        sys.exit(f"TLS files: {err}")
    return context


def tls_reason(err):
    """Short reason of an SSL error, e.g. 'CERTIFICATE_VERIFY_FAILED'."""
    return getattr(err, "reason", None) or getattr(err, "strerror", None) or str(err)


def remaining_length(n):
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(client_id, keep_alive):
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02" + struct.pack("!H", keep_alive)
    body += struct.pack("!H", len(cid)) + cid
    return b"\x10" + remaining_length(len(body)) + body


def subscribe_packet(topic_filter, packet_id=1):
    topic = topic_filter.encode()
    body = struct.pack("!HH", packet_id, len(topic)) + topic + b"\x01"
    return b"\x82" + remaining_length(len(body)) + body


def split_packet(buf):
    """(packet type byte, body, rest) when buf starts with a whole packet, else None."""
    length, multiplier, pos = 0, 1, 1
    while True:
        if pos >= len(buf):
            return None
        byte = buf[pos]
        length += (byte & 0x7F) * multiplier
        multiplier *= 128
        pos += 1
        if not byte & 0x80:
            break
        if pos > 4:
            raise ValueError("malformed remaining length")
    if len(buf) < pos + length:
        return None
    return buf[0], bytes(buf[pos:pos + length]), buf[pos + length:]


class Handshake:
    __slots__ = ("index", "sock", "state", "inbuf", "outbuf", "deadline", "attempts")

    def __init__(self, index):
        self.index = index
        self.attempts = 0
        self.sock = None


class Connector:
    """Opens connections and keeps the finished ones in self.opened."""

    def __init__(self, args):
        self.args = args
        self.selector = selectors.DefaultSelector()
        self.opened = []
        self.failures = collections.Counter()
        self.retried = 0
        self.prefix = f"mem-{os.getpid()}-{int(time.time())}"
        self.tls = tls_context(args)

    def source(self, index):
        n = 2 + index // self.args.per_source
        return f"127.0.{n // 256}.{n % 256}" if n >= 256 else f"127.0.0.{n}"

    def open(self, count):
        """Opens connections up to count in total; returns how many failed."""
        args = self.args
        waiting = collections.deque(
            (0.0, Handshake(i)) for i in range(len(self.opened), count)
        )
        active = {}
        failed = 0
        step_deadline = time.monotonic() + args.step_timeout
        next_scan = 0.0

        def give_up(h, reason):
            nonlocal failed
            self.close_handshake(h, active)
            h.attempts += 1
            if h.attempts > args.retries:
                failed += 1
                self.failures[reason] += 1
            else:
                self.retried += 1
                waiting.append((time.monotonic() + 0.2 * h.attempts, h))

        def start(h):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            h.sock, h.state, h.inbuf = sock, CONNECTING, bytearray()
            h.outbuf = connect_packet(f"{self.prefix}-{h.index}", args.keep_alive)
            h.deadline = time.monotonic() + args.timeout
            active[sock.fileno()] = h
            try:
                sock.bind((self.source(h.index), 0))
            except OSError as err:
                give_up(h, f"bind: {err.strerror}")
                return
            code = sock.connect_ex((args.host, args.port))
            if code not in (0, errno.EINPROGRESS):
                give_up(h, f"connect: {os.strerror(code)}")
                return
            self.selector.register(sock, selectors.EVENT_WRITE, h)

        def finish(h):
            self.selector.unregister(h.sock)
            del active[h.sock.fileno()]
            self.opened.append(h.sock)
            h.sock = None

        def start_tls(h):
            # The SSLSocket takes over the file descriptor (same number, so
            # `active` stays valid); the plain socket object is detached.
            self.selector.unregister(h.sock)
            try:
                h.sock = self.tls.wrap_socket(
                    h.sock, server_hostname=args.tls_server_name,
                    do_handshake_on_connect=False,
                )
            except (OSError, ValueError) as err:
                give_up(h, f"TLS: {tls_reason(err)}")
                return
            h.state = TLS_HANDSHAKE
            self.selector.register(h.sock, selectors.EVENT_WRITE, h)
            handshake(h)

        def handshake(h):
            try:
                h.sock.do_handshake()
            except ssl.SSLWantReadError:
                self.selector.modify(h.sock, selectors.EVENT_READ, h)
                return
            except ssl.SSLWantWriteError:
                self.selector.modify(h.sock, selectors.EVENT_WRITE, h)
                return
            except ssl.SSLError as err:
                give_up(h, f"TLS: {tls_reason(err)}")
                return
            except OSError as err:
                give_up(h, f"TLS: {err.strerror or err}")
                return
            h.state = WAIT_CONNACK
            self.selector.modify(h.sock, selectors.EVENT_WRITE, h)

        def on_write(h):
            if h.state == CONNECTING:
                code = h.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    give_up(h, f"connect: {os.strerror(code)}")
                    return
                if self.tls is not None:
                    start_tls(h)
                    return
                h.state = WAIT_CONNACK
            elif h.state == TLS_HANDSHAKE:
                handshake(h)
                return
            try:
                sent = h.sock.send(h.outbuf)
            except (BlockingIOError, ssl.SSLWantWriteError):
                return
            except ssl.SSLWantReadError:
                # TLS needs the peer's data before it can write (rare).
                self.selector.modify(h.sock, selectors.EVENT_READ, h)
                return
            except ssl.SSLError as err:
                give_up(h, f"send: TLS {tls_reason(err)}")
                return
            except OSError as err:
                give_up(h, f"send: {err.strerror}")
                return
            h.outbuf = h.outbuf[sent:]
            if not h.outbuf:
                self.selector.modify(h.sock, selectors.EVENT_READ, h)

        def on_read(h):
            if h.state == TLS_HANDSHAKE:
                handshake(h)
                return
            if h.outbuf:
                # A TLS write that wanted to read first: retry it now.
                self.selector.modify(h.sock, selectors.EVENT_WRITE, h)
                return
            data = bytearray()
            try:
                chunk = h.sock.recv(4096)
                data += chunk
                # Decrypted bytes OpenSSL holds beyond this read: the selector
                # does not see them (the kernel buffer is already drained).
                while chunk and self.tls is not None and h.sock.pending():
                    chunk = h.sock.recv(max(h.sock.pending(), 4096))
                    data += chunk
            except (BlockingIOError, ssl.SSLWantReadError):
                # No application data yet (e.g. a TLS 1.3 session ticket).
                if not data:
                    return
            except ssl.SSLWantWriteError:
                if not data:
                    self.selector.modify(h.sock, selectors.EVENT_WRITE, h)
                    return
            except ssl.SSLError as err:
                give_up(h, f"recv: TLS {tls_reason(err)}")
                return
            except OSError as err:
                give_up(h, f"recv: {err.strerror}")
                return
            if not data:
                give_up(h, f"closed by the broker while {h.state}")
                return
            h.inbuf += data
            try:
                packet = split_packet(h.inbuf)
            except ValueError as err:
                give_up(h, str(err))
                return
            if packet is None:
                return
            kind, body, h.inbuf = packet
            if h.state == WAIT_CONNACK:
                if kind != 0x20 or len(body) != 2:
                    give_up(h, f"expected CONNACK, got packet type {kind >> 4}")
                elif body[1] != 0:
                    give_up(h, f"CONNACK return code {body[1]}")
                elif args.subscribe:
                    h.state = WAIT_SUBACK
                    h.outbuf = subscribe_packet(f"mem/{h.index}/#")
                    self.selector.modify(h.sock, selectors.EVENT_WRITE, h)
                else:
                    finish(h)
            elif h.state == WAIT_SUBACK:
                if kind != 0x90 or len(body) != 3 or body[:2] != b"\x00\x01":
                    give_up(h, f"expected SUBACK, got packet type {kind >> 4}")
                elif body[2] == 0x80:
                    give_up(h, "SUBACK refused the subscription")
                else:
                    finish(h)

        while waiting or active:
            now = time.monotonic()
            if now > step_deadline:
                for h in list(active.values()):
                    self.close_handshake(h, active)
                leftover = len(waiting) + len(active)
                failed += leftover
                self.failures["step timeout"] += leftover
                break
            while waiting and len(active) < args.window and waiting[0][0] <= now:
                start(waiting.popleft()[1])
            if not waiting and not active:
                break
            for key, mask in self.selector.select(timeout=0.1):
                h = key.data
                if h.sock is None:
                    continue  # finished or given up by an earlier event
                if mask & selectors.EVENT_WRITE:
                    on_write(h)
                elif mask & selectors.EVENT_READ:
                    on_read(h)
            if now >= next_scan:
                next_scan = now + 0.5
                for h in [h for h in active.values() if h.deadline < now]:
                    give_up(h, f"timeout {h.state}")
            # Retries wait for their time; do not spin while only they are left.
            if waiting and not active and waiting[0][0] > now:
                time.sleep(min(0.2, waiting[0][0] - now))
        return failed

    def close_handshake(self, h, active):
        if h.sock is None:
            return
        active.pop(h.sock.fileno(), None)
        try:
            self.selector.unregister(h.sock)
        except (KeyError, ValueError):
            pass
        h.sock.close()
        h.sock = None

    def still_open(self):
        """How many opened connections the broker has not closed."""
        poller = select.poll()
        mask = select.POLLIN | getattr(select, "POLLRDHUP", 0) | select.POLLERR | select.POLLHUP
        by_fd = {}
        for sock in self.opened:
            poller.register(sock, mask)
            by_fd[sock.fileno()] = sock
        closed = 0
        for fd, events in poller.poll(0):
            if events & (select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0)):
                closed += 1
                continue
            try:
                # The kernel socket itself, also under TLS (SSLSocket.recv
                # takes no flags): an end of stream with nothing left is closed.
                if socket.socket.recv(by_fd[fd], 1, socket.MSG_PEEK) == b"":
                    closed += 1
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
        return len(self.opened) - closed

    def close_all(self):
        for sock in self.opened:
            try:
                sock.send(b"\xe0\x00")
            except OSError:
                pass
            sock.close()
        self.opened.clear()
        self.selector.close()


def raise_fd_limit(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and needed + SPARE_FDS > soft:
        sys.exit(
            f"{needed} connections need {needed + SPARE_FDS} open files here, but this "
            f"process may open only {soft} (RLIMIT_NOFILE hard limit {hard}); "
            f"at most {soft - SPARE_FDS} connections"
        )


def check_port_range(per_source):
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = map(int, f.read().split())
    except OSError:
        return
    if per_source > high - low + 1 - 1000:
        sys.exit(
            f"--per-source {per_source} does not fit the ephemeral port range "
            f"{low}-{high} with room to spare; use at most {high - low + 1 - 1000}"
        )


def parse_steps(text):
    try:
        steps = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text}")
    if not steps or any(n <= 0 for n in steps) or steps != sorted(set(steps)):
        raise argparse.ArgumentTypeError("expected increasing positive numbers, e.g. 1000,10000")
    return steps


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--pid", type=int, required=True, help="the broker's process id")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument(
        "--connections", type=parse_steps, default=[1000],
        help="connections to hold open; a list such as 1000,10000,19000 is measured "
             "as successive steps of the same run",
    )
    parser.add_argument(
        "--subscribe", action="store_true",
        help="each connection also subscribes to mem/<i>/# (QoS 1)",
    )
    parser.add_argument(
        "--settle", type=float, default=5.0, help="seconds to wait before reading RSS"
    )
    parser.add_argument("--keep-alive", type=int, default=600, help="seconds")
    parser.add_argument(
        "--per-source", type=int, default=10000,
        help="connections per source address 127.0.0.2, 127.0.0.3, ...",
    )
    parser.add_argument(
        "--window", type=int, default=64,
        help="handshakes in flight; keep it under the broker's listen backlog",
    )
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
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per handshake")
    parser.add_argument("--retries", type=int, default=3, help="per connection")
    parser.add_argument(
        "--step-timeout", type=float, default=300.0, help="seconds a step may take at most"
    )
    args = parser.parse_args()

    most = args.connections[-1]
    raise_fd_limit(most)
    check_port_range(args.per_source)
    broker_limit = open_files_limit(args.pid)
    if broker_limit is not None and most >= broker_limit:
        print(
            f"warning: the broker (pid {args.pid}) may open only {broker_limit} files",
            file=sys.stderr,
        )
    with open(f"/proc/{args.pid}/comm") as comm:
        broker = comm.read().strip()
    mode = "subscribed" if args.subscribe else "publish-only"
    if args.tls:
        mode += ", TLS" + (" + client cert" if args.tls_cert else "")

    before, hwm = proc_status(args.pid)
    print(f"{broker} (pid {args.pid}) {args.host}:{args.port}, {mode}: "
          f"RSS {before} KiB, HWM {hwm} KiB before any connection")
    connector = Connector(args)
    rows = []
    previous_rss, previous_open = before, 0
    try:
        for step in args.connections:
            start = time.monotonic()
            failed = connector.open(step)
            took = time.monotonic() - start
            time.sleep(args.settle)
            after, hwm = proc_status(args.pid)
            open_now = connector.still_open()
            delta = after - before
            per_conn = delta / open_now if open_now else float("nan")
            added = open_now - previous_open
            marginal = (after - previous_rss) / added if added > 0 else float("nan")
            notes = f", {failed} failed" if failed else ""
            if open_now != len(connector.opened):
                notes += f", {len(connector.opened) - open_now} closed by the broker"
            print(
                f"{step} {mode}: {open_now} open in {took:.1f} s{notes}; "
                f"RSS {before} -> {after} KiB (+{delta} KiB), HWM {hwm} KiB; "
                f"{per_conn:.2f} KB per connection, {marginal:.2f} KB marginal"
            )
            rows.append((step, open_now, after, hwm, delta, per_conn, marginal))
            previous_rss, previous_open = after, open_now
        if connector.failures:
            print("failures: " + ", ".join(
                f"{reason} x{n}" for reason, n in connector.failures.most_common()))
        if connector.retried:
            print(f"handshakes retried: {connector.retried}")
        print()
        print("| broker | mode | connections | open | RSS before KiB | RSS after KiB "
              "| HWM KiB | delta KiB | KB/conn | marginal KB/conn |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for step, open_now, after, hwm, delta, per_conn, marginal in rows:
            print(f"| {broker} | {mode} | {step} | {open_now} | {before} | {after} | {hwm} "
                  f"| {delta} | {per_conn:.2f} | {marginal:.2f} |")
    finally:
        connector.close_all()
    return 1 if connector.failures else 0


sys.exit(main())
