"""Channels: one sender task per open WebSocket, woken by the simulator's clock.

Each tick's value JSON is encoded once (per tag, on first use) and shared by every channel that
carries the tag; a message is the concatenation of cached stream headers and cached values. Every
value written to a socket is recorded compactly (tick ranges per channel, plus the few values sent
outside the tick grid), which is what ``PISimulator.sent_values()`` reports.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from itertools import chain
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Set, Tuple

from aiohttp import WSMsgType, web

from .archive import Point
from .encoding import Encoder
from .ticks import TICKS_PER_US

if TYPE_CHECKING:
    from .server import PISimulator

log = logging.getLogger(__name__)

HEARTBEAT = b'{"Links":{},"Items":[]}'
MALFORMED = b'{"Links":{},"Items":[{"WebId":"F1DP'            # cut short: not JSON
_OPEN, _CLOSE = b'{"Links":{},"Items":[', b"]}"
_SEPC = b"]},"                        # closes a stream's Items and the stream, then a comma


@dataclass(eq=False)
class Channel:
    id: int
    url: str
    ws: web.WebSocketResponse
    transport: Any
    streams: List[Any]                    # SimTag or SimAttribute, in subscription order
    webid_type: str
    heartbeat: int
    last_tick: int                        # newest tick already planned for this channel
    opened_at: float = field(default_factory=time.time)
    ranges: List[List[int]] = field(default_factory=list)   # tick intervals written to the socket
    idle: int = 0
    stalled: bool = False
    frozen: bool = False                  # reading paused too (pings unanswered)
    repeat_values: Optional[bool] = None  # None: follow the simulator's config
    out_of_order: Optional[bool] = None
    injects: List[Tuple[str, Any]] = field(default_factory=list)
    extras: List[Tuple[int, Point]] = field(default_factory=list)   # (stream position, point) to send
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    messages: int = 0
    prefixes: List[bytes] = field(default_factory=list)
    items_prefixes: List[bytes] = field(default_factory=list)
    tag_indices: Set[int] = field(default_factory=set)
    idx: List[int] = field(default_factory=list)          # tag index of each stream
    tags: List[Any] = field(default_factory=list)         # distinct tags behind the streams
    every1: bool = True                                   # every stream has a value at every tick
    streamset: bool = False                               # a streamsets/… form (not streams/{webId})
    closed: bool = False

    def info(self) -> Dict[str, Any]:
        return {"id": self.id, "webids": [s.webid_for(self.webid_type) for s in self.streams],
                "opened_at": self.opened_at, "messages": self.messages, "stalled": self.stalled,
                "closed": self.closed}


class ChannelHub:
    """The open channels, the per-tick value cache, and the record of what was sent."""

    def __init__(self, sim: "PISimulator") -> None:
        self.sim = sim
        self.archive = sim.archive_store
        self.encoder: Encoder = sim.encoder
        self.channels: Dict[int, Channel] = {}
        self.history: List[Channel] = []
        self._next_id = 1
        self._cache: Dict[int, List[Optional[bytes]]] = {}
        self.skips: List[Tuple[int, int]] = []              # tick intervals channels never send (time jumps)
        self.sent_extra: Dict[str, Dict[int, Tuple[Any, Optional[int], Any]]] = {}
        self.edits_sent: Set[Tuple[int, int]] = set()

    # ---- opening -------------------------------------------------------------------------------
    def open(self, url: str, ws: web.WebSocketResponse, transport: Any, streams: List[Any], webid_type: str,
             heartbeat: int, initial: bool) -> Channel:
        last = self.archive.last_tick()
        ch = Channel(self._next_id, url, ws, transport, streams, webid_type, heartbeat, last)
        self._next_id += 1
        ch.prefixes = [self.encoder.stream_prefix(s, webid_type, units=False) for s in streams]
        ch.items_prefixes = [self.encoder.stream_prefix(s, webid_type, items=True) for s in streams]
        ch.tag_indices = {s.tag.index for s in streams}
        ch.idx = [s.tag.index for s in streams]
        ch.tags = list({s.tag.index: s.tag for s in streams}.values())
        ch.every1 = all(s.tag.every == 1 for s in streams)
        ch.streamset = "/streamsets/" in url.split("?", 1)[0]
        if initial:
            ch.extras = [(j, self.archive.current(s.tag)) for j, s in enumerate(streams)]
            ch.wake.set()
        self.channels[ch.id] = ch
        self.history.append(ch)
        return ch

    def close(self, ch: Channel) -> None:
        """Forget an open channel; keep only what ``sent_values()`` needs (streams, ranges), so
        reconnect storms do not pile up memory."""
        ch.closed = True
        self.channels.pop(ch.id, None)
        ch.prefixes, ch.items_prefixes, ch.idx, ch.tags, ch.injects = [], [], [], [], []
        ch.wake.set()

    # ---- what was sent -------------------------------------------------------------------------
    def sent_values(self, ticks: bool = False) -> Dict[str, List[Tuple[int, Any]]]:
        """Per WebID as sent, (stamp, value) in time order: stamps in 100-ns ticks with ``ticks``,
        else their µs view (floored)."""
        arch = self.archive
        edits = arch.edits
        out: Dict[str, Dict[int, Any]] = {}
        tags: Dict[str, Any] = {}                       # WebID as sent → its point (even if deleted since)

        def tick_value(tag: Any, k: int) -> Any:
            key = (tag.index, k)
            if key in edits and key in self.edits_sent:
                return edits[key]
            return tag.gen.value(k)

        for ch in self.history:
            if not ch.ranges:
                continue
            for s in ch.streams:
                d = out.setdefault(s.webid_for(ch.webid_type), {})
                tag = tags[s.webid_for(ch.webid_type)] = s.tag
                for a, b in ch.ranges:
                    for k in arch.ticks(tag, a, b):
                        d[arch.stamp(tag, k)] = k
        for webid, extra in self.sent_extra.items():
            d = out.setdefault(webid, {})
            for ts, (tag, k, value) in extra.items():
                tags[webid] = tag
                d[ts] = (tag, value) if k is None else k
        result: Dict[str, List[Tuple[int, Any]]] = {}
        for webid, d in out.items():
            result[webid] = [(ts if ticks else ts // TICKS_PER_US,
                              tick_value(tags[webid], v) if isinstance(v, int) else v[1])
                             for ts, v in sorted(d.items())]
        return result

    # ---- the per-tick cache --------------------------------------------------------------------
    def _values(self, k: int) -> List[Optional[bytes]]:
        vals = self._cache.get(k)
        if vals is None:
            if len(self._cache) >= 8:
                for old in sorted(self._cache)[:-4]:
                    del self._cache[old]
            vals = self._cache[k] = [None] * self.sim.model.next_index
        return vals

    def invalidate(self, tag_index: int, k: int) -> None:
        vals = self._cache.get(k)
        if vals is not None:
            vals[tag_index] = None

    def _fill(self, k: int, ch: Channel) -> List[Optional[bytes]]:
        """Tick ``k``'s value of every tag of ``ch``, each followed by ``]},`` (shared by channels)."""
        vals = self._values(k)
        edits = self.archive.edits
        enc = self.encoder
        # a family shares encodings at a step: same kind, period, unit and stamp offset (its phase)
        tables: Dict[Tuple[str, int, str, int], List[Optional[bytes]]] = {}
        for tag in ch.tags:
            i = tag.index
            if vals[i] is not None:
                continue
            g = tag.gen
            if g.period and (not edits or (i, k) not in edits):
                fk = (g.kind, g.period, tag.uom, tag.off_phase)
                tab = tables.get(fk)
                if tab is None:
                    tab = tables[fk] = enc.table(k, tag, _SEPC)
                n = (k + g.phase) % g.period
                v = tab[n]
                if v is None:
                    v = tab[n] = enc.cycle_value(tag, k, n, _SEPC)
                vals[i] = v
            else:
                vals[i] = enc.value_bytes(tag, k, _SEPC)
        return vals

    # ---- planning ------------------------------------------------------------------------------
    def _plan(self, after: int, last: int) -> List[Tuple[int, int]]:
        """Tick intervals in (after, last] minus the intervals skipped by time jumps."""
        intervals = [(after + 1, last)] if last > after else []
        for a, b in self.skips:
            nxt = []
            for lo, hi in intervals:
                if b < lo or a > hi:
                    nxt.append((lo, hi))
                    continue
                if lo < a:
                    nxt.append((lo, a - 1))
                if b < hi:
                    nxt.append((b + 1, hi))
            intervals = nxt
        return intervals

    def _record(self, ch: Channel, intervals: List[Tuple[int, int]]) -> None:
        for a, b in intervals:
            if ch.ranges and ch.ranges[-1][1] + 1 >= a:
                ch.ranges[-1][1] = max(ch.ranges[-1][1], b)
            else:
                ch.ranges.append([a, b])
        if self.archive.edits:
            for (idx, k) in self.archive.edits:
                if idx in ch.tag_indices and any(a <= k <= b for a, b in intervals):
                    self.edits_sent.add((idx, k))

    def build(self, ch: Channel, last: int, pad_to: int = 0) -> Tuple[Optional[bytes], int, List[Tuple[int, int]]]:
        """The next message of ``ch`` (None when nothing changed), its value count and tick intervals."""
        intervals = self._plan(ch.last_tick, last)
        cfg = self.sim.config
        repeat = cfg.repeat_values if ch.repeat_values is None else ch.repeat_values
        reverse = cfg.out_of_order if ch.out_of_order is None else ch.out_of_order
        # "spec": the 2018 SP1 swagger's 101 schemas, Items[] for streams/{webId}/channel and a
        # single Value for the streamsets forms
        shape_value = cfg.message_shape == "value" or (cfg.message_shape == "spec" and ch.streamset)
        arch = self.archive
        if not intervals and not ch.extras:
            return None, 0, intervals
        # fast path: one tick, nothing special (the steady state): no per-stream Python work
        # beyond a cache lookup; the message is one join of pre-encoded pieces
        if (len(intervals) == 1 and intervals[0][0] == intervals[0][1] and not ch.extras and not repeat
                and not pad_to and not shape_value and ch.every1 and not reverse):
            k = intervals[0][0]
            vals = self._fill(k, ch)
            parts = list(chain.from_iterable(zip(ch.items_prefixes, map(vals.__getitem__, ch.idx))))
            parts[-1] = parts[-1][:-1]
            parts.insert(0, _OPEN)
            parts.append(_CLOSE)
            return b"".join(parts), len(ch.idx), intervals
        # general path: several ticks, extras (edits, late values, initial values), repeats, padding
        per_stream: List[List[bytes]] = [[] for _ in ch.streams]
        count = 0
        for j, s in enumerate(ch.streams):
            tag = s.tag
            vals = per_stream[j]
            if repeat and ch.ranges:
                prev = ch.last_tick - ch.last_tick % tag.every
                if prev >= ch.ranges[0][0] and arch.has_tick(tag, prev):
                    vals.append(self.encoder.value_bytes(tag, prev))
            for a, b in intervals:
                for k in arch.ticks(tag, a, b):
                    vals.append(self.encoder.value_bytes(tag, k))
        for j, p in ch.extras:
            per_stream[j].append(self.encoder.point_bytes(ch.streams[j].tag, p))
        if pad_to:
            # repeats of an already-sent current value until the message reaches pad_to bytes
            j = 0
            tag = ch.streams[j].tag
            prev = ch.last_tick - ch.last_tick % tag.every
            rep = self.encoder.value_bytes(tag, prev)
            per_stream[j] = [rep] * (pad_to // (len(rep) + 1) + 1) + per_stream[j]
        parts = []
        for j, vals in enumerate(per_stream):
            if not vals:
                continue
            count += len(vals)
            if reverse:
                vals.reverse()
            if shape_value:
                parts.extend(ch.prefixes[j] + b',"Value":' + v + b"}" for v in vals)
            else:
                parts.append(ch.items_prefixes[j] + b",".join(vals) + _CLOSE)
        if not parts:
            return None, 0, intervals
        return _OPEN + b",".join(parts) + _CLOSE, count, intervals

    def _record_extras(self, ch: Channel, extras: List[Tuple[int, Point]]) -> None:
        for j, p in extras:
            s = ch.streams[j]
            ts, k, _ = p
            value = None if k is not None else self.archive.late[s.tag.index][ts][0]
            self.sent_extra.setdefault(s.webid_for(ch.webid_type), {})[ts] = (s.tag, k, value)
            if k is not None and (s.tag.index, k) in self.archive.edits:
                self.edits_sent.add((s.tag.index, k))

    # ---- sending -------------------------------------------------------------------------------
    async def run(self, ch: Channel) -> None:
        try:
            await self._loop(ch)
        except (ConnectionError, asyncio.CancelledError, RuntimeError):
            pass                            # the socket went away; the handler cleans up
        except Exception:
            log.exception("simulator: channel %d sender failed", ch.id)

    async def _loop(self, ch: Channel) -> None:
        stats = self.sim.stats
        while not ch.ws.closed and not ch.closed:
            await ch.wake.wait()
            ch.wake.clear()
            if ch.closed:
                return
            if self.sim.stalled or ch.stalled:
                continue
            last = self.archive.last_tick()
            kinds = [kind for kind, _ in ch.injects]
            if "malformed" in kinds:
                ch.injects = [i for i in ch.injects if i[0] != "malformed"]
                await ch.ws.send_frame(MALFORMED, WSMsgType.TEXT)
                stats["faults_injected"] += 1
            pad = next((arg for kind, arg in ch.injects if kind == "big"), 0) if ch.ranges else 0
            extras = ch.extras[:]            # edits queued while this message is written go in the next
            body, count, intervals = self.build(ch, last, pad_to=pad)
            ch.extras = ch.extras[len(extras):]
            if body is None:
                self._record(ch, intervals)      # ticks without a value for any of its streams
                ch.last_tick = max(ch.last_tick, last)
                ch.idle += 1
                if ch.heartbeat > 0 and ch.idle >= ch.heartbeat:
                    ch.idle = 0
                    await ch.ws.send_frame(HEARTBEAT, WSMsgType.TEXT)
                    stats["heartbeats_sent"] += 1
                continue
            ch.idle = 0
            fragments = next((arg for kind, arg in ch.injects if kind == "fragment"), 0)
            if fragments:
                self._write_fragmented(ch, body, fragments)
            else:
                await ch.ws.send_frame(body, WSMsgType.TEXT)
            if fragments or pad:
                stats["faults_injected"] += 1
                ch.injects = [i for i in ch.injects if i[0] not in ("fragment", "big")]
            self._record(ch, intervals)
            self._record_extras(ch, extras)
            ch.last_tick = max(ch.last_tick, last)
            ch.messages += 1
            stats["messages_sent"] += 1
            stats["values_sent"] += count
            stats["bytes_sent"] += len(body)

    @staticmethod
    def _write_fragmented(ch: Channel, body: bytes, pieces: int) -> None:
        """One text message as ``pieces`` WebSocket frames (FIN only on the last), written raw."""
        size = max(1, -(-len(body) // pieces))
        chunks = [body[i:i + size] for i in range(0, len(body), size)]
        out = []
        for i, chunk in enumerate(chunks):
            opcode = 0x1 if i == 0 else 0x0
            fin = 0x80 if i == len(chunks) - 1 else 0
            n = len(chunk)
            if n < 126:
                header = struct.pack("!BB", fin | opcode, n)
            elif n < 65536:
                header = struct.pack("!BBH", fin | opcode, 126, n)
            else:
                header = struct.pack("!BBQ", fin | opcode, 127, n)
            out.append(header + chunk)
        ch.transport.write(b"".join(out))

    # ---- faults --------------------------------------------------------------------------------
    def select(self, channel: Optional[int] = None) -> List[Channel]:
        if channel is None:
            return list(self.channels.values())
        ch = self.channels.get(channel)
        return [ch] if ch is not None else []

    async def drop(self, abrupt: bool, channel: Optional[int] = None, code: int = 1001) -> int:
        """Close channels: a close frame (waiting at most 2 s for the client's answer, then a
        reset), or an immediate TCP reset (RST, no close frame) when ``abrupt``."""
        chans = self.select(channel)
        for ch in chans:
            self.close(ch)
            ch.wake.set()

        def reset(ch: Channel) -> None:
            if ch.transport is None:
                return
            sock = ch.transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            ch.transport.abort()

        async def clean(ch: Channel) -> None:
            try:
                await asyncio.wait_for(ch.ws.close(code=code, message=b"server going away"), 2)
            except (asyncio.TimeoutError, ConnectionError, RuntimeError):
                reset(ch)

        if abrupt:
            for ch in chans:
                reset(ch)
        elif chans:
            await asyncio.gather(*(clean(ch) for ch in chans))
        return len(chans)

    def wake_all(self) -> None:
        for ch in self.channels.values():
            ch.wake.set()

    def point_added(self) -> None:
        """Room for a new point's values in the per-step cache."""
        for vals in self._cache.values():
            vals.extend([None] * (self.sim.model.next_index - len(vals)))

    def point_deleted(self, tag: Any) -> None:
        """Channels carrying ``tag`` keep running for their other streams: they leave the fast
        path (which sends every stream at every step) so the deleted point's values stop."""
        for ch in self.channels.values():
            if tag.index in ch.tag_indices:
                ch.every1 = False

    def queue_point(self, tag: Any, p: Point) -> int:
        """Send ``p`` (an edit or a late value) on every open channel carrying ``tag``."""
        n = 0
        for ch in self.channels.values():
            if tag.index not in ch.tag_indices:
                continue
            for j, s in enumerate(ch.streams):
                if s.tag is tag:
                    ch.extras.append((j, p))
                    n += 1
            ch.wake.set()
        return n
