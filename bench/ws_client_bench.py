"""WebSocket clients compared at the frame level on this machine (a harness, not a test; issue 16).

A server in its own process (so its CPU is not counted) sends PI-channel messages captured from the
real simulator channel (100 and 1,000 streams per message) over C connections (C = 1, 100, 1000),
each connection exactly ``k`` messages as fast as the client takes them (asyncio flow control: the
server writes while the kernel buffers take it). Each client variant runs in its own process, opens
the C connections, then sends one small "go" frame per connection (the server starts sending on
it), and reads N = C × k messages in total. Measured in the client process from the first "go" to
the last message: wall time, and user+sys CPU of the whole process (``resource.getrusage``, all
threads). Every message's length is checked against what the server sent (a variant that loses
or mangles a frame fails the run).

Variants:
  (a) ws-client-threads   websocket-client ``recv_data``, one thread per connection (today's path)
  (b) ws-client-selector  websocket-client opens (handshake, auth headers, proxy, TLS as today);
                          then frames are read from its raw socket by the small non-blocking
                          decoder below, every connection in ONE ``selectors`` loop
  (c) websockets          asyncio client, one loop
  (d) aiohttp             ``ClientSession.ws_connect``, one loop
  (e) picows              one loop (Cython frame parser)
  (f) <best one-loop> + parse  the one-loop variant with the lowest CPU per MB, plus
                          ``pi_stream_source.parse.fast_batch`` on every message, as channel.py calls it
Plus TLS (a CA generated here, the client trusting the CA file) at C=100 for (a), (b) and the best
library. Before the matrix the decoder of (b) is checked in-process (every frame shape fed whole,
a byte at a time and in uneven chunks; each protocol violation refused) and against the server
(fragments with 7- and 16-bit lengths and a ping between them, whole 16- and 64-bit frames), every
variant byte for byte on fragmented messages, plain and TLS; and each library is probed on what
the source must keep: an Authorization header on the upgrade, a 401 with two WWW-Authenticate
challenges (Negotiate, Basic), a CONNECT proxy with Basic credentials to wss:// with the private
CA, and a 407 for a wrong proxy password.

    python bench/ws_client_bench.py [--mb 60] [--budget 280] [--out bench/results]

Writes ``bench/results/<UTC stamp>-ws-clients.{md,json}``.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import hashlib
import json
import os
import platform
import resource
import selectors
import math
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_MESSAGE = 64 << 20          # a bound on one message (PI's largest channel messages are a few MB)
SETS = (100, 1000)              # streams per message
CLIENT_TIMEOUT = 120.0          # one client process, connect + read (s)
VARIANTS = ("ws-client-threads", "ws-client-selector", "websockets", "aiohttp", "picows")
ONE_LOOP = VARIANTS[1:]
LETTER = dict(zip(VARIANTS, "abcde"))
PROXY_USER, PROXY_PASSWORD = "bench", "pr0xy-secret"
PROXY_ONLY_HOST = "pi-bench.invalid"    # resolvable only by the bench proxy: a client that went around it fails


# ---------------------------------------------------------------------------------------------
# Payloads: real messages from the simulator's channel
# ---------------------------------------------------------------------------------------------

def capture(messages: int, workdir: Path) -> None:
    """``messages`` channel messages of each set's size from the real simulator (PI's full
    StreamValues shape), captured the way bench/parse_bench.py does; written into ``workdir`` with
    the WebID → (name, path) map that ``fast_batch`` needs."""
    from parse_bench import capture as capture_channel

    known: Dict[str, Tuple[str, str]] = {}
    for streams in SETS:
        frames, names = capture_channel(streams, messages)
        for i, data in enumerate(frames):
            (workdir / f"msg-{streams}-{i}.json").write_bytes(data)
        known.update(names)
    (workdir / "known.json").write_text(json.dumps(known))


def load_payloads(workdir: Path, streams: int) -> List[bytes]:
    files = sorted(workdir.glob(f"msg-{streams}-*.json"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    return [p.read_bytes() for p in files]


# ---------------------------------------------------------------------------------------------
# TLS material: a private CA and a server certificate for 127.0.0.1
# ---------------------------------------------------------------------------------------------

def make_tls(workdir: Path) -> Tuple[Path, Path, Path]:
    """A private CA (as a site's own PKI would be) and a leaf for 127.0.0.1/localhost signed by it;
    returns (ca.pem, server cert chain, server key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    import ipaddress

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ws bench private CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.DNSName(PROXY_ONLY_HOST),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    ca_file, cert_file, key_file = workdir / "ca.pem", workdir / "server.pem", workdir / "server.key"
    ca_file.write_bytes(ca.public_bytes(pem))
    cert_file.write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    key_file.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return ca_file, cert_file, key_file


# ---------------------------------------------------------------------------------------------
# Server (its own process)
# ---------------------------------------------------------------------------------------------

def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """One unmasked server→client frame (RFC 6455 §5.2)."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        head = bytes((b0, n))
    elif n < 1 << 16:
        head = bytes((b0, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((b0, 127)) + n.to_bytes(8, "big")
    return head + payload


def message_bytes(payload: bytes, frag: int, ping: bool) -> bytes:
    """A text message as the wire carries it: one frame, or fragments of ``frag`` bytes (a
    continuation sequence), with a ping between the first two fragments when ``ping``."""
    if frag <= 0 or len(payload) <= frag:
        return server_frame(OP_TEXT, payload)
    pieces = [payload[i:i + frag] for i in range(0, len(payload), frag)]
    out = [server_frame(OP_TEXT, pieces[0], fin=False)]
    if ping:
        out.append(server_frame(OP_PING, b"bench"))
    out += [server_frame(OP_CONT, p, fin=False) for p in pieces[1:-1]]
    out.append(server_frame(OP_CONT, pieces[-1], fin=True))
    return b"".join(out)


class _Server(asyncio.Protocol):
    """One connection: the upgrade, then (after the client's first frame) k messages, written
    while the transport takes them (pause_writing/resume_writing: the client sets the pace)."""

    def __init__(self, payloads: Dict[int, List[bytes]], cache: Dict[Tuple[int, int, bool], List[bytes]]) -> None:
        self.payloads, self.cache = payloads, cache
        self.head = b""
        self.state = "upgrade"
        self.paused = False
        self.sent = 0
        self.k = 0
        self.frames: List[bytes] = []
        self.transport: Optional[asyncio.Transport] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=1 << 20)

    def data_received(self, data: bytes) -> None:
        if self.state == "upgrade":
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.head[:end].decode("latin-1").split("\r\n")
            rest = self.head[end + 4:]
            headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
            query = parse_qs(urlsplit(lines[0].split(" ")[1]).query)
            streams = int(query.get("set", ["100"])[0])
            frag = int(query.get("frag", ["0"])[0])
            ping = query.get("ping", ["0"])[0] == "1"
            if query.get("status") == ["401"]:     # a refused upgrade, as PI answers wrong credentials
                seen = headers.get("authorization", "(none)").encode("latin-1")
                self.transport.write(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Negotiate\r\n"
                                     b"WWW-Authenticate: Basic realm=\"bench\"\r\nX-Seen-Authorization: " + seen +
                                     b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                self.transport.close()
                self.state = "refused"
                return
            self.k = int(query["k"][0])
            key = (streams, frag, ping)
            if key not in self.cache:
                self.cache[key] = [message_bytes(p, frag, ping) for p in self.payloads[streams]]
            self.frames = self.cache[key]
            accept = base64.b64encode(hashlib.sha1(headers["sec-websocket-key"].encode() + GUID).digest())
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            self.state = "wait"
            if not rest:
                return
        if self.state == "wait":            # the client's "go" (whatever it is: it is not parsed)
            self.state = "send"
            self.pump()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.pump()

    def pump(self) -> None:
        m = len(self.frames)
        while not self.paused and self.sent < self.k and not self.transport.is_closing():
            self.transport.write(self.frames[self.sent % m])
            self.sent += 1

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.frames = []




async def _connect_proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An HTTP CONNECT proxy that wants Basic credentials (407 otherwise), then pipes bytes."""
    try:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        method, target = head[0].split(" ")[:2]
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in head[1:] if ln)}
        want = "Basic " + base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode()
        if method != "CONNECT" or headers.get("proxy-authorization") != want:
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"bench\"\r\n"
                         b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        host, _, port = target.rpartition(":")
        up_reader, up_writer = await asyncio.open_connection(
            "127.0.0.1" if host == PROXY_ONLY_HOST else host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(1 << 16):
                    dst.write(data)
                    await dst.drain()
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)
    except (OSError, asyncio.IncompleteReadError, ValueError):
        writer.close()


def serve(workdir: Path, lifetime: float) -> None:
    """The server process: a plain and a TLS listener and a CONNECT proxy on 127.0.0.1; prints
    their ports as one JSON line, then serves until stdin closes (the parent went) or
    ``lifetime`` passes."""
    payloads = {s: load_payloads(workdir, s) for s in SETS}
    cache: Dict[Tuple[int, int, bool], List[bytes]] = {}
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(workdir / "server.pem", workdir / "server.key")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        plain = await loop.create_server(lambda: _Server(payloads, cache), "127.0.0.1", 0, backlog=4096)
        tls = await loop.create_server(lambda: _Server(payloads, cache), "127.0.0.1", 0, backlog=4096, ssl=ctx)
        proxy = await asyncio.start_server(_connect_proxy, "127.0.0.1", 0)
        print(json.dumps({"plain": plain.sockets[0].getsockname()[1], "tls": tls.sockets[0].getsockname()[1],
                          "proxy": proxy.sockets[0].getsockname()[1]}), flush=True)
        gone = loop.create_future()
        loop.add_reader(sys.stdin.fileno(), lambda: gone.done() or (sys.stdin.buffer.read1(1) or gone.set_result(None)))
        try:
            await asyncio.wait_for(gone, lifetime)
        except asyncio.TimeoutError:
            pass

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------
# (b): the minimal non-blocking frame decoder
# ---------------------------------------------------------------------------------------------

class ProtocolError(Exception):
    pass


class FrameDecoder:
    """Server→client WebSocket frames from a byte stream, incrementally (RFC 6455 §5.2): FIN and
    opcode, 7/16/64-bit payload lengths, unmasked frames only (a server must not mask), messages
    in continuation frames reassembled, control frames (≤125 bytes, never fragmented) allowed
    between fragments. ``feed`` returns the complete (opcode, payload) messages and control frames;
    an incomplete frame stays buffered for the next call. No extensions are negotiated, so any RSV
    bit is an error."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.parts: List[bytes] = []
        self.first_opcode = 0

    def feed(self, data: Any) -> List[Tuple[int, bytes]]:
        buf = self.buf
        buf += data
        out: List[Tuple[int, bytes]] = []
        pos, end = 0, len(buf)
        with memoryview(buf) as view:       # one copy per payload (bytes(view[a:b])), no slice copies
            while end - pos >= 2:
                b0, b1 = buf[pos], buf[pos + 1]
                if b1 & 0x80:
                    raise ProtocolError("masked frame from the server")
                if b0 & 0x70:
                    raise ProtocolError("RSV bits set but no extension was negotiated")
                n, h = b1 & 0x7F, 2
                if n == 126:
                    if end - pos < 4:
                        break
                    n, h = int.from_bytes(view[pos + 2:pos + 4], "big"), 4
                elif n == 127:
                    if end - pos < 10:
                        break
                    n, h = int.from_bytes(view[pos + 2:pos + 10], "big"), 10
                    if n > MAX_MESSAGE:
                        raise ProtocolError(f"frame of {n} bytes is over the {MAX_MESSAGE}-byte bound")
                if end - pos < h + n:
                    break
                opcode, fin = b0 & 0x0F, b0 & 0x80
                payload = bytes(view[pos + h:pos + h + n])
                pos += h + n
                if opcode >= 0x8:
                    if not fin or n > 125:
                        raise ProtocolError("fragmented or oversized control frame")
                    out.append((opcode, payload))
                elif opcode == OP_CONT:
                    if not self.parts:
                        raise ProtocolError("continuation frame without a message to continue")
                    self.parts.append(payload)
                    if fin:
                        out.append((self.first_opcode, b"".join(self.parts)))
                        self.parts = []
                elif self.parts:
                    raise ProtocolError("new message before the fragmented one ended")
                elif fin:
                    out.append((opcode, payload))
                else:
                    self.parts, self.first_opcode = [payload], opcode
        del buf[:pos]                       # bytearray drops a prefix without moving the rest each time
        return out


def check_decoder(payloads: List[bytes]) -> List[str]:
    """FrameDecoder on a stream of every frame shape, fed whole, a byte at a time and in uneven
    chunks (headers and payloads split anywhere): the same messages each time; and each
    protocol violation refused. Returns what was checked (raises on a failure)."""
    big, small = max(payloads, key=len), min(payloads, key=len)
    want = [(OP_TEXT, small), (OP_TEXT, big), (OP_TEXT, b""), (OP_BINARY, bytes(range(125))), (OP_PING, b"bench"),
            (OP_TEXT, small), (OP_TEXT, big), (OP_CLOSE, b"\x03\xe8")]
    stream = b"".join([server_frame(OP_TEXT, small), server_frame(OP_TEXT, big), server_frame(OP_TEXT, b""),
                       server_frame(OP_BINARY, bytes(range(125))),
                       message_bytes(small, 100, ping=True),          # the ping comes out first: it is between fragments
                       message_bytes(big, 16000, ping=False), server_frame(OP_CLOSE, b"\x03\xe8")])
    chunkings = {"whole": [len(stream)], "a byte at a time": [1],
                 "in uneven chunks (1, 2, 3, 5, 8 … 65,537 bytes)": [1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377,
                                                                     610, 987, 65537]}
    for name, sizes in chunkings.items():
        dec, got, pos, i = FrameDecoder(), [], 0, 0
        while pos < len(stream):
            n = sizes[i % len(sizes)]
            got += dec.feed(stream[pos:pos + n])
            pos, i = pos + n, i + 1
        if got != want:
            shape = [(o, len(p)) for o, p in got]
            raise AssertionError(f"FrameDecoder fed {name}: (opcode, length) {shape} != {[(o, len(p)) for o, p in want]}")
    bad = {  # name: (stream, the refusal's words)
        "masked frame": (bytes((0x81, 0x81)) + b"abcd" + b"x", "masked"),
        "RSV bit": (bytes((0xC1, 0)), "RSV"),
        "continuation without start": (bytes((0x80, 0)), "without a message"),
        "fragmented control frame": (bytes((0x09, 0)), "control frame"),
        "new message inside a fragmented one": (bytes((0x01, 1)) + b"a" + bytes((0x81, 1)) + b"b", "before the fragmented"),
        "oversized frame": (bytes((0x81, 127)) + (MAX_MESSAGE + 1).to_bytes(8, "big"), "bound")}
    for name, (data, words) in bad.items():
        try:
            FrameDecoder().feed(data)
        except ProtocolError as exc:
            if words in str(exc):
                continue
            raise AssertionError(f"FrameDecoder refused a {name} for another reason: {exc}") from None
        raise AssertionError(f"FrameDecoder accepted a {name}")
    return [f"FrameDecoder in-process: 7-, 16-, 64-bit lengths, empty and binary frames, fragments with a ping between, "
            f"close; fed {', '.join(chunkings)}: same messages",
            "FrameDecoder in-process: refuses " + ", ".join(bad)]


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client→server frame (short payloads only: the bench's "go" and pongs)."""
    mask = os.urandom(4)
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


# ---------------------------------------------------------------------------------------------
# Client side (one process per run)
# ---------------------------------------------------------------------------------------------

class Tally:
    """Messages per connection; each message's length is checked against what the server sent
    (and, with ``verify``, its bytes); with ``parse``, every message goes through fast_batch."""

    def __init__(self, conns: int, k: int, payloads: List[bytes], verify: bool, parse: Optional[Callable[[bytes], int]]):
        self.k, self.payloads, self.verify, self.parse = k, payloads, verify, parse
        self.count = [0] * conns
        self.nbytes = [0] * conns
        self.rows = [0] * conns

    def message(self, conn: int, data: bytes) -> bool:
        """Count one message of connection ``conn``; True when that connection has all k."""
        i = self.count[conn]
        want = self.payloads[i % len(self.payloads)]
        if len(data) != len(want) or (self.verify and data != want):
            raise AssertionError(f"connection {conn} message {i}: {len(data)} bytes, expected {len(want)}"
                                 + (" (content differs)" if len(data) == len(want) else ""))
        if self.parse is not None:
            self.rows[conn] += self.parse(data)
        self.count[conn] = i + 1
        self.nbytes[conn] += len(data)
        return i + 1 >= self.k


def make_parser(workdir: Path) -> Callable[[bytes], int]:
    """fast_batch as channel.py calls it (bytes, "live", receive time, known streams, a
    last-seen map). The captured messages come round again while a live channel's never repeat,
    so each message starts from what a live one meets: a fresh last-seen map (a repeat would be
    dropped) and an empty timestamp cache (every live timestamp is new)."""
    from pi_stream_source import parse as parse_module
    from pi_stream_source.pitime import now_micros

    known = {w: tuple(v) for w, v in json.loads((workdir / "known.json").read_text()).items()}
    fast_batch, ts_cache = parse_module.fast_batch, parse_module._TS_CACHE

    def parse(data: bytes) -> int:
        ts_cache.clear()
        got = fast_batch(data, "live", now_micros(), known, {})
        if got is None:
            raise AssertionError("fast_batch declined a plain channel message")
        return got[0].num_rows

    return parse


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not ru_maxrss: Linux carries that across
    exec, so a client would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_now() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def client_ssl(cafile: Optional[str]) -> Optional[ssl.SSLContext]:
    return ssl.create_default_context(cafile=cafile) if cafile else None


def run_ws_client_threads(url: str, conns: int, tally: Tally, cafile: Optional[str], clock: Dict[str, float],
        finish: Callable[[], None]) -> None:
    """(a) today's path: websocket-client, recv_data in one thread per connection."""
    import websocket

    sslopt = {"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": cafile} if cafile else {}
    socks = [websocket.create_connection(url, timeout=60, enable_multithread=True, skip_utf8_validation=True,
                                         sslopt=sslopt) for _ in range(conns)]
    clock["connected"] = time.perf_counter()
    clock["cpu_connected"] = cpu_now()
    errors: List[BaseException] = []

    def reader(i: int, ws: Any) -> None:
        try:
            while True:
                opcode, data = ws.recv_data()
                if opcode in (OP_TEXT, OP_BINARY) and tally.message(i, data):
                    return
        except BaseException as exc:    # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(i, ws), daemon=True) for i, ws in enumerate(socks)]
    for ws in socks:
        ws.send("go")
    for t in threads:
        t.start()
    deadline = time.monotonic() + CLIENT_TIMEOUT
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    clock["done"] = time.perf_counter()
    clock["cpu_done"] = cpu_now()
    if errors:
        raise errors[0]
    finish()


def run_ws_client_selector(url: str, conns: int, tally: Tally, cafile: Optional[str], clock: Dict[str, float],
        finish: Callable[[], None]) -> None:
    """(b) websocket-client opens each connection (upgrade, headers, proxy, TLS as today), then
    its socket is read without blocking by FrameDecoder, all connections in one selectors loop."""
    import websocket

    sslopt = {"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": cafile} if cafile else {}
    socks = [websocket.create_connection(url, timeout=60, enable_multithread=True, skip_utf8_validation=True,
                                         sslopt=sslopt) for _ in range(conns)]
    clock["connected"] = time.perf_counter()
    clock["cpu_connected"] = cpu_now()
    for ws in socks:
        ws.send("go")
    sel = selectors.DefaultSelector()
    scratch = bytearray(1 << 20)
    scratch_view = memoryview(scratch)
    for i, ws in enumerate(socks):
        ws.sock.setblocking(False)
        sel.register(ws.sock, selectors.EVENT_READ, (i, FrameDecoder(), isinstance(ws.sock, ssl.SSLSocket)))
    open_conns = conns
    deadline = time.monotonic() + CLIENT_TIMEOUT
    while open_conns:
        events = sel.select(timeout=max(0.0, deadline - time.monotonic()))
        if not events:
            raise TimeoutError(f"{open_conns} connections still reading after {CLIENT_TIMEOUT}s")
        for key, _ in events:
            i, decoder, tls = key.data
            sock = key.fileobj
            while True:
                # fill the scratch buffer, then decode once: a plain socket is drained by a short read;
                # a TLS socket hands over one record (≤16 KB) per call, so it is read until OpenSSL
                # wants more bytes from the kernel (nothing decrypted is left behind unseen by select)
                filled = 0
                while filled < len(scratch):
                    try:
                        n = sock.recv_into(scratch_view[filled:])
                    except (BlockingIOError, ssl.SSLWantReadError):
                        break
                    if n == 0:
                        raise ConnectionError(f"connection {i} closed by the server")
                    filled += n
                    if not tls and filled < len(scratch):
                        break
                for opcode, payload in decoder.feed(scratch_view[:filled]):
                    if opcode in (OP_TEXT, OP_BINARY):
                        if tally.message(i, payload):
                            sel.unregister(sock)
                            open_conns -= 1
                    elif opcode == OP_PING:
                        sock.setblocking(True)      # a pong is a few bytes: send it whole
                        sock.sendall(client_frame(OP_PONG, payload))
                        sock.setblocking(False)
                    elif opcode == OP_CLOSE:
                        raise ConnectionError(f"connection {i} closed by the server")
                if filled < len(scratch):
                    break
    clock["done"] = time.perf_counter()
    clock["cpu_done"] = cpu_now()
    finish()


async def _gather_bounded(factories: List[Callable[[], Any]], limit: int = 100) -> List[Any]:
    """Open connections concurrently, at most ``limit`` handshakes at a time."""
    sem = asyncio.Semaphore(limit)

    async def one(f: Callable[[], Any]) -> Any:
        async with sem:
            return await f()

    return await asyncio.gather(*(one(f) for f in factories))


def run_websockets(url: str, conns: int, tally: Tally, cafile: Optional[str], clock: Dict[str, float],
        finish: Callable[[], None]) -> None:
    """(c) websockets' asyncio client, every connection in one event loop."""
    from websockets.asyncio.client import connect

    async def main() -> None:
        ctx = client_ssl(cafile)
        kw = {"ssl": ctx} if ctx else {}
        socks = await _gather_bounded([
            (lambda: connect(url, max_size=None, compression=None, ping_interval=None, proxy=None,
                             open_timeout=60, **kw)) for _ in range(conns)])
        clock["connected"] = time.perf_counter()
        clock["cpu_connected"] = cpu_now()

        async def reader(i: int, ws: Any) -> None:
            await ws.send("go")
            while True:
                data = await ws.recv(decode=False)      # bytes, as channel.py wants them
                if tally.message(i, data):
                    return

        await asyncio.wait_for(asyncio.gather(*(reader(i, ws) for i, ws in enumerate(socks))), CLIENT_TIMEOUT)
        clock["done"] = time.perf_counter()
        clock["cpu_done"] = cpu_now()
        finish()

    asyncio.run(main())


def run_aiohttp(url: str, conns: int, tally: Tally, cafile: Optional[str], clock: Dict[str, float],
        finish: Callable[[], None]) -> None:
    """(d) aiohttp's ClientSession.ws_connect, every connection in one event loop."""
    import aiohttp

    async def main() -> None:
        ctx = client_ssl(cafile)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            socks = await _gather_bounded([
                (lambda: session.ws_connect(url, max_msg_size=0, compress=0, autoping=True, decode_text=False,
                                            ssl=ctx if ctx else True))
                for _ in range(conns)])
            clock["connected"] = time.perf_counter()
            clock["cpu_connected"] = cpu_now()

            async def reader(i: int, ws: Any) -> None:
                await ws.send_str("go")
                while True:
                    msg = await ws.receive()
                    if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                        if tally.message(i, msg.data):
                            return
                    elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        raise ConnectionError(f"connection {i}: {msg.type.name} {msg.data!r}")

            await asyncio.wait_for(asyncio.gather(*(reader(i, ws) for i, ws in enumerate(socks))), CLIENT_TIMEOUT)
            clock["done"] = time.perf_counter()
            clock["cpu_done"] = cpu_now()
            finish()                        # before the session closes C connections politely

    asyncio.run(main())


def run_picows(url: str, conns: int, tally: Tally, cafile: Optional[str], clock: Dict[str, float],
        finish: Callable[[], None]) -> None:
    """(e) picows, every connection in one event loop; picows hands over frames, so a fragmented
    message is joined here."""
    from picows import WSListener, WSMsgType, ws_connect

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        remaining = [conns]

        class Listener(WSListener):
            def __init__(self, i: int) -> None:
                self.i, self.parts = i, []

            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                if frame.msg_type not in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION):
                    return                  # pings are answered by picows (enable_auto_pong)
                if not frame.fin:
                    self.parts.append(frame.get_payload_as_bytes())
                    return
                data = frame.get_payload_as_bytes()
                if self.parts:
                    data = b"".join(self.parts + [data])
                    self.parts = []
                try:
                    if tally.message(self.i, data):
                        remaining[0] -= 1
                        if not remaining[0] and not done.done():
                            done.set_result(None)
                except BaseException as exc:
                    if not done.done():
                        done.set_exception(exc)

        ctx = client_ssl(cafile)
        pairs = await _gather_bounded([
            (lambda i=i: ws_connect(lambda: Listener(i), url, ssl_context=ctx, max_frame_size=MAX_MESSAGE,
                                    websocket_handshake_timeout=60)) for i in range(conns)])
        clock["connected"] = time.perf_counter()
        clock["cpu_connected"] = cpu_now()
        for transport, _ in pairs:
            transport.send(WSMsgType.TEXT, b"go")
        await asyncio.wait_for(done, CLIENT_TIMEOUT)
        clock["done"] = time.perf_counter()
        clock["cpu_done"] = cpu_now()
        finish()

    asyncio.run(main())


PROBE_LIBRARIES = ("websocket-client", "websockets", "aiohttp", "picows")
PROBE_TOKEN = "Bearer probe-token"


def _refusal(status: Optional[int], www_authenticate: Any, seen: Optional[str]) -> Dict[str, Any]:
    values = www_authenticate if isinstance(www_authenticate, list) else [www_authenticate] if www_authenticate else []
    return {"status": status, "www_authenticate": values, "seen_authorization": seen}


def _proxy_failure(exc: BaseException, password: str) -> Dict[str, Any]:
    text = f"{type(exc).__name__}: {exc}"
    status = getattr(getattr(exc, "response", None), "status_code", None) or getattr(exc, "status", None)
    return {"status": status or (407 if "407" in text else None), "error": text[:200], "password_in_error": password in text}


def probe(library: str, kind: str, url: str, cafile: Optional[str], proxy_port: int) -> Dict[str, Any]:
    """What a library does on the paths the source must keep, against the bench server:
    ``auth401`` — an upgrade with an Authorization header that the server refuses with 401 and two
    WWW-Authenticate challenges (Negotiate, Basic), as IIS does for Kerberos; ``proxy`` — wss:// to
    a host only the bench CONNECT proxy can resolve, with Basic proxy credentials and the private
    CA, then one message; ``proxy407`` — the same with a wrong proxy password."""
    password = PROXY_PASSWORD if kind == "proxy" else "wrong-" + PROXY_PASSWORD
    proxy_url = f"http://{PROXY_USER}:{password}@127.0.0.1:{proxy_port}"
    ctx = client_ssl(cafile)
    if library == "websocket-client":
        import websocket

        kw: Dict[str, Any] = {"timeout": 10, "skip_utf8_validation": True,
                              "sslopt": {"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": cafile} if cafile else {}}
        if kind == "auth401":
            try:
                websocket.create_connection(url, header=[f"Authorization: {PROBE_TOKEN}"], **kw)
            except websocket.WebSocketBadStatusException as exc:
                h = exc.resp_headers or {}
                return _refusal(exc.status_code, h.get("www-authenticate"), h.get("x-seen-authorization"))
            return {"error": "the upgrade was not refused"}
        try:        # as transport.websocket_kwargs() sets it up (no bypass list: 127.0.0.1 would skip the proxy)
            ws = websocket.create_connection(url, http_proxy_host="127.0.0.1", http_proxy_port=proxy_port,
                                             proxy_type="http", http_proxy_auth=(PROXY_USER, password),
                                             http_no_proxy=["no-proxy-bypass.invalid"], **kw)
        except Exception as exc:
            return _proxy_failure(exc, password)
        ws.send("go")
        return {"ok": True, "bytes": len(ws.recv_data()[1])}

    async def run() -> Dict[str, Any]:
        if library == "websockets":
            from websockets.asyncio.client import connect
            from websockets.exceptions import InvalidStatus

            if kind == "auth401":
                try:
                    await connect(url, additional_headers={"Authorization": PROBE_TOKEN}, proxy=None, open_timeout=10)
                except InvalidStatus as exc:
                    r = exc.response
                    return _refusal(r.status_code, r.headers.get_all("WWW-Authenticate"), r.headers.get("X-Seen-Authorization"))
                return {"error": "the upgrade was not refused"}
            try:
                ws = await connect(url, proxy=proxy_url, ssl=ctx, open_timeout=10, max_size=None, compression=None)
            except Exception as exc:
                return _proxy_failure(exc, password)
            await ws.send("go")
            return {"ok": True, "bytes": len(await ws.recv(decode=False))}
        if library == "aiohttp":
            import aiohttp

            async with aiohttp.ClientSession() as session:
                if kind == "auth401":
                    try:
                        await session.ws_connect(url, headers={"Authorization": PROBE_TOKEN})
                    except aiohttp.WSServerHandshakeError as exc:
                        return _refusal(exc.status, exc.headers.getall("WWW-Authenticate", []),
                                        exc.headers.get("X-Seen-Authorization"))
                    return {"error": "the upgrade was not refused"}
                try:
                    ws = await session.ws_connect(url, proxy=f"http://127.0.0.1:{proxy_port}", ssl=ctx,
                                                  proxy_auth=aiohttp.BasicAuth(PROXY_USER, password),
                                                  max_msg_size=0, decode_text=False)
                except Exception as exc:
                    return _proxy_failure(exc, password)
                await ws.send_str("go")
                return {"ok": True, "bytes": len((await ws.receive()).data)}
        from picows import WSHandshakeError, WSListener, WSMsgType, ws_connect

        if kind == "auth401":
            try:
                await ws_connect(WSListener, url, extra_headers={"Authorization": PROBE_TOKEN})
            except WSHandshakeError as exc:
                r = exc.response
                return _refusal(int(r.status), r.headers.getall("WWW-Authenticate", []), r.headers.get("X-Seen-Authorization"))
            return {"error": "the upgrade was not refused"}
        got = asyncio.get_running_loop().create_future()

        class First(WSListener):
            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                if frame.msg_type == WSMsgType.TEXT and not got.done():
                    got.set_result(len(frame.get_payload_as_bytes()))

        try:
            transport, _ = await ws_connect(First, url, ssl_context=ctx, proxy=proxy_url, max_frame_size=MAX_MESSAGE)
        except Exception as exc:
            return _proxy_failure(exc, password)
        transport.send(WSMsgType.TEXT, b"go")
        return {"ok": True, "bytes": await asyncio.wait_for(got, 10)}

    return asyncio.run(asyncio.wait_for(run(), 30))


RUNNERS = {"ws-client-threads": run_ws_client_threads, "ws-client-selector": run_ws_client_selector,
           "websockets": run_websockets, "aiohttp": run_aiohttp, "picows": run_picows}


def client_main(args: argparse.Namespace) -> None:
    """One run in this process; prints one JSON line."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    workdir = Path(args.workdir)
    payloads = load_payloads(workdir, args.set)
    parse = make_parser(workdir) if args.parse else None
    if parse is not None:
        parse(payloads[0])                  # first-call costs (decoder set-up, Arrow) stay off the clock
    tally = Tally(args.conns, args.k, payloads, args.verify, parse)
    clock: Dict[str, float] = {"start": time.perf_counter(), "cpu_start": cpu_now()}

    def finish() -> None:
        """Report and leave at once: no polite close of C connections (the server drops them)."""
        if min(tally.count) < args.k:
            raise AssertionError(f"{sum(tally.count)} of {args.conns * args.k} messages read before the timeout")
        print(json.dumps({
            "frames": sum(tally.count), "bytes": sum(tally.nbytes), "rows": sum(tally.rows),
            "connect_s": clock["connected"] - clock["start"],
            "connect_cpu_s": clock["cpu_connected"] - clock["cpu_start"],
            "read_s": clock["done"] - clock["connected"], "cpu_s": clock["cpu_done"] - clock["cpu_connected"],
            "maxrss_mb": peak_rss_mb(),
        }), flush=True)
        os._exit(0)

    RUNNERS[args.client](args.url, args.conns, tally, args.cafile, clock, finish)
    raise AssertionError("the client returned without a result")


# ---------------------------------------------------------------------------------------------
# Orchestration (the parent process)
# ---------------------------------------------------------------------------------------------

def client_env() -> Dict[str, str]:
    """The client's environment: our package first on the path; no proxy variables (a client
    that honours them would go through a proxy to 127.0.0.1)."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_one(variant: str, *, url: str, workdir: Path, streams: int, conns: int, k: int, cafile: Optional[Path],
            parse: bool, verify: bool, server_pid: int, query: str = "") -> Dict[str, Any]:
    import psutil

    cmd = [sys.executable, __file__, "--client", variant, "--url", f"{url}/ws?set={streams}&k={k}{query}",
           "--workdir", str(workdir), "--set", str(streams), "--conns", str(conns), "--k", str(k)]
    if cafile:
        cmd += ["--cafile", str(cafile)]
    if parse:
        cmd.append("--parse")
    if verify:
        cmd.append("--verify")
    server = psutil.Process(server_pid)
    before = server.cpu_times()
    t0 = time.perf_counter()
    row: Dict[str, Any] = {"variant": variant, "tls": bool(cafile), "streams": streams, "conns": conns, "k": k,
                           "parse": parse}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CLIENT_TIMEOUT + 30, env=client_env())
    except subprocess.TimeoutExpired:
        row["error"] = f"no result in {CLIENT_TIMEOUT + 30:.0f} s (killed)"
        return row
    after = server.cpu_times()
    row["process_s"] = round(time.perf_counter() - t0, 2)
    row["server_cpu_s"] = round((after.user + after.system) - (before.user + before.system), 3)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        row["error"] = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:300]
        return row
    got = json.loads(lines[-1])
    mb = got["bytes"] / 1e6
    row.update(got)
    row.update({"mb": round(mb, 2), "frames_per_s": round(got["frames"] / got["read_s"], 1),
                "mb_per_s": round(mb / got["read_s"], 1),
                "cpu_us_per_frame": round(got["cpu_s"] / got["frames"] * 1e6, 1),
                "cpu_ms_per_mb": round(got["cpu_s"] / mb * 1e3, 2),
                "cpu_util": round(got["cpu_s"] / got["read_s"], 2)})
    for key in ("connect_s", "connect_cpu_s", "read_s", "cpu_s", "maxrss_mb"):
        row[key] = round(row[key], 3)
    return row


def describe(row: Dict[str, Any]) -> str:
    name = f"({LETTER.get(row['variant'], 'f')}) {row['variant']}" + (" + parse" if row["parse"] else "")
    head = f"{name:34s} {'TLS' if row['tls'] else '   '} {row['streams']:>4} str C={row['conns']:<4} k={row['k']:<4}"
    if "error" in row:
        return f"{head} ERROR {row['error']}"
    return (f"{head} {row['frames']:>6} fr {row['mb']:>7.1f} MB {row['read_s']:6.2f} s  {row['frames_per_s']:>8,.0f} fr/s "
            f"{row['mb_per_s']:>6.1f} MB/s  CPU {row['cpu_s']:6.2f} s = {row['cpu_us_per_frame']:>7.1f} us/fr "
            f"{row['cpu_ms_per_mb']:>6.2f} ms/MB  server {row['server_cpu_s']:.2f} s  connect {row['connect_s']:.2f} s")


def run_probes(plain: str, tls_port: int, proxy_port: int, ca_file: Path) -> List[Dict[str, Any]]:
    """Every library through the auth and proxy probes (see ``probe``), each in its own process."""
    out = []
    for library in PROBE_LIBRARIES:
        for kind in ("auth401", "proxy", "proxy407"):
            url = (f"{plain}/ws?status=401&k=1" if kind == "auth401"
                   else f"wss://{PROXY_ONLY_HOST}:{tls_port}/ws?set=100&k=1")
            cmd = [sys.executable, __file__, "--probe", kind, "--library", library, "--url", url,
                   "--cafile", str(ca_file), "--proxy-port", str(proxy_port)]
            row: Dict[str, Any] = {"library": library, "kind": kind}
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=client_env())
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                row.update(json.loads(lines[-1]) if lines else
                           {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:200]})
            except subprocess.TimeoutExpired:
                row["error"] = "no answer in 60 s"
            print(f"probe  {library:16s} {kind:9s} {json.dumps({k: v for k, v in row.items() if k not in ('library', 'kind')})}",
                  flush=True)
            out.append(row)
    return out


def probe_table(probes: List[Dict[str, Any]]) -> List[str]:
    """The probes as a table: one row per library."""
    by = {(p["library"], p["kind"]): p for p in probes}
    lines = ["| library | Authorization header arrived | 401: WWW-Authenticate values the caller gets | CONNECT proxy "
             "(Basic credentials, wss://, private CA), one message | wrong proxy password |",
             "|---|---|---|---|---|"]
    for lib in PROBE_LIBRARIES:
        a, p, w = by.get((lib, "auth401"), {}), by.get((lib, "proxy"), {}), by.get((lib, "proxy407"), {})
        seen = ("yes" if a.get("seen_authorization") == PROBE_TOKEN else f"no ({a.get('seen_authorization')})"
                ) if "status" in a else f"? {a.get('error', '')}"
        chal = (f"{a['status']}: " + " / ".join(f"`{v}`" for v in a["www_authenticate"]) +
                (" (only the last of the two)" if len(a["www_authenticate"]) < 2 else "")) if "status" in a else "?"
        prox = f"ok ({p['bytes']:,} bytes)" if p.get("ok") else f"FAILED: {p.get('error', '?')}"
        wrong = ("connected (no check?)" if w.get("ok") else
                 f"{w.get('status') or 'no status'}: {w.get('error', '?')}"
                 + ("; **the password is in the error text**" if w.get("password_in_error") else ""))
        lines.append(f"| {lib} | {seen} | {chal} | {prox} | {wrong} |")
    return lines


def print_check(c: Dict[str, Any]) -> None:
    print(("ok     " if "error" not in c else "FAILED ") + c["what"] + (f": {c['error']}" if "error" in c else ""),
          flush=True)


def k_for(size: int, conns: int, target_mb: float) -> int:
    """Messages per connection so that a run moves about ``target_mb`` (at least one each)."""
    return max(1, round(target_mb * 1e6 / (size * conns)))


def versions() -> Dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("websocket-client", "websockets", "aiohttp", "picows", "aiofastnet", "msgspec", "pyarrow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


# What each library offers for the paths the source must keep (Basic/Bearer/Kerberos upgrade
# headers, the 401's WWW-Authenticate, a private CA, an HTTP CONNECT proxy with credentials),
# checked in each one's documentation and in the installed source (file:line at the versions above).
FEATURES = [
    ("websocket-client", "yes: `header=` list/dict on create_connection",
     "partly: `WebSocketBadStatusException.status_code`, `.resp_headers`, `.resp_body` (channel.py uses them "
     "today), but `resp_headers` is a dict that keeps only the LAST `WWW-Authenticate` header (_http.py "
     "`read_headers`; probe below)",
     "yes: `sslopt={'ca_certs': ...}` or `sslopt={'context': SSLContext}` (_http.py `_ssl_socket`)",
     "yes: `http_proxy_host/port`, `proxy_type='http'` sends CONNECT; `http_proxy_auth=(user, pw)` → Basic "
     "Proxy-Authorization (_http.py `_tunnel`); 407 → WebSocketProxyException"),
    ("websockets", "yes: `additional_headers=` on connect()",
     "yes: `InvalidStatus.response.status_code`, `.response.headers`, `.response.body` (exceptions.py)",
     "yes: `ssl=SSLContext` (passed to loop.create_connection)",
     "yes (since 15.0): `proxy='http://user:pw@host:port'` sends CONNECT with Basic Proxy-Authorization "
     "from the URL's user info (proxy.py); 407 → InvalidProxyStatus with the response; `proxy=True` "
     "(default) reads the environment's proxy variables"),
    ("aiohttp", "yes: `headers=` on ws_connect",
     "yes: `WSServerHandshakeError.status`, `.headers` (client.py ws_connect raises it with resp.headers)",
     "yes: `ssl=SSLContext` on ws_connect or on TCPConnector",
     "yes for wss:// (CONNECT, connector.py); `proxy=`, `proxy_auth=BasicAuth(...)`, `proxy_headers=`; "
     "a ws:// (plain) URL goes to the proxy as an absolute-form GET, not CONNECT"),
    ("picows", "yes: `extra_headers=` on ws_connect",
     "yes: `WSHandshakeError.response` (WSUpgradeResponse: status, headers), `.raw_header`, `.raw_body` (common.py)",
     "yes: `ssl_context=SSLContext` on ws_connect",
     "yes: `proxy='http://user:pw@host:port'` sends CONNECT with Basic Proxy-Authorization (proxy.py "
     "HTTPProxyConnectProtocol); socks4/5 and https:// proxies through python-socks"),
]
FEATURE_SOURCES = [
    "websocket-client: https://pypi.org/project/websocket-client/0.47.0 (“HTTP Proxy … using CONNECT method”), "
    "https://tessl.io/registry/tessl/pypi-websocket-client/files/docs/websocket-core.md (connect: header, sslopt); "
    "installed _http.py (_tunnel, _ssl_socket), _handshake.py, _exceptions.py",
    "websockets: https://websockets.readthedocs.io/en/stable/reference/asyncio/client.html (connect: "
    "additional_headers, proxy, ssl), https://websockets.readthedocs.io/en/14.1/faq/client.html (“How do I set HTTP "
    "headers?”), https://websockets.readthedocs.io/en/stable/topics/proxies.html (“authenticates automatically when the "
    "address of the proxy includes credentials”); installed exceptions.py (InvalidStatus.response), proxy.py",
    "aiohttp: its client reference page is not in the searchable docs; https://docs.aiohttp.org/en/v3.14.1/_modules/"
    "aiohttp/client_ws.html (decode_text); installed client.py (ws_connect: headers, proxy, proxy_auth, proxy_headers, "
    "ssl; WSServerHandshakeError with status and headers), connector.py (CONNECT for TLS through a proxy)",
    "picows: https://pypi.org/project/picows (its own benchmark runs every client on uvloop); its reference page is "
    "not in the searchable docs, so the installed docstrings: api.py ws_connect (extra_headers, ssl_context, proxy), "
    "common.py (WSHandshakeError.response), proxy.py (HTTPProxyConnectProtocol)",
]


def case_key(r: Dict[str, Any]) -> Tuple[str, bool, int, int, bool]:
    return r["variant"], r["tls"], r["streams"], r["conns"], r["parse"]


MEDIAN_FIELDS = ("frames", "mb", "read_s", "frames_per_s", "mb_per_s", "cpu_s", "cpu_us_per_frame", "cpu_ms_per_mb",
                 "cpu_util", "server_cpu_s", "connect_s", "connect_cpu_s", "maxrss_mb")


def aggregate(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per case: the median of its repetitions for every number, the CPU-per-MB range,
    and the repetitions that failed (with their error)."""
    cases: Dict[Tuple[str, bool, int, int, bool], List[Dict[str, Any]]] = {}
    for r in rows:
        cases.setdefault(case_key(r), []).append(r)
    out = []
    for key, group in cases.items():
        ok = [r for r in group if "error" not in r]
        row: Dict[str, Any] = dict(zip(("variant", "tls", "streams", "conns", "parse"), key))
        row.update(k=group[0]["k"], runs=len(ok), failed=len(group) - len(ok))
        if len(ok) < len(group):
            row["error"] = next(r["error"] for r in group if "error" in r)
        if ok:
            for f in MEDIAN_FIELDS:
                row[f] = statistics.median(r[f] for r in ok)
            row["cpu_ms_per_mb_range"] = [min(r["cpu_ms_per_mb"] for r in ok), max(r["cpu_ms_per_mb"] for r in ok)]
        out.append(row)
    return out


def cpu_per_mb_scores(rows: List[Dict[str, Any]], tls: bool = False) -> Dict[str, float]:
    """Per variant, the geometric mean of CPU ms per MB over its frame-reading cases, plain or
    over TLS (every set and C it ran; each case its median), so that no one case dominates."""
    vals: Dict[str, List[float]] = {}
    for r in aggregate([r for r in rows if r["tls"] == tls and not r["parse"]]):
        if r["runs"]:
            vals.setdefault(r["variant"], []).append(r["cpu_ms_per_mb"])
    return {v: math.exp(sum(map(math.log, xs)) / len(xs)) for v, xs in vals.items()}


def recommend(rows: List[Dict[str, Any]], probes: Optional[List[Dict[str, Any]]] = None) -> List[str]:
    """The choice by numbers: rank the one-loop variants by CPU per MB, plain and over TLS, and
    compare with today's path. All four libraries support the auth, TLS and proxy paths
    (FEATURES), so features do not decide; keeping websocket-client's tested handshake does, when
    (b) costs at most 15% more than the cheapest both plain and over TLS."""
    score = cpu_per_mb_scores(rows)
    if not score:
        return ["No run succeeded; no recommendation."]
    lines = ["CPU per MB of frame reading, geometric mean over the plain cases (medians; lower is better): "
             + ", ".join(f"({LETTER[v]}) {v} {x:.2f} ms/MB" for v, x in sorted(score.items(), key=lambda kv: kv[1]))
             + "."]
    loops = {v: x for v, x in score.items() if v in ONE_LOOP}
    best = min(loops, key=loops.get) if loops else None
    base = score.get("ws-client-threads")
    if best and base:
        lines.append(f"The cheapest one-loop reader, ({LETTER[best]}) {best}, takes {loops[best] / base:.0%} of today's "
                     f"CPU per MB ({base:.2f} → {loops[best]:.2f} ms/MB).")
    tls = cpu_per_mb_scores(rows, tls=True)
    if tls:
        lines.append("Over TLS: " + ", ".join(f"({LETTER[v]}) {v} {x:.2f} ms/MB"
                                             for v, x in sorted(tls.items(), key=lambda kv: kv[1])) + ".")
    cases = {case_key(r): r for r in aggregate(rows) if r["runs"]}
    reading = {key[:4]: r["cpu_ms_per_mb"] for key, r in cases.items() if not r["parse"]}
    shares = [(r, reading[key[:4]] / r["cpu_ms_per_mb"]) for key, r in cases.items() if r["parse"] and key[:4] in reading]
    if shares:
        lines.append(f"With parsing, (f) {shares[0][0]['variant']} + fast_batch: " + ", ".join(
            f"{r['streams']} streams C={r['conns']} {r['cpu_ms_per_mb']:.2f} ms/MB (frame reading {share:.0%} of it)"
            for r, share in shares) + "; parsing is the rest of the reader's CPU.")
        today = [(key, reading.get(("ws-client-threads",) + key[1:4]), r["cpu_ms_per_mb"] - reading[key[:4]])
                 for key, r in cases.items() if r["parse"] and key[:4] in reading]
        today = [(key, a, p) for key, a, p in today if a]
        if today:
            lines.append("Today's path, (a) frame reading + the same parsing, would spend "
                         + ", ".join(f"{a / (a + p):.0%} ({key[2]} streams C={key[3]})" for key, a, p in today)
                         + " of the reader's CPU on frame reading.")
    # PI Web API is served over HTTPS: (b) must be close to the cheapest over TLS too
    own, own_tls = loops.get("ws-client-selector"), tls.get("ws-client-selector")
    tls_loops = {v: x for v, x in tls.items() if v in ONE_LOOP}
    best_tls = min(tls_loops, key=tls_loops.get) if tls_loops else None
    if best and own:
        ratio = own / loops[best]
        ratio_tls = own_tls / tls_loops[best_tls] if own_tls and best_tls else 1.0
        if max(ratio, ratio_tls) <= 1.15:
            lines.append("Recommendation: (b) — keep websocket-client for the upgrade (Basic/Bearer/Kerberos headers, the "
                         "401 handling, the private CA, the CONNECT proxy: all already tested on that path) and "
                         "read frames from its socket in one selectors loop with a small decoder: "
                         + ("the cheapest" if ratio <= 1 else f"{ratio - 1:.0%} above the cheapest ({best})") + " plain, "
                         + ("the cheapest" if ratio_tls <= 1 else f"{ratio_tls - 1:.0%} above the cheapest ({best_tls})")
                         + " over TLS, and no new dependency.")
        else:
            other = best if ratio >= ratio_tls else best_tls
            lines.append(f"Recommendation: ({LETTER[other]}) {other} — (b) costs {ratio:.2f}× the cheapest plain and "
                         f"{ratio_tls:.2f}× over TLS; {other} supports the auth headers, the 401's headers, a private CA "
                         "and a CONNECT proxy (table below), but the upgrade path and its error mapping would have to be "
                         "redone and retested on it.")
    refused = next((p for p in probes or [] if p["library"] == "websocket-client" and p["kind"] == "auth401"), None)
    if refused and "status" in refused and len(refused["www_authenticate"]) < 2:
        lines.append("Caveat for (a) and (b) alike: websocket-client hands over only the last `WWW-Authenticate` header "
                     f"of a refused upgrade (the probe got {refused['www_authenticate']} of `Negotiate` and "
                     "`Basic realm=\"bench\"`), so a Kerberos challenge that comes first is not seen; the 401 "
                     "handling must not depend on it (or read the raw response itself). websockets, aiohttp and "
                     "picows give every value.")
    return lines


def write_report(out: Path, doc: Dict[str, Any]) -> Tuple[Path, Path]:
    stamp = doc["stamp"]
    jpath, mpath = out / f"{stamp}-ws-clients.json", out / f"{stamp}-ws-clients.md"
    jpath.write_text(json.dumps(doc, indent=2))
    m, a = doc["machine"], doc["args"]
    lines = [f"# WebSocket clients at the frame level ({stamp})", "",
             f"`bench/ws_client_bench.py --mb {a['mb']:g} --parse-mb {a['parse_mb']:g} --repeat {a['repeat']}` "
             f"({doc['runtime_s']:.0f} s); machine: {m['cpus']} CPUs, {m['mem_gb']} GB; load average (1, 5, 15 min) "
             f"before {m['load_before']}, after {m['load_after']} (other work shares the machine); "
             + ", ".join(f"{k} {v}" for k, v in doc["versions"].items()) + ".",
             "",
             "Server in its own process (asyncio, writes pre-built frames while the transport takes them); each client "
             "in its own process. Per run: C connections, k messages each (N = C × k), every message's length checked. "
             "Clock and CPU (user+sys of the whole client process, all threads) from the first \"go\" frame to the "
             "last message; the connect phase apart (\"connect s\": all C upgrades, sequential for websocket-client, "
             "100 at a time for the asyncio clients). MB = 10^6 bytes of message payload. Messages captured from the "
             "simulator's channel: " + ", ".join(f"{s} streams ≈ {doc['sizes'][str(s)]:,} bytes" for s in SETS) + ". "
             "Each case ran up to " + str(a["repeat"]) + " times; the table gives medians and the CPU-per-MB range; "
             "every run is in the .json. frames/s and MB/s are bounded by the server process and the 2 shared cores "
             "(a client CPU/wall below 1 waited for data): CPU per frame and per MB are the comparison. The asyncio "
             "clients run on the default asyncio loop (no uvloop; picows uses aiofastnet, installed with it). "
             f"(f) is the cheapest one-loop variant of the first repetition ({doc['best_one_loop']}); the TLS runs "
             f"take (a), (b) and the cheapest library of the first repetition ({doc['best_library']}). "
             "RSS: the client's peak (VmHWM).", "",
             "## Decoder and variant checks (fragmented messages, byte for byte)", ""]
    for r in doc["checks"]:
        lines.append(f"* {r['what']}: " + ("ok" if "error" not in r else f"FAILED: {r['error']}"))
    lines += ["", "## Numbers", "",
              "| variant | TLS | streams/msg | C | N frames | MB | read s | frames/s | MB/s | client CPU s | CPU µs/frame "
              "| CPU ms/MB (range) | CPU/wall | server CPU s | connect s | RSS MB | runs |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["cases"]:
        name = (f"(f) {r['variant']} + parse" if r["parse"] else f"({LETTER[r['variant']]}) {r['variant']}")
        tls = "yes" if r["tls"] else ""
        runs = f"{r['runs']}" + (f" ({r['failed']} failed: {r['error']})" if r["failed"] else "")
        if not r["runs"]:
            lines.append(f"| {name} | {tls} | {r['streams']} | {r['conns']} | {r['conns'] * r['k']} "
                         f"| | | | | | | | | | | | {runs} |")
            continue
        lo, hi = r["cpu_ms_per_mb_range"]
        lines.append(f"| {name} | {tls} | {r['streams']} | {r['conns']} | {r['frames']:.0f} | {r['mb']:.0f} "
                     f"| {r['read_s']:.2f} | {r['frames_per_s']:,.0f} | {r['mb_per_s']:,.0f} | {r['cpu_s']:.2f} "
                     f"| {r['cpu_us_per_frame']:,.1f} | {r['cpu_ms_per_mb']:.2f} ({lo:.2f}–{hi:.2f}) "
                     f"| {r['cpu_util']:.2f} "
                     f"| {r['server_cpu_s']:.2f} | {r['connect_s']:.2f} | {r['maxrss_mb']:.0f} | {runs} |")
    if doc["skipped"]:
        lines += ["", "Not run (time budget): " + "; ".join(doc["skipped"])]
    lines += ["", "## Auth, TLS and proxy support", "",
              "| library | custom upgrade headers (Basic/Bearer/Negotiate) | 401 response headers (WWW-Authenticate) "
              "| custom SSL context (private CA) | HTTP CONNECT proxy + Proxy-Authorization |",
              "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(f)} |" for f in FEATURES]
    if doc.get("probes"):
        lines += ["", "Probed here, each library in its own process against the bench server (a 401 with "
                  "`WWW-Authenticate: Negotiate` and `WWW-Authenticate: Basic realm=\"bench\"`, as IIS answers when "
                  "Kerberos and Basic are enabled; a CONNECT proxy that wants Basic credentials and alone can resolve "
                  f"`{PROXY_ONLY_HOST}`):", ""] + probe_table(doc["probes"])
    lines += ["", "Checked against: " + "; ".join(FEATURE_SOURCES) + ".",
              "", "## Recommendation", ""] + doc["recommendation"]
    mpath.write_text("\n".join(lines) + "\n")
    return jpath, mpath


def parent_main(args: argparse.Namespace) -> int:
    import psutil

    started = time.monotonic()
    load_before = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ws-bench-") as tmp:
        workdir = Path(tmp)
        capture(args.messages, workdir)
        sizes = {s: round(sum(map(len, load_payloads(workdir, s))) / args.messages) for s in SETS}
        ca_file, _, _ = make_tls(workdir)
        checks: List[Dict[str, Any]] = []
        try:
            checks += [{"what": w} for w in check_decoder(load_payloads(workdir, 1000) + load_payloads(workdir, 100))]
        except AssertionError as exc:
            checks.append({"what": "FrameDecoder in-process", "error": str(exc)})
        for c in checks:
            print_check(c)
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(workdir), "--lifetime", str(args.budget + 300)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=client_env())
        rows: List[Dict[str, Any]] = []
        probes: List[Dict[str, Any]] = []
        skipped: List[str] = []
        try:
            ports = json.loads(server.stdout.readline())
            plain, tls = f"ws://127.0.0.1:{ports['plain']}", f"wss://127.0.0.1:{ports['tls']}"
            common = dict(workdir=workdir, server_pid=server.pid)
            # 1. correctness: fragments of 100 bytes (7-bit lengths) with a ping between the first two,
            # of 16,000 bytes (16-bit), whole messages of both sets (16- and 64-bit lengths); over TLS too
            for what, streams, query, url, ca in (
                    ("7-bit fragments + ping", 100, "&frag=100&ping=1", plain, None),
                    ("16-bit fragments + ping", 1000, "&frag=16000&ping=1", plain, None),
                    ("whole 16-bit frames", 100, "", plain, None),
                    ("whole 64-bit frames", 1000, "", plain, None),
                    ("16-bit fragments + ping over TLS", 1000, "&frag=16000&ping=1", tls, ca_file)):
                variants = VARIANTS if "fragments" in what else ("ws-client-selector",)
                for v in variants:
                    r = run_one(v, url=url, streams=streams, conns=3, k=args.messages + 2, cafile=ca, parse=False,
                                verify=True, query=query, **common)
                    r["what"] = f"({LETTER[v]}) {v}: {what}"
                    checks.append(r)
                    print_check(r)

            probes = run_probes(plain, ports["tls"], ports["proxy"], ca_file)

            def run(variant: str, streams: int, conns: int, *, tls_on: bool = False, parse: bool = False) -> None:
                k = k_for(sizes[streams], conns, args.parse_mb if parse else args.mb)
                label = f"{variant}{' + parse' if parse else ''} {'TLS ' if tls_on else ''}{streams} streams C={conns}"
                label += f" (repetition {rep + 1})"
                if time.monotonic() - started > args.budget:
                    skipped.append(label)
                    return
                r = run_one(variant, url=tls if tls_on else plain, streams=streams, conns=conns, k=k,
                            cafile=ca_file if tls_on else None, parse=parse, verify=False, **common)
                r["rep"] = rep + 1
                rows.append(r)
                print(describe(r), flush=True)

            # repetitions outermost, so that the time budget cuts a last repetition, not a whole part
            best, best_lib = "", ""
            for rep in range(args.repeat):
                # 2. the matrix, variants interleaved per case so that load drift touches them all alike
                for conns in args.conns:
                    for streams in SETS:
                        for v in VARIANTS:
                            run(v, streams, conns)
                if not best:                # chosen once, on the first repetition's numbers
                    score = cpu_per_mb_scores(rows)
                    loops = {v: x for v, x in score.items() if v in ONE_LOOP}
                    libs = {v: x for v, x in loops.items() if v != "ws-client-selector"}
                    best = min(loops, key=loops.get) if loops else "ws-client-selector"
                    best_lib = min(libs, key=libs.get) if libs else "picows"
                # 3. (f): the best one-loop reader with parsing
                for conns in args.conns:
                    for streams in SETS:
                        run(best, streams, conns, parse=True)
                # 4. TLS: (a), (b), the best library
                for conns in args.conns:
                    for streams in SETS:
                        for v in dict.fromkeys(("ws-client-threads", "ws-client-selector", best_lib)):
                            run(v, streams, conns, tls_on=True)
        finally:
            server.stdin.close()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)
    doc = {"stamp": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H%MZ"),
           "machine": {"cpus": os.cpu_count(), "mem_gb": round(psutil.virtual_memory().total / 2**30, 1),
                       "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()]},
           "versions": versions(), "args": vars(args), "sizes": {str(k): v for k, v in sizes.items()},
           "checks": checks, "probes": probes, "cases": aggregate(rows), "rows": rows, "skipped": skipped,
           "best_one_loop": best, "best_library": best_lib,
           "runtime_s": round(time.monotonic() - started, 1)}
    doc["recommendation"] = recommend(rows, probes)
    jpath, mpath = write_report(out, doc)
    print("\n".join(doc["recommendation"]))
    print(f"{mpath}\n{jpath}\n{doc['runtime_s']} s")
    return 0 if all("error" not in r for r in checks) else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=400.0, help="payload MB per run (at least one message per connection)")
    ap.add_argument("--parse-mb", type=float, default=40.0, help="payload MB per run with parsing (f)")
    ap.add_argument("--conns", type=int, nargs="+", default=[1, 100, 1000])
    ap.add_argument("--repeat", type=int, default=3, help="repetitions of every case (the report gives medians)")
    ap.add_argument("--messages", type=int, default=8, help="distinct messages captured per set")
    ap.add_argument("--budget", type=float, default=270.0, help="seconds after which no new run starts")
    ap.add_argument("--out", default=str(Path(__file__).with_name("results")))
    ap.add_argument("--report", metavar="JSON", help="rewrite the .md of an earlier run from its .json (no run)")
    # internal: the server and client processes
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--lifetime", type=float, default=900.0, help=argparse.SUPPRESS)
    ap.add_argument("--client", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--set", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--k", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--cafile", help=argparse.SUPPRESS)
    ap.add_argument("--parse", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--verify", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--probe", choices=("auth401", "proxy", "proxy407"), help=argparse.SUPPRESS)
    ap.add_argument("--library", choices=PROBE_LIBRARIES, help=argparse.SUPPRESS)
    ap.add_argument("--proxy-port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(Path(args.serve), args.lifetime)
        return 0
    if args.report:
        doc = json.loads(Path(args.report).read_text())
        doc["cases"], doc["recommendation"] = aggregate(doc["rows"]), recommend(doc["rows"], doc.get("probes"))
        print(write_report(Path(args.report).parent, doc)[1])
        return 0
    if args.probe:
        print(json.dumps(probe(args.library, args.probe, args.url, args.cafile, args.proxy_port)), flush=True)
        return 0
    if args.client:
        args.conns = args.conns[0]
        client_main(args)
        return 0
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
