"""Receiving processes (option ``receiverProcesses``): a reader's channels run in child processes,
each with its own receiving loop (``wsloop.ReceiveLoop``), so a reader is not capped by one Python
thread (one loop parses ~460,000 values/s at a full core on the machine of ``bench/receive_bench.py``).

A child opens its share of the shards exactly as the reader would (``ChannelReceiver``: the same
upgrade, auth, TLS, proxy, cutoffs, reconnects and backoff) and sends what would have gone into each
shard's buffer to the reader over its stdout, in order: each connection's cutoff (an epoch) and each
message's rows (an Arrow record batch, already parsed). The reader appends them to its own
``ShardBuffer``s, so planning, offsets and exactly-once are the same code whichever process received.

Backpressure: the reader stops reading a child's pipe while ``maxBufferRecords`` is reached; the child
stops reading its sockets when what it has not sent yet passes a bound.

A child that dies (killed, out of memory) is like all its channels dropping at once: the reader starts
a new one for the same shards; each channel opens with a new cutoff and the planner reads the gap from
the archive, as for any reconnect. ``maxReconnectAttempts`` children in a row that die before sending
anything fail the query.

The child reads one spec (pickled, length-prefixed) from stdin (options with their secrets never go on
a command line or into the environment) and stops when stdin closes: the reader closing it, or the
reader's process ending.
"""
from __future__ import annotations

import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Any, BinaryIO, Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa

from .errors import PIConnectionError
from .schema import BUFFER_SCHEMA

log = logging.getLogger(__name__)

ROWS, EPOCH, STATUS = 1, 2, 3
HEADER = struct.Struct("!BiI")          # kind, shard, payload length
STATUS_EVERY = 0.5                       # seconds between a child's status messages
UNSENT_LIMIT = 32 << 20                  # bytes a child holds unsent before it stops reading sockets
#: a channel's running counters (``ChannelReceiver.metrics``) that the reader keeps across its children
COUNTERS = ("received", "reconnects", "failedAttempts", "malformedFrames", "valueErrors", "repeatsDropped",
            "unknownWebIds")


def auto_processes(cpus: Optional[int], shards: int) -> int:
    """``receiverProcesses=auto``: the reader's own loop (0) below 8 cores, where the rest of the
    driver (Spark's JVM, the planner, the tasks of a single-node cluster) needs the cores more than
    receiving does; from 8 cores one receiving process per 4 cores, at most one per shard."""
    cpus = cpus or 1
    return 0 if cpus < 8 else max(1, min(shards, cpus // 4))


def _read_exact(stream: BinaryIO, n: int) -> Optional[bytes]:
    data = stream.read(n)
    if data is None or len(data) < n:
        return None
    return data


class RemoteReceiver:
    """The reader's view of a channel that runs in a receiving process: what the reader reads of a
    ``ChannelReceiver`` (``since``, ``failure``, ``state``, ``metrics()``, ``value_rate()``…), as the
    child last reported it."""

    def __init__(self, shard: int, webids: List[str], buffer: Any, proc: "ReceiverProcess") -> None:
        self.shard, self.webids, self.buffer, self.proc = shard, webids, buffer, proc
        self.since = 0
        self.failure: Optional[BaseException] = None
        self.last_failure: Optional[str] = None
        self.state = "idle"
        self.retired: List[str] = []
        self._metrics: Dict[str, Any] = {}
        self._rate = 1.0
        self._base: Dict[str, int] = {}          # counters of the children that ended, so totals only grow
        self._connections = 0

    def __repr__(self) -> str:
        return f"RemoteReceiver(shard={self.shard}, tags={len(self.webids)}, state={self.state!r})"

    def metrics(self, lag: bool = True) -> Dict[str, Any]:
        m = {"tags": len(self.webids), "attempts": 0, "lagSeconds": None, "lastError": None, **self._metrics}
        for k in COUNTERS:
            m[k] = (m.get(k) or 0) + self._base.get(k, 0)
        m["state"] = self.state
        m["buffered"] = self.buffer.rows
        m["connections"] = self.buffer.epoch_count
        return m

    def value_rate(self) -> float:
        return self._rate

    def _update(self, st: Dict[str, Any]) -> None:
        self.state = st["state"]
        self._metrics = st["metrics"]
        self._rate = st["rate"]
        self.last_failure = st["lastFailure"]
        self.retired = st["retired"]
        if st.get("failure") is not None and self.failure is None:
            self.failure = _unpickle_error(st["failure"])

    def _child_ended(self) -> None:
        """The child running this channel ended: keep its counters, so the totals never go back."""
        for k in COUNTERS:
            self._base[k] = self._base.get(k, 0) + int(self._metrics.get(k) or 0)
        self._metrics = {}

    def start(self) -> None:                # the process starts its channels
        pass

    def stop(self) -> None:
        self.proc.stop()

    def join(self, timeout: Optional[float] = None) -> None:
        self.proc.join(timeout)


def _pickle_error(exc: BaseException) -> bytes:
    try:
        data = pickle.dumps(exc)
        pickle.loads(data)
        return data
    except Exception:   # an exception whose constructor does not take its args back: keep its text
        return pickle.dumps(PIConnectionError(f"{type(exc).__name__}: {exc}"))


def _unpickle_error(data: bytes) -> BaseException:
    try:
        exc = pickle.loads(data)
        return exc if isinstance(exc, BaseException) else PIConnectionError(str(exc))
    except Exception:
        return PIConnectionError("a channel failed in its receiving process (its error could not be read)")


class ReceiverProcess:
    """One child process running some of a reader's channels; its pipe is read by a thread of the
    reader that appends what comes into the shards' buffers."""

    def __init__(self, index: int, opts: Any, shards: List[Tuple[int, List[str], Dict[str, Any]]],
                 buffers: Dict[int, Any], budget: Any, initial: bool, element: Optional[str], run: str) -> None:
        self.index, self.opts, self.shards = index, opts, shards
        self.buffers, self.budget, self.initial, self.element, self.run = buffers, budget, initial, element, run
        self.receivers = {k: RemoteReceiver(k, webids, buffers[k], self) for k, webids, _ in shards}
        self.loop_metrics: Dict[str, Any] = {}
        self._loop_base = {"receiveMessages": 0, "receiveBytes": 0, "receiveCpuSeconds": 0.0}
        self.restarts = 0
        self._stopping = threading.Event()
        self._proc: Optional[subprocess.Popen] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"pi-receivers-{self.index}", daemon=True)
        self._spawn(self.initial)
        self._thread.start()

    def _spawn(self, initial: bool) -> None:
        spec = {"opts": self.opts, "shards": self.shards, "initial": initial, "element": self.element,
                "name": f"{self.run[:6]}-{self.index}", "logLevel": logging.getLogger("pi_stream_source").getEffectiveLevel()}
        # the package as this process imported it (a wheel, a checkout, a path Spark added)
        env = dict(os.environ)
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join([here] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        proc = subprocess.Popen([sys.executable, "-m", "pi_stream_source.receivers"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, close_fds=True, env=env)
        data = pickle.dumps(spec)
        assert proc.stdin is not None
        proc.stdin.write(struct.pack("!I", len(data)) + data)
        proc.stdin.flush()                  # stdin stays open: its end tells the child to stop
        self._proc = proc
        log.info("receiving process %d (pid %d): %d channels", self.index, proc.pid, len(self.shards))

    def _run(self) -> None:
        failed_in_a_row = 0
        while True:
            got = self._pump()
            proc = self._proc
            assert proc is not None
            try:
                code = proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            for rec in self.receivers.values():
                rec._child_ended()
            for k in self._loop_base:
                self._loop_base[k] += self.loop_metrics.get(k) or 0
            self.loop_metrics = {}
            if self._stopping.is_set() or any(r.failure is not None for r in self.receivers.values()):
                break
            failed_in_a_row = 0 if got else failed_in_a_row + 1
            budget = self.opts.max_reconnect_attempts
            if budget and failed_in_a_row >= budget:
                err = PIConnectionError(
                    f"receiving process {self.index} (channels {self.shards[0][0]}..{self.shards[-1][0]}) ended "
                    f"{failed_in_a_row} times in a row before receiving anything (last exit code {code}; option "
                    f"maxReconnectAttempts={budget})")
                log.error("%s", err)
                for rec in self.receivers.values():
                    rec.failure, rec.state = err, "failed"
                break
            self.restarts += 1
            log.warning("receiving process %d (pid %s) ended (exit code %s); starting it again: its %d channels "
                        "reconnect and their gaps are read from the archive", self.index, proc.pid, code, len(self.shards))
            for rec in self.receivers.values():
                rec.state = "connecting"
            self._stopping.wait(min(self.opts.reconnect_backoff_max, self.opts.reconnect_backoff * 2 ** failed_in_a_row))
            if self._stopping.is_set():
                break
            try:
                self._spawn(False)
            except OSError as exc:
                err = PIConnectionError(f"receiving process {self.index} could not be started again ({exc})")
                for rec in self.receivers.values():
                    rec.failure, rec.state = err, "failed"
                break
        for rec in self.receivers.values():
            if rec.state != "failed":
                rec.state = "stopped"

    def _pump(self) -> bool:
        """Read the child's pipe until it ends; True when anything came."""
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        out = proc.stdout
        got = False
        while True:
            self.budget.wait_for_room(self._stopping)
            head = _read_exact(out, HEADER.size)
            if head is None:
                return got
            kind, shard, size = HEADER.unpack(head)
            payload = _read_exact(out, size)
            if payload is None:
                return got
            got = True
            if kind == ROWS:
                self.buffers[shard].append(pa.ipc.read_record_batch(pa.py_buffer(payload), BUFFER_SCHEMA))
            elif kind == EPOCH:
                cutoff, since = pickle.loads(payload)
                rec = self.receivers[shard]
                if not rec.since:                   # the first connection of this run (not of a restarted child)
                    rec.since = since
                rec.state = "open"
                self.buffers[shard].new_epoch(np.frombuffer(cutoff, dtype=np.int64).copy())
            elif kind == STATUS:
                doc = pickle.loads(payload)
                self.loop_metrics = doc["loop"]
                for k, st in doc["shards"].items():
                    self.receivers[k]._update(st)

    def metrics(self) -> Dict[str, Any]:
        m = dict(self._loop_base)
        for k, v in self.loop_metrics.items():
            if v is not None and k in m:
                m[k] += v
        return m

    def stop(self) -> None:
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass

    def join(self, timeout: Optional[float] = None) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                proc.wait(timeout or 5)
            except subprocess.TimeoutExpired:
                proc.kill()


# -- the child ------------------------------------------------------------------------------------
class _Sender:
    """The child's one writer to the reader: frames queue here (in order) and a thread writes them;
    the receiving loop waits for room (``wait_for_room``, as for the reader's buffer budget) while more
    than ``UNSENT_LIMIT`` bytes are unsent."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.cond = threading.Condition()
        self.queue: deque = deque()
        self.unsent = 0
        self.broken = threading.Event()

    def send(self, kind: int, shard: int, payload: Any) -> None:     # bytes, or a pa.Buffer
        with self.cond:
            self.queue.append(HEADER.pack(kind, shard, len(payload)))
            self.queue.append(payload)
            self.unsent += len(payload)
            self.cond.notify_all()

    def wait_for_room(self, stop: threading.Event) -> None:
        with self.cond:
            while self.unsent >= UNSENT_LIMIT and not stop.is_set() and not self.broken.is_set():
                self.cond.wait(0.2)

    def run(self, stop: threading.Event) -> None:
        while True:
            with self.cond:
                while not self.queue and not stop.is_set():
                    self.cond.wait(0.5)
                if not self.queue:
                    return
                items = list(self.queue)
                self.queue.clear()
            size = sum(len(item) for item in items[1::2])
            try:
                self.out.write(b"".join(items))            # one write for what queued meanwhile
                self.out.flush()
            except (OSError, ValueError):           # the reader is gone
                self.broken.set()
                stop.set()
                return
            with self.cond:
                self.unsent -= size
                self.cond.notify_all()


class _ForwardBuffer:
    """Stands in for a ``ShardBuffer`` in the child: rows and epochs go to the reader."""

    def __init__(self, shard: int, sender: _Sender) -> None:
        self.shard, self.sender, self.budget = shard, sender, sender
        self.rows = 0
        self.epoch_count = 0
        self.receiver: Any = None

    def append(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows:
            self.sender.send(ROWS, self.shard, batch.serialize())     # a pa.Buffer: joined once when sent

    def new_epoch(self, cutoff: np.ndarray) -> None:
        rec = self.receiver
        self.epoch_count += 1
        self.sender.send(EPOCH, self.shard, pickle.dumps((np.asarray(cutoff, dtype=np.int64).tobytes(), rec.since)))


def _status(receivers: List[Any], loop: Any) -> bytes:
    shards = {}
    for rec in receivers:
        m = rec.metrics()
        shards[rec.shard] = {"state": rec.state, "metrics": m, "rate": rec.value_rate(), "lastFailure": rec.last_failure,
                             "retired": list(rec.retired),
                             "failure": _pickle_error(rec.failure) if rec.failure is not None else None}
    return pickle.dumps({"shards": shards, "loop": loop.metrics() if loop is not None else {}})


def child_main() -> int:
    from .channel import ChannelReceiver, freeze_gc
    from .rest import PIRestClient
    from .wsloop import ReceiveLoop

    stdin, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr                        # nothing else may write into the pipe to the reader
    head = _read_exact(stdin, 4)
    if head is None:
        return 1
    spec = pickle.loads(_read_exact(stdin, struct.unpack("!I", head)[0]) or b"")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [receivers {spec['name']}] %(name)s: %(message)s"))
    ours = logging.getLogger("pi_stream_source")     # as verbose as the reader's; other libraries: warnings
    ours.setLevel(spec["logLevel"])
    ours.addHandler(handler)
    ours.propagate = False
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    opts = spec["opts"]
    stop = threading.Event()
    sender = _Sender(out)
    loop = ReceiveLoop(sender, name=f"pi-receive-{spec['name']}") if opts.receiver == "loop" else None
    rest = PIRestClient(opts.url, opts.credentials, opts.ca_bundle, opts.connect_timeout,
                        retry_for=opts.rest_retry_timeout, proxy=opts.proxy)
    receivers = []
    for shard, webids, known in spec["shards"]:
        buf = _ForwardBuffer(shard, sender)
        rec = ChannelReceiver(shard, webids, opts, buf, rest, initial_values=spec["initial"], element=spec["element"],
                              known=known, loop=loop)
        buf.receiver = rec
        receivers.append(rec)
    writer = threading.Thread(target=sender.run, args=(stop,), name="pi-receivers-send", daemon=True)
    writer.start()
    if loop is not None:
        loop.start()
    for rec in receivers:
        rec.start()
    freeze_gc()

    def report() -> None:
        while not stop.wait(STATUS_EVERY):
            sender.send(STATUS, -1, _status(receivers, loop))

    threading.Thread(target=report, name="pi-receivers-status", daemon=True).start()

    def watch() -> None:                           # stdin's end: the reader stopped or is gone
        try:
            while stdin.read(4096):
                pass
        except (OSError, ValueError):
            pass
        stop.set()

    threading.Thread(target=watch, name="pi-receivers-stdin", daemon=True).start()
    while not stop.wait(0.5):
        if all(not r.is_alive() for r in receivers):
            break                                  # every channel ended (failed): the last status says why
    for rec in receivers:
        rec.stop()
    if loop is not None:
        loop.stop()
    deadline = time.monotonic() + 5
    for rec in receivers:
        rec.join(max(0.1, deadline - time.monotonic()))
    if not sender.broken.is_set():
        sender.send(STATUS, -1, _status(receivers, loop))
        stop.set()
        writer.join(10)
    rest.close()
    return 0


if __name__ == "__main__":
    code = child_main()
    sys.stderr.flush()
    os._exit(code)
