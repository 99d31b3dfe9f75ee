"""One receiving loop for every channel of a reader: a ``selectors`` loop reads the frames of all
open channels from their sockets, so there is no thread per channel fighting for the GIL.

websocket-client still opens each channel (the upgrade with its auth headers and 401 challenges,
TLS with a private CA, the CONNECT proxy): its handshake reads the response line by line, so no
frame byte is left in its buffers and the socket can be handed to this loop as it is. The loop
decodes the frames itself (RFC 6455 §5.2: server frames are unmasked; continuation frames; ping →
pong) and gives each complete message to its channel (``ChannelReceiver._on_message``), in order.
The channel's thread only connects, waits for its connection to end here, and reconnects.

Profile that motivated it (10,000 tags in 99 channels, one message per channel per second): a
thread per channel spent 1.3 ms of CPU per 100-value message, half of it in the kernel (threads
woken together contend for the GIL); at 100,000 tags the receiving process sat at 130–150 % CPU for
46,000 values/s.
"""
from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import ssl
import struct
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import websocket

from .errors import PIConnectionError

log = logging.getLogger(__name__)

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
READ_SIZE = 1 << 18
#: a message larger than this ends the connection (PI's messages are far smaller; a broken length
#: field must not make the loop allocate gigabytes)
MAX_MESSAGE = 1 << 30


class FrameError(Exception):
    """The byte stream is not valid WebSocket framing."""


class FrameDecoder:
    """Bytes in, complete messages out: ``feed(data)`` → [(opcode, payload)], payload as bytes.
    Control frames (close, ping, pong) come out as they arrive, even between the fragments of a
    message."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._parts: List[bytes] = []
        self._opcode: Optional[int] = None
        self._size = 0
        self.error: Optional[FrameError] = None

    def feed(self, data: bytes) -> List[Tuple[int, bytes]]:
        """The messages completed by ``data``. At broken framing, the messages before it are
        returned and ``error`` is set; the decoder takes nothing more after that."""
        if self.error is not None:
            return []
        out: List[Tuple[int, bytes]] = []
        try:
            self._feed(data, out)
        except FrameError as exc:
            self.error = exc
        return out

    def _feed(self, data: bytes, out: List[Tuple[int, bytes]]) -> None:
        buf = self._buf
        buf += data
        pos, end = self._pos, len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            fin, opcode, masked, length = b0 & 0x80, b0 & 0x0F, b1 & 0x80, b1 & 0x7F
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = struct.unpack_from("!H", buf, pos + 2)[0]
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = struct.unpack_from("!Q", buf, pos + 2)[0]
                head = 10
            if length > MAX_MESSAGE:
                raise FrameError(f"frame of {length} bytes (more than {MAX_MESSAGE})")
            mask = b""
            if masked:                     # servers must not mask; decoded anyway, as websocket-client does
                if end - pos < head + 4:
                    break
                mask = bytes(buf[pos + head:pos + head + 4])
                head += 4
            if end - pos < head + length:
                break
            payload = bytes(buf[pos + head:pos + head + length])
            pos += head + length
            if mask:
                payload = websocket.ABNF.mask(mask, payload)
            if opcode >= 0x8:                              # control frame: never fragmented
                if not fin or length > 125:
                    raise FrameError(f"bad control frame (opcode {opcode:#x}, {length} bytes)")
                out.append((opcode, payload))
                continue
            if opcode == OP_CONT:
                if self._opcode is None:
                    raise FrameError("continuation frame without a message to continue")
            elif opcode in (OP_TEXT, OP_BINARY):
                if self._opcode is not None:
                    raise FrameError("new message before the last one's final frame")
                self._opcode = opcode
            else:
                raise FrameError(f"unknown opcode {opcode:#x}")
            self._size += length
            if self._size > MAX_MESSAGE:
                raise FrameError(f"message of more than {MAX_MESSAGE} bytes")
            if fin:
                if self._parts:
                    self._parts.append(payload)
                    payload = b"".join(self._parts)
                    self._parts = []
                out.append((self._opcode, payload))
                self._opcode, self._size = None, 0
            else:
                self._parts.append(payload)
        if pos:
            if pos == end:
                buf.clear()
                pos = 0
            elif pos > READ_SIZE:                          # compact now and then, not on every frame
                del buf[:pos]
                pos = 0
        self._pos = pos


class _Connection:
    def __init__(self, receiver: Any, ws: websocket.WebSocket, stall_timeout: float) -> None:
        self.receiver, self.ws, self.sock = receiver, ws, ws.sock
        self.decoder = FrameDecoder()
        self.stall_timeout = stall_timeout
        self.last_rx = time.monotonic()
        self.fd = -1
        self.done = threading.Event()
        self.error: Optional[BaseException] = None


class ReceiveLoop(threading.Thread):
    """Reads every open channel of one reader in one thread. ``serve(receiver, ws)`` is called by a
    channel's own thread once its connection is open: it blocks until the connection ends and
    raises what ended it (``PIConnectionError`` for a lost, closed or stalled connection; whatever
    the channel's message handling raised), as the thread-per-channel path did."""

    def __init__(self, budget: Any = None, name: str = "pi-receive") -> None:
        super().__init__(name=name, daemon=True)
        self.budget = budget
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._pending: List[_Connection] = []
        self._lock = threading.Lock()
        self._conns: Dict[int, _Connection] = {}
        self._stopping = threading.Event()
        # held by the loop while it handles what one select() found, and by the reader while it
        # plans a batch (``paused``): planning makes thousands of short numpy/Arrow calls that
        # each give up the GIL, and getting it back from a busy loop thread each time made a plan
        # of 1,000 channels take ~1 s instead of ~0.15 s. Paused, the loop waits on a lock (no
        # GIL) and the kernel's socket buffers hold the frames.
        self._gate = threading.Lock()
        self._resume = threading.Event()           # cleared while the reader waits for, or holds, the gate
        self._resume.set()
        self.messages = 0
        self.bytes = 0

    # -- called by channel threads ------------------------------------------------------------
    def serve(self, receiver: Any, ws: websocket.WebSocket, stopping: threading.Event) -> None:
        ws.sock.setblocking(False)
        conn = _Connection(receiver, ws, receiver.opts.stall_timeout)
        with self._lock:
            if self._stopping.is_set():
                return
            self._pending.append(conn)
        self._wake()
        # the loop ends every connection when it stops, so this only guards against a loop that died
        # without doing so; a short wait here woke 1,000 channel threads twice a second, each taking
        # the GIL from the planner (a plan of 1,000 channels took 4 s in the stream, 1.3 s alone)
        while not conn.done.wait(5.0):
            if self._stopping.is_set() or not self.is_alive():
                conn.error = conn.error or PIConnectionError("the receiving loop stopped")
                break
        if stopping.is_set():
            return
        if conn.error is not None:
            raise conn.error

    def metrics(self) -> Dict[str, Any]:
        cpu = None
        if self.ident is not None and self.is_alive() and hasattr(time, "pthread_getcpuclockid"):
            try:
                cpu = round(time.clock_gettime(time.pthread_getcpuclockid(self.ident)), 3)
            except OSError:                 # the thread ended in between
                pass
        return {"receiveMessages": self.messages, "receiveBytes": self.bytes, "receiveCpuSeconds": cpu}

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """``with loop.paused():`` no frame is handled inside (see ``_gate``). The loop would take
        the lock back at once (a lock is not fair), so it first waits for the pause to end."""
        self._resume.clear()
        try:
            with self._gate:
                yield
        finally:
            self._resume.set()

    def stop(self) -> None:
        self._stopping.set()
        self._resume.set()
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):      # already woken (buffer full) or closed: nothing to do
            pass

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> None:
        next_check = time.monotonic() + 1.0
        carry: List[Tuple[Any, int]] = []
        try:
            while not self._stopping.is_set():
                if self.budget is not None:
                    self.budget.wait_for_room(self._stopping)     # backpressure: stop reading every socket
                ready = self._sel.select(timeout=0.5)
                # sockets left unread by the last round come first (fair: a round cut short by a
                # pause must not leave the same sockets unread again and again until they stall)
                if carry:
                    first = {key.fd for key, _ in carry}
                    events = carry + [e for e in ready if e[0].fd not in first]
                else:
                    events = ready
                carry = []
                self._resume.wait()             # the reader asked for a pause: let it have the gate first
                with self._gate:
                    for i, (key, _) in enumerate(events):
                        if not self._resume.is_set():
                            # the reader waits to plan: it gets the gate now, not after every ready
                            # socket (a round over 1,000 channels with full kernel buffers parsed for
                            # seconds: latestOffset took 4 s at 100,000 tags, its planning 1 s)
                            carry = events[i:]
                            break
                        conn = key.data
                        if conn is None:
                            self._take_new()
                        elif self._conns.get(conn.fd) is conn:   # not ended since it was found ready
                            self._read(conn)
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + 1.0
                    late = [c for c in self._conns.values() if now - c.last_rx > c.stall_timeout]
                    if late:
                        # stalled = nothing came for stallTimeout; a socket with bytes waiting (left
                        # by a round cut short, or read early in a long round, or while the loop
                        # waited for room in the buffer) is not
                        waiting = {key.fd for key, _ in carry} | {key.fd for key, _ in self._sel.select(0)}
                        for conn in late:
                            if conn.fd not in waiting:
                                self._end(conn, PIConnectionError(
                                    f"no message or heartbeat for {conn.stall_timeout:g}s (stalled)"))
        finally:
            for conn in list(self._conns.values()) + self._pending:
                self._end(conn, PIConnectionError("the receiving loop stopped"))
            self._sel.close()
            self._wake_r.close()
            self._wake_w.close()

    def _take_new(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        with self._lock:
            new, self._pending = self._pending, []
        for conn in new:
            try:
                self._sel.register(conn.sock, selectors.EVENT_READ, conn)
            except (ValueError, OSError) as exc:            # closed before it got here
                conn.error = PIConnectionError(f"connection lost ({type(exc).__name__})")
                conn.done.set()
                continue
            conn.fd = conn.sock.fileno()
            self._conns[conn.fd] = conn
            conn.last_rx = time.monotonic()
            self._read(conn)                                  # bytes may have come before registration

    def _end(self, conn: _Connection, error: Optional[BaseException]) -> None:
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        if self._conns.get(conn.fd) is conn:
            del self._conns[conn.fd]
        try:
            conn.sock.settimeout(5)                           # for the channel's thread: close() reads and writes
        except OSError:
            pass
        conn.error = conn.error or error
        conn.done.set()

    def _recv(self, sock: Any) -> bytes:
        data = sock.recv(READ_SIZE)
        if data and isinstance(sock, ssl.SSLSocket):
            # a TLS socket gives one record (<= 16 KB) a call: drain what is there now (up to
            # READ_SIZE, so one busy channel cannot hold the loop), decrypted or still in the kernel;
            # one record a wakeup cost ~40 % more CPU per MB (bench/ws_client_bench.py)
            more, size = [data], len(data)
            while size < READ_SIZE:
                try:
                    chunk = sock.recv(READ_SIZE - size)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    break
                if not chunk:
                    break                                   # EOF: the next wakeup reads it as such
                more.append(chunk)
                size += len(chunk)
            data = b"".join(more)
        return data

    def _read(self, conn: _Connection) -> None:
        try:
            data = self._recv(conn.sock)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError, InterruptedError):
            return
        except (OSError, ValueError) as exc:
            self._end(conn, PIConnectionError(f"connection lost ({type(exc).__name__})"))
            return
        if not data:
            self._end(conn, PIConnectionError("connection lost (closed without a close frame)"))
            return
        conn.last_rx = time.monotonic()
        self.bytes += len(data)
        for opcode, payload in conn.decoder.feed(data):
            if opcode in (OP_TEXT, OP_BINARY):
                self.messages += 1
                try:
                    conn.receiver._on_message(payload)
                except BaseException as exc:        # the channel's thread raises it, as before
                    self._end(conn, exc)
                    return
            elif opcode == OP_PING:
                try:
                    conn.sock.setblocking(True)
                    conn.sock.settimeout(5)
                    conn.ws.pong(payload)
                    conn.sock.setblocking(False)
                except (OSError, websocket.WebSocketException) as exc:
                    self._end(conn, PIConnectionError(f"connection lost ({type(exc).__name__})"))
                    return
            elif opcode == OP_CLOSE:
                self._end(conn, PIConnectionError("closed by server"))
                return
        if conn.decoder.error is not None:
            self._end(conn, PIConnectionError(f"bad WebSocket framing from the server: {conn.decoder.error}"))
