"""One PI Web API channel (a WebSocket) for one shard of tags, with reconnect and gap fill."""
from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import websocket

from .errors import PIAuthError, PIConnectionError, PIStreamError, PITLSError
from .options import SourceOptions
from .parse import Columns, ParseStats, fast_batch, parse_message, parse_streams
from .pitime import format_ts, now_micros, parse_ts
from .rest import PIRestClient, error_from_status, page_for_span
from .transport import tls_error_message

log = logging.getLogger(__name__)


def channel_url(opts: SourceOptions, webids: List[str], initial: bool = False,
                element: Optional[str] = None) -> str:
    """``streamsets/channel?webId=…`` for a shard of streams, or ``streamsets/{element}/channel``
    for the attributes of an AF element."""
    params = [] if element else ["webId=" + quote(w, safe="") for w in webids]
    if opts.heartbeat_rate > 0:
        params.append(f"heartbeatRate={opts.heartbeat_rate}")
    if initial:
        params.append("includeInitialValues=true")
    path = f"streamsets/{quote(element, safe='')}/channel" if element else "streamsets/channel"
    return f"{opts.ws_url}/{path}?{'&'.join(params)}"


def shard_webids(opts: SourceOptions, webids: List[str]) -> List[List[str]]:
    """Split the streams into shards of at most ``tagsPerChannel`` whose channel URL stays under
    ``maxUrlLength``. Deterministic: the same options give the same shards."""
    shards: List[List[str]] = []
    current: List[str] = []
    length = len(channel_url(opts, [], True))
    for w in webids:
        add = len("&webId=") + len(quote(w, safe=""))
        if current and (len(current) >= opts.tags_per_channel or length + add > opts.max_url_length):
            shards.append(current)
            current, length = [], len(channel_url(opts, [], True))
        current.append(w)
        length += add
    if current:
        shards.append(current)
    return shards


class ShardBuffer:
    """Rows of one shard in arrival order, numbered by a sequence that only grows in a run."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.chunks: List[Tuple[int, pa.RecordBatch]] = []   # (seq of first row, rows)
        self.next_seq = 0
        self.rows = 0

    def append(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        with self.lock:
            self.chunks.append((self.next_seq, batch))
            self.next_seq += batch.num_rows
            self.rows += batch.num_rows

    def slice(self, start: int, end: int) -> List[pa.RecordBatch]:
        """Rows with sequence in [start, end)."""
        out = []
        with self.lock:
            for first, batch in self.chunks:
                last = first + batch.num_rows
                if last <= start or first >= end:
                    continue
                lo, hi = max(start, first) - first, min(end, last) - first
                out.append(batch.slice(lo, hi - lo))
        return out

    def trim(self, upto: int) -> None:
        """Forget rows with sequence < ``upto`` (committed by Spark)."""
        with self.lock:
            kept = []
            for first, batch in self.chunks:
                last = first + batch.num_rows
                if last <= upto:
                    self.rows -= batch.num_rows
                elif first < upto:
                    self.rows -= upto - first
                    kept.append((upto, batch.slice(upto - first)))
                else:
                    kept.append((first, batch))
            self.chunks = kept
            self.lock.notify_all()

    def wait_for_room(self, limit: int, stop: threading.Event) -> None:
        with self.lock:
            while self.rows >= limit and not stop.is_set():
                self.lock.wait(0.2)


def max_timestamp_per_tag(batch: pa.RecordBatch) -> Tuple[List[str], List[Optional[int]]]:
    """(WebIDs, newest timestamp of each) over the rows of ``batch``."""
    table = pa.table({"w": batch.column(0), "t": batch.column(3)}).group_by("w").aggregate([("t", "max")])
    return table.column("w").to_pylist(), table.column("t_max").to_pylist()


class ChannelReceiver(threading.Thread):
    """Keeps one channel open; parses each message into the shard's buffer. After a reconnect it
    fills the gap from ``streamsets/recorded`` (from each tag's newest timestamp) before taking
    live values again, dropping live values the archive already gave."""

    def __init__(self, shard: int, webids: List[str], opts: SourceOptions, buffer: ShardBuffer,
                 rest: PIRestClient, initial_values: bool = False, element: Optional[str] = None,
                 known: Optional[Dict[str, Tuple[Optional[str], Optional[str]]]] = None) -> None:
        super().__init__(name=f"pi-channel-{shard}", daemon=True)
        self.shard, self.webids, self.opts, self.buffer = shard, webids, opts, buffer
        self.rest, self.initial_values, self.element = rest, initial_values, element
        self.known = dict(known) if known else {w: (None, None) for w in webids}
        self.connected_at: Optional[int] = None   # when the first channel opened (µs): the run's "since"
        self.since = 0                            # earliest cutoff of the first connection (0: not open yet)
        self.last_seen: Dict[str, Tuple] = {}
        self.hwm: Dict[str, int] = {}           # newest timestamp taken per tag (micros)
        self.stats = ParseStats()
        self.state = "idle"
        self.reconnects = 0
        self.gap_fills = 0
        self.gap_values = 0
        self.last_message_at: Optional[float] = None
        self.failure: Optional[BaseException] = None
        self._stopping = threading.Event()
        self._ws: Optional[websocket.WebSocket] = None
        self._sent_headers: Dict[str, str] = {}
        self._snapshot_next = False
        self.bridged = 0
        self.since_by_tag: Dict[str, int] = {}
        self.cutoff: Dict[str, int] = {}
        self._cutoff_arrays: Tuple[pa.Array, pa.Array] = (pa.array([], pa.string()), pa.array([], pa.int64()))
        self._cutoff_max = -1
        self.fast_parse = True          # msgspec's typed decoding for plain numeric messages (fast_batch)

    # -- metrics -----------------------------------------------------------------------------
    def metrics(self) -> Dict[str, Any]:
        lag = None
        if self.hwm:
            lag = round((now_micros() - max(self.hwm.values())) / 1e6, 3)
        return {"state": self.state, "tags": len(self.webids), "received": self.stats.values,
                "buffered": self.buffer.rows, "reconnects": self.reconnects, "gapFills": self.gap_fills,
                "gapValues": self.gap_values, "malformedFrames": self.stats.malformed_frames,
                "valueErrors": self.stats.value_errors, "repeatsDropped": self.stats.repeats_dropped,
                "unknownWebIds": self.stats.unknown_webids, "lagSeconds": lag,
                "lastError": (self.stats.last_error or "")[:300] or None}

    # -- lifecycle ---------------------------------------------------------------------------
    def stop(self) -> None:
        self._stopping.set()
        ws = self._ws
        if ws is not None:
            try:
                ws.abort() if hasattr(ws, "abort") else ws.close()
            except Exception:   # closing a broken socket: nothing more to do
                pass

    def _connect(self, initial: bool) -> websocket.WebSocket:
        url = channel_url(self.opts, self.webids, initial, self.element)
        try:
            return self._upgrade(url)
        except PIAuthError as exc:
            if exc.status != 401 or not self.opts.credentials.renewable:
                raise
            # the bearer token expired or was revoked: the upgrade is tried once more with a new one
            self.opts.credentials.token_refused(self._sent_headers)
            return self._upgrade(url)

    def _upgrade(self, url: str) -> websocket.WebSocket:
        host = url.split("/")[2]
        kw = self.opts.transport.websocket_kwargs()
        self._sent_headers = self.opts.credentials.headers(host)
        headers = [f"{k}: {v}" for k, v in self._sent_headers.items()]
        try:
            ws = websocket.create_connection(url, header=headers, enable_multithread=True, skip_utf8_validation=True, **kw)
        except websocket.WebSocketBadStatusException as exc:
            challenge = (exc.resp_headers or {}).get("www-authenticate")
            raise error_from_status(f"channel {self.shard} upgrade", exc.status_code, exc.resp_body or b"",
                                    self.opts.credentials.auth_type, challenge, self.opts.credentials) from None
        except websocket.WebSocketProxyException as exc:
            proxy = self.opts.proxy.url if self.opts.proxy else "the proxy"
            if "407" in str(exc):
                raise PIAuthError(f"channel {self.shard}: proxy {proxy} refused the proxy credentials (407 Proxy "
                                  "Authentication Required); check options proxyUsername and proxyPassword", 407) from None
            raise PIConnectionError(f"channel {self.shard}: cannot connect to {host} through proxy {proxy} "
                                    f"({str(exc)[:200]})") from None
        except ssl.SSLError as exc:
            raise PITLSError(tls_error_message(host, exc)) from None
        except (OSError, websocket.WebSocketException) as exc:
            reason = self.opts.credentials.redact(str(exc))[:300]
            raise PIConnectionError(f"channel {self.shard}: cannot connect to {host} ({type(exc).__name__}: {reason})") from None
        ws.settimeout(self.opts.stall_timeout)
        return ws

    def run(self) -> None:
        attempts = 0
        first = True
        while not self._stopping.is_set():
            self.state = "connecting"
            try:
                ws = self._connect(initial=first and self.initial_values)
            except PIStreamError as exc:
                status = getattr(exc, "status", None)
                attempts += 1
                fatal = status in (400, 401, 403, 404, 407) or isinstance(exc, (PIAuthError, PITLSError))
                if fatal or (self.opts.max_reconnect_attempts and attempts >= self.opts.max_reconnect_attempts):
                    self.failure = exc
                    self.state = "failed"
                    log.error("channel %d failed: %s", self.shard, exc)
                    return
                self._backoff(attempts, exc)
                continue
            self._ws = ws
            self.state = "open"
            log.info("channel %d open (%d streams)", self.shard, len(self.webids))
            if not first:
                self.reconnects += 1
            try:
                self._set_cutoff(first)
                if not first:
                    self._fill_gap()
                self._snapshot_next = first and self.initial_values
                first = False
                attempts = 0
                self._receive(ws)
            except PIStreamError as exc:
                attempts += 1
                if getattr(exc, "status", None) in (401, 403) or isinstance(exc, PIAuthError):
                    self.failure, self.state = exc, "failed"
                    log.error("channel %d failed: %s", self.shard, exc)
                    return
                self._backoff(attempts, exc)
            finally:
                try:
                    ws.close()
                except Exception:   # the socket may already be gone
                    pass
                self._ws = None
        self.state = "stopped"

    def _backoff(self, attempts: int, exc: BaseException) -> None:
        self.state = "backoff"
        delay = min(self.opts.reconnect_backoff_max, self.opts.reconnect_backoff * (2 ** (attempts - 1)))
        delay *= random.uniform(0.5, 1.0)
        log.warning("channel %d: %s; reconnecting in %.1fs (attempt %d)", self.shard, exc, delay, attempts)
        self._stopping.wait(delay)

    def _receive(self, ws: websocket.WebSocket) -> None:
        while not self._stopping.is_set():
            try:
                opcode, data = ws.recv_data()
            except websocket.WebSocketTimeoutException:
                raise PIConnectionError(f"channel {self.shard}: no message or heartbeat for {self.opts.stall_timeout}s (stalled)")
            except (websocket.WebSocketConnectionClosedException, OSError) as exc:
                if self._stopping.is_set():
                    return
                raise PIConnectionError(f"channel {self.shard}: connection lost ({type(exc).__name__})")
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                if self._stopping.is_set():
                    return
                raise PIConnectionError(f"channel {self.shard}: closed by server")
            if opcode not in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                continue
            self.last_message_at = time.time()
            log.debug("channel %d: message of %d bytes", self.shard, len(data))
            self.buffer.wait_for_room(self.opts.max_buffer_records, self._stopping)
            source = "snapshot" if self._snapshot_next else "live"
            batch = self._parse(data, source)
            if batch is not None and batch.num_rows:
                self._snapshot_next = False
                self._take(batch)

    def _parse(self, data: Any, source: str) -> Optional[pa.RecordBatch]:
        """One message → rows: msgspec's typed decoding for plain numeric messages (``fast_batch``),
        else the general parser, which handles (and counts) everything else."""
        received = now_micros()
        if self.fast_parse and isinstance(data, bytes) and len(data) > 2:
            fast = fast_batch(data, source, received, self.known, self.last_seen)
            if fast is not None:
                batch, dropped = fast
                self.stats.messages += 1
                self.stats.values += batch.num_rows
                self.stats.repeats_dropped += dropped
                return batch
        cols = Columns()
        parse_message(data, cols, self.stats, source, received, self.known, self.last_seen)
        return cols.to_arrow() if len(cols) else None

    def _set_cutoff(self, first: bool) -> None:
        """Right after a channel opens, ask PI for each stream's current value: the channel sends
        only what comes after it, so everything up to that timestamp is read from the archive
        (by the planner's bridge after a start, by ``_fill_gap`` after a reconnect) and live values
        up to it are dropped. PI's own timestamps, so the local clock never matters."""
        now = now_micros()
        ends: Dict[str, int] = {}
        path = f"streamsets/{self.element}/end" if self.element else "streamsets/end"
        params: Dict[str, Any] = {}
        if not self.element:
            params["webId"] = self.webids
        doc = self.rest.get(path, params=params)
        for item in doc.get("Items", []) if isinstance(doc, dict) else []:
            if not isinstance(item, dict):
                continue
            # the spec answers Items[StreamValues] for the ad-hoc form, a single Value elsewhere
            values = item.get("Items") if isinstance(item.get("Items"), list) else [item.get("Value")]
            for value in values:
                ts = value.get("Timestamp") if isinstance(value, dict) else None
                try:
                    t = parse_ts(ts) if isinstance(ts, str) else None
                except ValueError:
                    t = None
                if t is not None and t > ends.get(item.get("WebId", ""), -1):
                    ends[item.get("WebId", "")] = t
        if len(ends) < len(self.webids):
            log.warning("channel %d: PI gave no current value for %d of %d streams; using the newest "
                        "timestamp of the others as their cutoff", self.shard, len(self.webids) - len(ends), len(self.webids))
        default = max(ends.values()) if ends else now
        cutoff = {w: ends.get(w, default) for w in self.webids}
        if first:
            self.since_by_tag = cutoff
            self.connected_at = now
            self.since = min(cutoff.values()) if cutoff else now
        self._cutoff_arrays = (pa.array(list(cutoff), pa.string()), pa.array(list(cutoff.values()), pa.int64()))
        self._cutoff_max = max(cutoff.values(), default=-1)
        self.cutoff = cutoff

    def _take(self, batch: pa.RecordBatch) -> None:
        """Buffer parsed rows, minus live rows the archive supplies: those at or before each
        stream's cutoff (its current value when the channel opened)."""
        if not batch.num_rows:
            return
        ts_max_cut = self._cutoff_max
        ts = batch.column("timestamp")
        if self.cutoff and batch.column("source")[0].as_py() == "live" and \
                (pc.min(ts).as_py() or -1) <= ts_max_cut:      # only near the cutoff
            keys, marks = self._cutoff_arrays
            cut = pc.fill_null(pc.take(marks, pc.index_in(batch.column("tag_webid"), value_set=keys)), -1)
            keep = pc.fill_null(pc.or_kleene(pc.is_null(ts), pc.greater(ts, cut)), True)
            kept = pc.sum(keep).as_py() or 0
            if kept != batch.num_rows:
                self.bridged += batch.num_rows - kept
                if not kept:
                    return
                batch = batch.filter(keep)
        self._note(batch)
        self.buffer.append(batch)

    def _note(self, batch: pa.RecordBatch) -> None:
        hwm = self.hwm
        get = hwm.get
        for w, ts in zip(batch.column("tag_webid").to_pylist(), batch.column("timestamp").to_pylist()):
            if ts is not None and ts > get(w, -1):
                hwm[w] = ts

    def _fill_gap(self) -> None:
        """After a reconnect: values PI archived while the channel was down, per stream from its
        newest value taken to its cutoff."""
        self.state = "gap-fill"
        lower = {w: self.hwm.get(w, self.since_by_tag.get(w, 0)) for w in self.webids}
        upper = self.cutoff
        start = min(lower.values(), default=0)
        end = max(upper.values(), default=0)
        cols = Columns()
        stats = ParseStats()
        received = now_micros()
        if end > start:
            page = page_for_span(end - start, self.opts.recorded_page_size)
            for streams in self.rest.recorded(self.webids, start + 1, end, page, self.opts.max_url_length):
                parse_streams(streams, cols, stats, "backfill", received, self.known)
        keep = [i for i, (w, ts) in enumerate(zip(cols.tag_webid, cols.timestamp))
                if ts is not None and lower.get(w, 0) < ts <= upper.get(w, 0)]
        # rejects in the archive's answer count like the channel's (values without a timestamp
        # cannot be placed in the gap: they are counted in valueErrors, with lastError)
        untimed = sum(1 for ts in cols.timestamp if ts is None)
        self.stats.malformed_frames += stats.malformed_frames
        self.stats.value_errors += stats.value_errors
        self.stats.unknown_webids += stats.unknown_webids
        if stats.last_error:
            self.stats.last_error = f"gap fill: {stats.last_error}"[:500]
        if untimed:
            log.warning("channel %d: gap fill dropped %d archive values without a valid Timestamp (last error: %s)",
                        self.shard, untimed, stats.last_error)
        self.gap_fills += 1
        self.gap_values += len(keep)
        if keep:
            batch = cols.to_arrow().take(pa.array(keep, pa.int64()))
            self._note(batch)
            self.buffer.append(batch)
        log.info("channel %d: gap fill %s → %s gave %d values", self.shard, format_ts(start), format_ts(end), len(keep))
        self.state = "open"
