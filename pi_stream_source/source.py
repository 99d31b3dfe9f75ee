"""The ``pi_websocket`` Spark data source: PI Web API channels as a Structured Streaming source."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql.types import StructType

from . import offsets as O
from .health import plan_health
from .channel import BufferBudget, ChannelReceiver, Epoch, ShardBuffer, freeze_gc, frozen_count, shard_webids
from .compat import (DataSource, DataSourceStreamReader, InputPartition, ReadLimit, ReadMaxRows,
                     SupportsTriggerAvailableNow, admission_control, default_limit)
from .errors import PIConnectionError, PIDataLossError, PINotFoundError, PIOptionError
from .options import OPTIONS, SourceOptions, parse_options
from .parse import Columns, ParseStats, fast_batch, parse_streams
from .pitime import TICKS, TICKS_PER_MICRO, format_ticks, now_micros, now_ticks
from .planning import (ArchiveRange, ArchiveSlice, SteadyAdmit, Stream, admit_steady, concat_batches, group_ranges,
                       keep_in_ranges, plan_shard)
from .rest import PIRestClient, StreamMeta, page_for_span, shared_client, describe_webids, element_attributes, points_by_filter, resolve_paths
from .schema import ARROW_SCHEMA, BUFFER_SCHEMA, CONTRACT_SCHEMA
from .receivers import ReceiverProcess, auto_processes
from .wsloop import ReceiveLoop

log = logging.getLogger(__name__)


def to_contract(batch: pa.RecordBatch, ingested: int) -> pa.RecordBatch:
    """Buffer rows → the data contract: timestamps as UTC ``timestamp[us]``, plus
    ``ingestion_timestamp`` and ``partition_date`` (the UTC date of ``timestamp``)."""
    ts = batch.column(3)
    ts_type = ARROW_SCHEMA.field("timestamp").type
    arrays = list(batch.columns)
    # PI's ticks (100 ns) → the table's microseconds, floored (as ``pitime.ticks_to_micros``)
    micros = np.floor_divide(np.asarray(pc.fill_null(ts, 0).to_numpy(zero_copy_only=False), dtype=np.int64),
                             TICKS_PER_MICRO)
    arrays[3] = pa.array(micros, pa.int64(), mask=np.asarray(ts.is_null().to_numpy(zero_copy_only=False), dtype=bool)
                         if ts.null_count else None).cast(ts_type)
    # timestamp → date is exact for every year (a float64 detour fails past ±2^53 µs, before 1685)
    date = pc.cast(arrays[3], pa.date32())
    arrays[15] = batch.column(15).cast(ts_type)
    arrays.append(pa.array(np.full(batch.num_rows, ingested, dtype=np.int64)).cast(ts_type))
    arrays.append(date)
    return pa.RecordBatch.from_arrays(arrays, schema=ARROW_SCHEMA)


#: live rows travel from the driver's reader through the JVM to a Python worker inside each task:
#: zstd makes them ~6× smaller (158 → 27 bytes a row of PI's shape: WebIDs, names and paths repeat)
#: and costs less CPU than the copy it saves
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd" if pa.Codec.is_available("zstd") else None)
#: how long a replay waits for the channels to open before its archive read (``_open_before_replay``)
REPLAY_OPEN_WAIT = 2.0


def _ipc(batches: List[pa.RecordBatch]) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, BUFFER_SCHEMA, options=_IPC_OPTIONS) as writer:
        for b in batches:
            writer.write_batch(b)
    return sink.getvalue().to_pybytes()


@dataclass
class PIInputPartition(InputPartition):
    """Buffered live rows of one or more shards for one micro-batch, as Arrow IPC bytes (read on an
    executor). Shards are packed up to ``rowsPerPartition`` rows: one task per batch at 10k tags."""
    shards: List[int]
    rows: int
    payload: bytes

    def __repr__(self) -> str:
        return f"PIInputPartition(shards={self.shards}, rows={self.rows})"


def _pack(slices: List[Tuple[int, List[pa.RecordBatch]]], per_partition: int) -> List[PIInputPartition]:
    """Live row slices (shard, batches) → partitions of about ``per_partition`` rows each."""
    parts: List[PIInputPartition] = []
    cur: List[pa.RecordBatch] = []
    shards: List[int] = []
    rows = 0

    def flush() -> None:
        nonlocal cur, shards, rows
        if rows:
            # one record batch a partition: written piece by piece (a piece a shard), 1,000 channels'
            # pieces cost 0.4 s a batch of 800,000 rows in IPC messages and per-buffer compression
            parts.append(PIInputPartition(shards, rows, _ipc([concat_batches(cur)])))
        cur, shards, rows = [], [], 0

    for shard, batches in slices:
        for batch in batches:
            offset = 0
            while offset < batch.num_rows:
                take = min(batch.num_rows - offset, per_partition - rows)
                cur.append(batch.slice(offset, take))
                if not shards or shards[-1] != shard:
                    shards.append(shard)
                rows += take
                offset += take
                if rows >= per_partition:
                    flush()
    flush()
    return parts


@dataclass
class PIArchivePartition(InputPartition):
    """Values to read from the PI archive on an executor: REST calls (``ArchiveSlice``: streams,
    each with its own (lo, hi], over (t, u] in ticks), marked ``source`` (``backfill`` for ranges
    this run planned, ``replay`` for a batch an earlier run planned)."""
    shard: int
    calls: List[ArchiveSlice]
    source: str

    def __repr__(self) -> str:
        t = min(c.t for c in self.calls) if self.calls else 0
        u = max(c.u for c in self.calls) if self.calls else 0
        return (f"PIArchivePartition(calls={len(self.calls)}, streams={sum(len(c.streams) for c in self.calls)}, "
                f"{format_ticks(t)}..{format_ticks(u)}, {self.source})")


def _key(offset: Dict[str, Any]) -> str:
    """An offset's identity: its JSON without the health record (``"h"``), which says what the
    reader saw when it planned the batch, not what the batch holds."""
    return json.dumps({k: v for k, v in offset.items() if k != "h"}, sort_keys=True)


@dataclass
class _Plan:
    live: List[Tuple[int, List[pa.RecordBatch]]]
    ranges: List[ArchiveRange]


@admission_control
class PIStreamReader(DataSourceStreamReader, SupportsTriggerAvailableNow):
    """Driver side: one channel per shard, buffers, offsets (see ``offsets.py``) and planning (see
    ``planning.py``). Executor side: ``read()`` only. Batches of the current run are served from
    the buffers plus archive ranges; a batch planned by an earlier run is read from the archive."""

    def __init__(self, options: SourceOptions) -> None:
        self.opts = options
        self.run_id = uuid.uuid4().hex[:16]
        self.run_start = now_ticks()              # where a stream new to the selection starts (latest)
        self._lock = threading.RLock()
        self._streams: Optional[List[List[Stream]]] = None
        self._element: Optional[str] = None
        self.unknown: List[str] = []              # chosen streams PI does not know (skipped)
        self._started = False
        self._budget = BufferBudget(options.max_buffer_records)
        self._buffers: List[ShardBuffer] = []
        self._receivers: List[Any] = []                   # ChannelReceiver, or RemoteReceiver in a receiving process
        self._loop: Optional[ReceiveLoop] = None           # reads every channel's frames (option receiver=loop)
        self._procs: List[ReceiverProcess] = []              # receiving processes (option receiverProcesses)
        self._rest: Optional[PIRestClient] = None
        self._initial: Optional[Dict[str, Any]] = None
        self._target: Optional[Dict[int, int]] = None
        self._plans: Dict[str, _Plan] = {}
        self._progress: Dict[Tuple[int, str], Dict[int, Any]] = {}
        self._marks_cache: Tuple[Optional[str], O.Marks] = (None, {})
        self._mark_layout: Optional[Tuple[O.MarkArrays, List[Tuple[int, int]]]] = None
        self._webid_array: Optional[pa.Array] = None
        # offset → its marks in the layout (ticks, has a mark) and the gaps it leaves to read (lo, hi)
        self._arrays: Dict[str, Tuple[np.ndarray, ...]] = {}
        self._lost: List[Dict[str, Any]] = []
        self._gaps_left: Tuple[int, float] = (0, 0.0)     # streams with a gap left to read, the longest (s)
        self._counts = {"coveredDropped": 0, "lateKept": 0, "archiveRanges": 0}
        self._gap_fills: Dict[int, int] = {}         # shard → reconnects whose gap was planned
        self._health_base: Dict[str, Any] = {}        # running totals when the last batch was planned
        self._fresh_run = False                      # this run planned the query's first batch, at "latest"
        # a batch of an earlier run this run read again: (its end, shards whose channel was open
        # before the read, streams whose lateDataOverlap below their end mark it read)
        self._replayed: Tuple[Optional[str], Set[int], Set[str]] = (None, set(), set())
        self._trimmed: Dict[str, Any] = {}           # the seq of the offset last committed (``commit``)
        self._restart_waited = False                 # this run's first batch after an earlier run's waited for the channels

    def __getstate__(self) -> Dict[str, Any]:
        # Executors get a pickled copy: no sockets, threads or buffers travel with it.
        return {"opts": self.opts, "run_id": self.run_id}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(state["opts"])
        self.run_id = state["run_id"]

    def __repr__(self) -> str:
        return f"PIStreamReader(url={self.opts.url!r}, run={self.run_id})"

    # -- the streams ---------------------------------------------------------------------------
    @property
    def rest(self) -> PIRestClient:
        if self._rest is None:
            self._rest = PIRestClient(self.opts.url, self.opts.credentials, self.opts.ca_bundle, self.opts.connect_timeout,
                                      retry_for=self.opts.rest_retry_timeout, proxy=self.opts.proxy)
        return self._rest

    def shards(self) -> List[List[Stream]]:
        """Resolve the chosen streams (batched, cached lookups; every form of WebID to its Full form)
        and split them into shards. Streams PI does not know are skipped with a warning (or fail,
        with failOnUnknownStreams)."""
        with self._lock:
            if self._streams is None:
                opts = self.opts
                self.rest.check_pi_web_api(opts.startup_timeout)
                missing: List[str] = []
                if opts.element_path:
                    self._element, attrs = element_attributes(self.rest, opts.element_path)
                    self._streams = [[Stream(*m) for m in attrs]]
                else:
                    meta: List[StreamMeta] = []
                    if opts.webids:
                        meta += describe_webids(self.rest, opts.webids, missing)
                    if opts.paths:
                        meta += resolve_paths(self.rest, opts.paths, missing)
                    if opts.name_filter:
                        meta += points_by_filter(self.rest, opts.data_server or "", opts.name_filter)
                    unique = list({Stream(*m).key: Stream(*m) for m in meta}.values())
                    if missing:
                        msg = (f"pi_websocket: {len(missing)} chosen stream(s) unknown to PI Web API at {opts.url}: "
                               + ", ".join(missing[:10]) + (", …" if len(missing) > 10 else ""))
                        if opts.fail_on_unknown_streams or not unique:
                            raise PINotFoundError(msg + ("" if unique else "; no stream left to read") +
                                                  " (check webIds/paths, or set failOnUnknownStreams=false to skip them)", 404)
                        log.warning("%s; streaming the other %d (metric unknownStreams)", msg, len(unique))
                        self.unknown = missing
                    if not unique:
                        raise PINotFoundError("no streams matched the selection (webIds/paths/nameFilter)", 404)
                    by_webid = {s.webid: s for s in unique}
                    self._streams = [[by_webid[w] for w in g] for g in shard_webids(opts, [s.webid for s in unique])]
                log.info("pi_websocket: %d streams in %d channels to %s",
                         sum(len(s) for s in self._streams), len(self._streams), opts.url)
            return self._streams

    def _ensure_started(self) -> None:
        with self._lock:
            if self._started:
                return
            initial = self.opts.starting_position == "snapshot"
            shards = self.shards()
            self._buffers = [ShardBuffer(self._budget) for _ in shards]
            known = [{s.webid: (s.name, s.path) for s in shard} for shard in shards]
            nproc = self.opts.receiver_processes
            nproc = min(len(shards), auto_processes(os.cpu_count(), len(shards)) if nproc is None else nproc)
            if nproc > 0:
                # the channels run in child processes (receivers.py); shards are dealt out in turn
                self._procs = [ReceiverProcess(i, self.opts, [(k, [s.webid for s in shards[k]], known[k])
                                                              for k in range(i, len(shards), nproc)],
                                               self._buffers, self._budget, initial, self._element, self.run_id)
                               for i in range(nproc)]
                by_shard = {k: rec for p in self._procs for k, rec in p.receivers.items()}
                self._receivers = [by_shard[k] for k in range(len(shards))]
                try:
                    for proc in self._procs:
                        proc.start()
                except OSError as exc:
                    if self.opts.receiver_processes is not None:
                        raise PIConnectionError(f"option receiverProcesses={nproc}: cannot start a receiving process "
                                                f"({exc}); set receiverProcesses=0 to read in this process") from None
                    # auto, where this process may not start others (a sandbox): the reader's own loop
                    log.warning("pi_websocket: cannot start receiving processes (%s); reading in this process", exc)
                    for proc in self._procs:
                        proc.stop()
                        proc.join(5)
                    self._procs, nproc = [], 0
            if nproc == 0:
                if self.opts.receiver == "loop":
                    self._loop = ReceiveLoop(self._budget, name=f"pi-receive-{self.run_id[:6]}")
                    self._loop.start()
                self._receivers = [ChannelReceiver(k, [s.webid for s in shard], self.opts, self._buffers[k], self.rest,
                                                   initial_values=initial, element=self._element, known=known[k],
                                                   loop=self._loop)
                                   for k, shard in enumerate(shards)]
                for rec in self._receivers:
                    rec.start()
            self._started = True
            freeze_gc()

    def _paused(self) -> Any:
        """Planning holds the receiving loop (``ReceiveLoop.paused``), when there is one."""
        return self._loop.paused() if self._loop is not None else contextlib.nullcontext()

    def _raise_failures(self) -> None:
        for rec in self._receivers:
            if rec.failure is not None:
                raise rec.failure

    # -- offsets --------------------------------------------------------------------------------
    def initialOffset(self) -> Dict[str, Any]:
        with self._lock:
            if self._initial is None:
                start = self.opts.start_time * TICKS_PER_MICRO if self.opts.start_time is not None else now_ticks()
                if self.opts.start_time is None:
                    # this run begins the query at "latest": a stream whose channel opens after the
                    # first batch starts at the query's start too, not at this reader's creation
                    # (its first archive read began up to seconds before the start, under load)
                    self.run_start = start
                self.shards()                     # an unknown selection fails here, before any batch
                self._initial = O.initial(start)
            return self._initial

    def getDefaultReadLimit(self) -> ReadLimit:
        return default_limit(self.opts.max_records_per_trigger)

    def awaitStart(self) -> None:
        """Start the channels and wait (up to connectTimeout) until every one is open."""
        self._ensure_started()
        self._wait_open(max(self.opts.connect_timeout, 1.0))
        self._raise_failures()

    def _wait_open(self, seconds: float) -> None:
        """Wait up to ``seconds`` until every channel is open (its cutoff known) or has failed."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and any(r.since == 0 and r.failure is None for r in self._receivers):
            time.sleep(0.02)

    def prepareForTriggerAvailableNow(self) -> None:
        """"Available now" is what the archive holds up to the moment every channel is open, plus
        the live rows buffered by then; a channel that cannot open fails the query rather than
        being left out."""
        self.awaitStart()
        closed = [r for r in self._receivers if r.since == 0]
        if closed:
            raise PIConnectionError(
                f"Trigger.AvailableNow: {len(closed)} of {len(self._receivers)} channels did not open within "
                f"{self.opts.connect_timeout:.0f}s (option connectTimeout); first: channel {closed[0].shard}, last error: "
                f"{closed[0].last_failure or 'none yet'}")
        self._target = {i: b.state()[0] for i, b in enumerate(self._buffers)}

    def _marks(self, offset: Dict[str, Any]) -> O.Marks:
        doc = offset.get("marks")
        key = repr(doc)
        if self._marks_cache[0] != key:
            self._marks_cache = (key, O.decode_marks(doc))
        return self._marks_cache[1]

    def _layout(self) -> Tuple[O.MarkArrays, List[Tuple[int, int]]]:
        """Every chosen stream in shard order (``MarkArrays``) and each shard's span in it."""
        if self._mark_layout is None:
            shards = self.shards()
            ends = np.cumsum([0] + [len(shard) for shard in shards]).tolist()
            self._mark_layout = (O.MarkArrays([s.key for shard in shards for s in shard]),
                                 list(zip(ends[:-1], ends[1:])))
        return self._mark_layout

    def _start_marks(self, start: Dict[str, Any], start_key: str,
                     layout: O.MarkArrays) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
        """``start``'s marks as arrays in ``layout`` (kept from planning the batch that ended at
        it, else decoded), its gaps left to read (lo, hi), and whether it holds marks of streams no
        longer chosen."""
        kept = self._arrays.get(start_key)
        if kept is not None:
            return kept[0], kept[1], kept[2], kept[3], False
        m0 = self._marks(start)
        ticks, has = layout.from_marks(m0)
        glo, ghi = _gap_arrays(layout, start)
        return ticks, has, glo, ghi, len(m0) > int(has.sum())

    def latestOffset(self, start: Dict[str, Any], limit: ReadLimit) -> Dict[str, Any]:
        self._ensure_started()
        self._raise_failures()
        try:
            O.check_version(start)
        except ValueError as exc:
            raise PIDataLossError(f"pi_websocket: {exc}") from None
        # Spark asks for the next offset only once the batch ending at ``start`` is done, but tells
        # the source to commit it only after it planned a new batch: the rows of that batch, still
        # held against maxBufferRecords, stopped the channels when it took the whole budget, so
        # no new batch came and the stream stalled (seen at 100,000 tags in channels of 1,000). Its
        # partitions carry their rows: the buffers can let them go now.
        self.commit(start)
        if not self._restart_waited and start.get("run") not in (self.run_id, O.INITIAL_RUN):
            # a restart's first batch re-reads lateDataOverlap below the marks of every connection
            # it looks at first: a MERGE (rows the table holds). Planned as soon as one channel was
            # open, the channels that opened a moment later made a second MERGE batch (3.7-4.0 s
            # each at 1,000 tags here, before the downtime's read began): wait for them, bounded
            self._restart_waited = True
            self._wait_open(min(REPLAY_OPEN_WAIT, self.opts.connect_timeout))
        with self._paused():
            end, plan = self._plan(start, limit)
        if end is start:
            return start
        self._plans[_key(end)] = plan
        while len(self._plans) > 4:                       # Spark plans the batch it asked about next
            self._plans.pop(next(iter(self._plans)))
        return end

    def _plan(self, start: Dict[str, Any], limit: Optional[ReadLimit] = None,
              targets: Optional[Dict[int, Tuple[int, int]]] = None,
              after: Optional[Dict[str, Any]] = None) -> Tuple[Dict[str, Any], _Plan]:
        """The next offset after ``start`` and what its batch holds. ``targets`` (shard → (seq,
        connections)) and ``after`` (its end offset) re-plan a batch whose end is known."""
        shards = self.shards()
        layout, spans = self._layout()
        start_key = _key(start)
        t0, h0, g0lo, g0hi, extra = self._start_marks(start, start_key, layout)
        same_run = start.get("run") == self.run_id
        initial = start.get("run") == O.INITIAL_RUN
        default = int(start["start"]) if initial else (
            self.opts.start_time * TICKS_PER_MICRO if self.opts.start_time is not None else self.run_start)
        states: Dict[int, Tuple[int, int, int, List[Epoch]]] = {}
        pending: Dict[str, int] = {}
        for k in range(len(shards)):
            next_seq, epochs = self._buffers[k].state()
            if not epochs:
                continue                                  # channel not open yet: nothing to plan for it
            begin, ep0 = (start["seq"].get(str(k)) or (0, 0)) if same_run else (0, 0)
            avail = next_seq
            if targets is not None:
                avail = min(avail, targets.get(k, (begin, ep0))[0])
            elif self._target is not None:
                avail = min(avail, self._target.get(k, avail))
            states[k] = (begin, ep0, next_seq, epochs)
            pending[str(k)] = max(0, avail - begin)
        budget = float(self.opts.max_archive_records_per_trigger)
        if isinstance(limit, ReadMaxRows):
            pending = _fair_share(pending, limit.max_rows)
            budget = min(budget, float(limit.max_rows))
        t1, h1, g1lo, g1hi = t0.copy(), h0.copy(), g0lo.copy(), g0hi.copy()
        after_gaps = _gap_arrays(layout, after) if after is not None else None
        reach: Dict[str, int] = {}
        seq = dict(start["seq"]) if same_run else {}
        plan = _Plan([], [])
        merge = False
        changed = False
        if initial and self.opts.start_time is None:
            self._fresh_run = True                        # this run began the query at "latest"
        fresh = self.opts.start_time is None and (initial or (same_run and self._fresh_run))
        lost_before = len(self._lost)
        progress: Dict[int, Any] = {}
        spans_of: Dict[int, Tuple[int, int]] = {}
        for k, (begin, ep0, _, epochs) in states.items():
            stop = begin + pending[str(k)]
            ep1 = 1 + max((e.index for e in epochs if e.first_seq <= stop), default=ep0 - 1)
            if targets is not None:
                ep1 = min(ep1, targets.get(k, (stop, ep0))[1])
            spans_of[k] = (stop, max(ep1, ep0))
        live_first = self._live_first(states, spans_of, spans, t0, h0, default, start_key, after is not None)
        now = time.monotonic()
        steady = self._plan_steady(states, spans_of, spans, start, same_run, t0, h0, g0lo, g0hi, after_gaps)
        for k, (begin, ep0, _, epochs) in states.items():
            stop, ep1 = spans_of[k]
            a, b = spans[k]
            if stop == begin and ep1 == ep0 and not (g0hi[a:b] > g0lo[a:b]).any():
                continue
            if steady is not None and k in steady.rows:
                # planned with the other steady shards: every row lands, the marks move
                t1[a:b], h1[a:b] = steady.marks[a:b], True
                seq[str(k)] = [stop, ep1]
                progress[k] = {i: v for i, v in (self._progress.get((k, start_key)) or {}).items() if i >= ep1 - 1}
                plan.live.append((k, steady.rows[k]))
                changed = True
                continue
            shard = shards[k]
            known = h0[a:b]
            marks = np.where(known, t0[a:b], default)
            first_look = not (same_run and str(k) in start["seq"])
            reread = None
            if first_look and self._replayed[0] == start_key and k in self._replayed[1]:
                reread = np.array([s.key in self._replayed[2] for s in shard], dtype=bool)
            sp = plan_shard(shard, self._buffers[k].slice_seq(begin, stop), epochs, (ep0, ep1), marks, known,
                            bridge_overlap=0 if initial or not first_look else int(self.opts.late_data_overlap * TICKS),
                            floor=int(start["start"]), max_backfill=int(self.opts.max_backfill * TICKS),
                            fail_on_data_loss=self.opts.fail_on_data_loss,
                            archive_budget=budget / max(1, len(states)), rate=self._receivers[k].value_rate(),
                            progress=self._progress.get((k, start_key)), reread=reread, upto=stop,
                            gaps=(g0lo[a:b], g0hi[a:b]) if (g0hi[a:b] > g0lo[a:b]).any() else None, live_first=live_first,
                            gaps_after=None if after_gaps is None else (after_gaps[0][a:b], after_gaps[1][a:b]),
                            fill=not _first_rows_due(epochs, ep0, begin, now))
            g1lo[a:b], g1hi[a:b] = sp.gaps
            moved = np.ones(b - a, dtype=bool) if ep1 > 0 else known
            t1[a:b] = np.where(moved, sp.marks, t1[a:b])
            h1[a:b] |= moved
            for i, r in sp.reach.items():
                reach[shard[i].key] = r
            for i, lo, cut in sp.lost:
                self._lost.append({"shard": k, "stream": shard[i].name or shard[i].webid,
                                   "from": format_ticks(lo), "to": format_ticks(cut)})
                log.warning("pi_websocket: %s: values from %s to %s not read (older than maxBackfill; failOnDataLoss=false)",
                            shard[i].name or shard[i].webid, format_ticks(lo), format_ticks(cut))
            self._counts["coveredDropped"] += sp.covered
            self._counts["lateKept"] += sp.late
            self._counts["archiveRanges"] += len(sp.ranges)
            self._gap_fills[k] = self._gap_fills.get(k, 0) + len(range(max(ep0, 1), max(ep1, 1)))
            merge = merge or sp.merge or any(_may_be_landed(r, _mark_of(layout, t0, h0, r.stream.key), fresh)
                                             for r in sp.ranges if not r.new)
            seq[str(k)] = [stop if sp.stop is None else sp.stop, sp.epochs_done]
            progress[k] = {i: v for i, v in sp.progress.items() if i >= sp.epochs_done - 1}
            if sp.rows:
                plan.live.append((k, sp.rows))
            plan.ranges += sp.ranges
            changed = True
        if steady is not None:
            for i, r in steady.reach.items():
                reach[layout.keys[i]] = r
            self._counts["lateKept"] += steady.late
            merge = merge or steady.merge
        if not changed or (not plan.live and not plan.ranges and not reach and not extra
                           and (h1 == h0).all() and (t1[h1] == t0[h1]).all()):
            # nothing to read (e.g. a reconnect while PI sends nothing): no empty batch; the
            # connection is planned with the next rows
            return start, plan
        since = [r.since for r in self._receivers if r.since]
        end: Dict[str, Any] = {"v": O.VERSION, "start": int(start["start"]), "run": self.run_id, "seq": seq,
                               "since": min(since) if since else int(start.get("since", start["start"])),
                               "marks": layout.encode(t1, h1), "merge": merge}
        if reach:
            end["from"] = O.encode_marks(reach)
        left = g1hi > g1lo
        if left.any():
            end["gaps"] = {"lo": layout.encode(g1lo, left), "hi": layout.encode(g1hi, left)}
        # what liveFirstAbove left to read after this batch: streams, and the longest (s)
        self._gaps_left = (int(left.sum()), float((g1hi - g1lo)[left].max()) / TICKS if left.any() else 0.0)
        if targets is None:                               # a batch planned anew: what the reader saw
            totals = self._totals(lag=False)[0]
            end["h"] = plan_health(now_ticks(), (b for _, rows in plan.live for b in rows), plan.ranges, totals,
                                   self._health_base, self._lost[lost_before:], len(self.unknown))
            self._health_base = totals
        # where each connection's archive ranges stand after this batch, for the batch after it
        # (kept per offset: planning the same start again, Spark's right, gives the same batch)
        end_key = _key(end)
        self._arrays[end_key] = (t1, h1, np.where(left, g1lo, 0), np.where(left, g1hi, 0))
        while len(self._arrays) > 4:
            self._arrays.pop(next(iter(self._arrays)))
        for k in range(len(shards)):
            if k in progress:
                self._progress[(k, end_key)] = progress[k]
            elif (k, start_key) in self._progress:
                self._progress[(k, end_key)] = self._progress[(k, start_key)]
        while len(self._progress) > 16 * max(1, len(shards)):
            self._progress.pop(next(iter(self._progress)))
        return end, plan

    def _plan_steady(self, states: Dict[int, Tuple[int, int, int, List[Epoch]]], spans_of: Dict[int, Tuple[int, int]],
                     spans: List[Tuple[int, int]], start: Dict[str, Any], same_run: bool,
                     t0: np.ndarray, h0: np.ndarray, g0lo: np.ndarray, g0hi: np.ndarray,
                     after_gaps: Optional[Tuple[np.ndarray, np.ndarray]]) -> Optional[SteadyAdmit]:
        """The shards in steady state (rows of one connection planned before, every stream marked, no
        gap left, none to plan), admitted in one pass (``admit_steady``); None when there are none."""
        if not same_run:
            return None
        picked: List[int] = []
        pieces: List[List[pa.RecordBatch]] = []
        cutoffs: List[np.ndarray] = []
        for k, (begin, ep0, _, epochs) in states.items():
            stop, ep1 = spans_of[k]
            a, b = spans[k]
            if (stop == begin or ep1 != ep0 or str(k) not in start["seq"] or not h0[a:b].all()
                    or (g0hi[a:b] > g0lo[a:b]).any()
                    or (after_gaps is not None and (after_gaps[1][a:b] > after_gaps[0][a:b]).any())):
                continue
            owner = [e for e in epochs if e.first_seq <= begin]
            if not owner or any(begin < e.first_seq < stop for e in epochs):
                continue
            picked.append(k)
            pieces.append([rows for _, rows in self._buffers[k].slice_seq(begin, stop)])
            cutoffs.append(owner[-1].cutoff)
        if not picked:
            return None
        return admit_steady(picked, pieces, [spans[k] for k in picked], self._all_webids(), cutoffs,
                            np.where(h0, t0, 0))

    def _all_webids(self) -> pa.Array:
        """Every chosen stream's Full WebID in shard order (``_layout``'s), as Arrow."""
        if self._webid_array is None:
            self._webid_array = pa.array([s.webid for shard in self.shards() for s in shard], pa.string())
        return self._webid_array

    def _live_first(self, states: Dict[int, Tuple[int, int, int, List[Epoch]]], spans_of: Dict[int, Tuple[int, int]],
                    spans: List[Tuple[int, int]], t0: np.ndarray, h0: np.ndarray, default: int, start_key: str,
                    again: bool) -> Optional[float]:
        """0 when the connections this batch looks at first have more than liveFirstAbove values to
        read from the archive above the marks, together (estimated at each channel's live rate):
        their gaps are then left to the batches after; else None. A batch planned again (``again``)
        follows its end offset instead."""
        if again:
            return 0.0
        values = 0.0
        for k, (_, ep0, _, epochs) in states.items():
            begun = self._progress.get((k, start_key)) or {}
            a, b = spans[k]
            for e in epochs:
                if ep0 <= e.index < spans_of[k][1] and e.index not in begun:
                    marks = np.where(h0[a:b], t0[a:b], default)
                    values += float(np.clip(e.cutoff - marks, 0, None).sum()) * self._receivers[k].value_rate() / TICKS
        return 0.0 if values > self.opts.live_first_above else None

    # -- planning -------------------------------------------------------------------------------
    def partitions(self, start: Dict[str, Any], end: Dict[str, Any]) -> List[InputPartition]:
        if start == end:                                  # Spark 4.0 names a restart's last offset so
            return []
        if end.get("run") == self.run_id:
            plan = self._plans.pop(_key(end), None)
            if plan is None:                              # not planned by latestOffset here: plan it again
                self._ensure_started()
                with self._paused():
                    _, plan = self._plan(start, targets={int(k): (v[0], v[1]) for k, v in end["seq"].items()}, after=end)
            source = "backfill"
        else:
            plan = self._rebuild(start, end)
            source = "replay"
            # a restart: Spark runs this batch again before it asks for the next offset; the
            # channels open now, so live values buffer while it runs (what each batch holds does not
            # change: the next one plans from this batch's marks to each connection's cutoff)
            self._ensure_started()
            self._replayed = (_key(end), self._open_before_replay(), self._rereads(end, plan.ranges))
        chunk = max(1, int(self.opts.replay_chunk * TICKS))
        rates = [r.value_rate() for r in self._receivers]
        rate = max(1.0, sum(rates) / len(rates)) if rates else 1.0   # as planned: at least 1 value/s per stream
        parts: List[InputPartition] = [PIArchivePartition(0, calls, source) for calls in
                                       group_ranges(plan.ranges, self.opts.archive_tasks, chunk, rate,
                                                    self.opts.max_archive_records_per_trigger)]
        with self._paused():
            packed = _pack(plan.live, self.opts.rows_per_partition)
        log.debug("planned %d live rows in %d partitions and %d archive partitions",
                  sum(p.rows for p in packed), len(packed), len(parts))
        return parts + packed

    def _open_before_replay(self) -> Set[int]:
        """Shards whose channel is open (its cutoff known) before the replay's archive read starts,
        waiting up to ``REPLAY_OPEN_WAIT`` s (at most connectTimeout) for them: for those, the batch
        after the replay need not re-read lateDataOverlap below the marks (``_plan``), a batch of
        its own (~2 s at 1,000 tags here) before the first live values."""
        self._wait_open(min(REPLAY_OPEN_WAIT, self.opts.connect_timeout))
        return {k for k, r in enumerate(self._receivers) if r.since}

    def _rereads(self, end: Dict[str, Any], ranges: List[ArchiveRange]) -> Set[str]:
        """Streams whose replay ranges reach from ``end``'s mark down to where the next batch's
        re-read would start: lateDataOverlap below it, not before the query's start."""
        marks = self._marks(end)
        overlap, first = int(self.opts.late_data_overlap * TICKS), int(end["start"])
        return {r.stream.key for r in ranges
                if r.hi == marks.get(r.stream.key) and r.lo <= max(r.hi - overlap, min(first, r.hi))}

    def _rebuild(self, start: Dict[str, Any], end: Dict[str, Any]) -> _Plan:
        """A batch planned by an earlier run (its buffer is gone): per stream, what PI archived in
        (start mark − lateDataOverlap, end mark], reaching back to ``from`` where the batch took
        older values, never before ``maxBackfill`` before that run's first cutoff."""
        O.check_version(end)
        m0, m1 = O.decode_marks(start.get("marks")), O.decode_marks(end.get("marks"))
        reach = O.decode_marks(end.get("from"))
        overlap = int(self.opts.late_data_overlap * TICKS)
        first = int(start["start"])
        floor = int(end.get("since", first)) - int(self.opts.max_backfill * TICKS)
        layout, _ = self._layout()
        g0, g1 = _gap_arrays(layout, start), _gap_arrays(layout, end)
        ranges = []
        for shard in self.shards():
            for s in shard:
                i = layout.index[s.key]
                spans = []
                hi = m1.get(s.key)
                if hi is not None:
                    lo = m0.get(s.key)
                    lo = reach.get(s.key, first) if lo is None else (lo - overlap if lo - overlap >= first else min(lo, first))
                    spans.append((max(min(lo, reach.get(s.key, lo)), floor), hi))
                # what the batch read of a gap left to read before it (at its start, not at its end)
                spans.append((int(g0[0][i]), int(g0[1][i])))
                for lo, hi in _minus(_union(spans), (int(g1[0][i]), int(g1[1][i]))):
                    ranges.append(ArchiveRange(s, lo, hi))
        return _Plan([], ranges)

    def commit(self, end: Dict[str, Any]) -> None:
        if end.get("run") != self.run_id:
            return
        # Spark commits an offset, then asks for the next one from it (``latestOffset`` commits its
        # start too): trim only the shards whose sequence moved since the last commit (at 1,000
        # channels, trimming them all twice a batch was ~16 ms of it)
        seq, before = end.get("seq", {}), self._trimmed
        for key, (upto, _) in seq.items():
            if before.get(key, (None,))[0] != upto and int(key) < len(self._buffers):
                self._buffers[int(key)].trim(int(upto))
        self._trimmed = seq

    def _totals(self, lag: bool = True) -> Tuple[Dict[str, Any], Dict[str, Dict[str, Any]]]:
        """The reader's running totals (and each shard's metrics; ``lag``: with their lag)."""
        shards = {str(i): {**r.metrics(lag), "gapFills": self._gap_fills.get(i, 0)} for i, r in enumerate(self._receivers)}
        totals: Dict[str, Any] = {k: sum(m[k] for m in shards.values()) for k in
                                  ("received", "buffered", "reconnects", "gapFills", "failedAttempts", "malformedFrames",
                                   "valueErrors", "repeatsDropped", "unknownWebIds")}
        totals.update(self._counts)
        totals["unknownStreams"] = len(self.unknown)
        totals["gapStreamsLeft"], totals["gapSecondsLeft"] = self._gaps_left
        lags = [m["lagSeconds"] for m in shards.values() if m["lagSeconds"] is not None]
        totals["maxLagSeconds"] = max(lags) if lags else None
        totals["channelsOpen"] = sum(1 for m in shards.values() if m["state"] == "open")
        totals["channels"] = len(shards)
        errors = [m["lastError"] for m in shards.values() if m.get("lastError")]
        totals["lastError"] = errors[-1] if errors else None
        totals["receiver"] = self.opts.receiver
        totals["receiverProcesses"] = len(self._procs)
        totals["gcFrozenObjects"] = frozen_count()            # what the start moved out of the collector's reach
        if self._loop is not None:       # the receiving loop's work (its CPU time: near 1 s per s = one core, its limit)
            totals.update(self._loop.metrics())
        elif self._procs:                # summed over the processes' loops (each one's limit: one core)
            loops = [p.metrics() for p in self._procs]
            totals.update({k: sum(m.get(k) or 0 for m in loops) for k in ("receiveMessages", "receiveBytes", "receiveCpuSeconds")})
            totals["receiverRestarts"] = sum(p.restarts for p in self._procs)
        return totals, shards

    def reportLatestOffset(self) -> Optional[Dict[str, Any]]:
        if not self._started:
            return None
        totals, shards = self._totals()
        report: Dict[str, Any] = {"run": self.run_id, "totals": totals, "shards": shards}
        if self.unknown:
            report["unknownStreams"] = self.unknown[:10]
        if self._lost:
            report["dataLoss"] = self._lost[-10:]
        return report

    def stop(self) -> None:
        # the loop stops with the channels, not after them: a loop waiting for room in a full buffer
        # (nothing commits any more) would keep every connection open, and each join waited 5 s
        for rec in self._procs or self._receivers:
            rec.stop()
        if self._loop is not None:
            self._loop.stop()
        deadline = time.monotonic() + 10
        for rec in self._procs or self._receivers:
            rec.join(max(0.1, deadline - time.monotonic()))
        if self._loop is not None:
            self._loop.join(max(0.1, deadline - time.monotonic()))
        if self._rest is not None:
            self._rest.close()

    # -- executor -------------------------------------------------------------------------------
    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        ingested = now_micros()
        if isinstance(partition, PIArchivePartition):
            yield from self._read_archive(partition, ingested)
            return
        with pa.ipc.open_stream(partition.payload) as reader:
            for batch in reader:
                if batch.num_rows:
                    yield to_contract(batch, ingested)

    def _read_archive(self, part: PIArchivePartition, ingested: int) -> Iterator[pa.RecordBatch]:
        # one REST session per executor process, shared by the tasks Spark runs in it in turn
        rest = shared_client(self.opts.url, self.opts.credentials, self.opts.ca_bundle, self.opts.connect_timeout,
                             retry_for=self.opts.rest_retry_timeout, proxy=self.opts.proxy)
        stats = ParseStats()
        log.debug("reading %r from the archive", part)
        declined = [False]
        for sl in part.calls:
            known = {s.webid: (s.name, s.path) for s in sl.streams}

            def fast(data: bytes) -> Optional[pa.RecordBatch]:
                # plain numeric values (the common case) straight to rows; anything else → parse_streams,
                # for the rest of the task too (streams with strings or errors would decline again)
                got = None if declined[0] else fast_batch(data, part.source, ingested, known)
                declined[0] = got is None
                return got[0] if got is not None else None

            # each call's answer stays within MaxReturnedItemsPerCall (see PIRestClient.recorded)
            page = page_for_span(sl.u - sl.t, self.opts.recorded_page_size)
            for got in rest.recorded([s.webid for s in sl.streams], sl.t, sl.u, page, self.opts.max_url_length, fast):
                if isinstance(got, pa.RecordBatch):
                    batch = got
                else:
                    cols = Columns()
                    parse_streams(got, cols, stats, part.source, ingested, known)
                    if not len(cols):
                        continue
                    batch = cols.to_arrow()
                batch = keep_in_ranges(batch, sl)
                if batch.num_rows:
                    yield to_contract(batch, ingested)
        if stats.malformed_frames or stats.value_errors or stats.unknown_webids:
            # executor side: rows with a problem carry it in ``error``; the rest is logged here
            log.warning("%s read: %d malformed answers, %d values with errors, %d unknown WebIDs; last: %s",
                        part.source, stats.malformed_frames, stats.value_errors, stats.unknown_webids, stats.last_error)


def _union(spans: List[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """(lo, hi] spans (empty ones dropped) as disjoint sorted spans."""
    out: List[Tuple[int, int]] = []
    for lo, hi in sorted(sp for sp in spans if sp[1] > sp[0]):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _minus(spans: List[Tuple[int, int]], cut: Tuple[int, int]) -> List[Tuple[int, int]]:
    """``spans`` without (lo, hi] ``cut`` (empty: nothing removed)."""
    if cut[1] <= cut[0]:
        return spans
    out = []
    for lo, hi in spans:
        if min(hi, cut[0]) > lo:
            out.append((lo, min(hi, cut[0])))
        if hi > max(lo, cut[1]):
            out.append((max(lo, cut[1]), hi))
    return out


#: how long a batch waits to read the gaps left to read for a connection that has not landed its
#: first rows (a quiet channel's gaps are then read without them)
FIRST_ROWS_WAIT = 30.0


def _first_rows_due(epochs: List[Epoch], ep0: int, begin: int, now: float) -> bool:
    """Whether a connection of the shard that an earlier batch looked at (its gap left to read, or
    read) has landed none of its rows yet and opened less than ``FIRST_ROWS_WAIT`` ago: the gaps
    left to read then wait, so its first live values do not come with an archive read (they would
    have, when the batch that left its gap was planned before they came)."""
    return any(e.index < ep0 and begin <= e.first_seq and now - e.opened < FIRST_ROWS_WAIT for e in epochs)


def _gap_arrays(layout: O.MarkArrays, offset: Dict[str, Any]) -> Tuple[np.ndarray, np.ndarray]:
    """The gaps an offset leaves to read, per stream of ``layout``: (lo, hi] (lo = hi = 0: none)."""
    doc = offset.get("gaps")
    if not doc:
        return np.zeros(len(layout.keys), dtype=np.int64), np.zeros(len(layout.keys), dtype=np.int64)
    lo, has_lo = layout.from_marks(O.decode_marks(doc.get("lo")))
    hi, has_hi = layout.from_marks(O.decode_marks(doc.get("hi")))
    both = has_lo & has_hi & (hi > lo)
    return np.where(both, lo, 0), np.where(both, hi, 0)


def _mark_of(layout: O.MarkArrays, ticks: np.ndarray, has: np.ndarray, key: str) -> Optional[int]:
    i = layout.index.get(key)
    return int(ticks[i]) if i is not None and has[i] else None


def _may_be_landed(r: ArchiveRange, mark: Optional[int], fresh: bool) -> bool:
    """Whether an archive range may hold rows the table has (its batch is then merged): below its
    stream's mark at the batch's start (a restart's re-read before the marks), or, for a stream
    without a mark, unless the query began at "latest" in this run (nothing of the stream can be
    in the table then; a start time may reach rows an earlier query landed). A range starting at
    its stream's mark (a channel opened late, a reconnect's gap) holds only new rows."""
    return not fresh if mark is None else r.lo < mark


def _fair_share(pending: Dict[str, int], budget: int) -> Dict[str, int]:
    """Split ``budget`` rows over shards so no shard starves (water-filling)."""
    give = {k: 0 for k in pending}
    left = dict(pending)
    while budget > 0 and any(left.values()):
        active = [k for k, v in left.items() if v > 0]
        share = max(1, budget // len(active))
        for k in active:
            take = min(share, left[k], budget)
            give[k] += take
            left[k] -= take
            budget -= take
            if budget == 0:
                break
    return give


def _options_doc() -> str:
    return "\n".join(f"    {name:<24} default {default if default is not None else '(none)'}: {text}"
                     for name, (default, text) in OPTIONS.items())


class PIWebSocketDataSource(DataSource):
    __doc__ = f"""Streams PI System values from PI Web API channels (WebSockets) into Spark.

    One row per PI value in the data contract (``pi_stream_source.schema.CONTRACT_SCHEMA``):
    tag_webid, tag_name, tag_path, timestamp (UTC), value, value_string, digital_state_code,
    is_system_state, good, questionable, substituted, annotated, uom, error, source
    (live | snapshot | backfill | replay), received_timestamp, ingestion_timestamp, partition_date.

    Streams are chosen by ``webIds``, ``paths``, ``dataServer`` + ``nameFilter``, or
    ``elementPath``; they are split into shards of ``tagsPerChannel`` (one channel and one Spark
    partition per shard). A dropped or stalled channel reconnects with backoff and the gap is read
    from the PI archive (``streamsets/recorded``); after a query restart the checkpoint's per-tag
    high-water marks let the reader rebuild any planned batch and fill the time the query was down
    (up to ``maxBackfill``). Metrics (per-shard state, lag, buffer, reconnects, gap fills, parse
    errors) appear in ``query.lastProgress["sources"][0]["latestOffset"]``.

    Options (case-insensitive)::

{_options_doc()}

    Examples
    --------
    >>> import pi_stream_source
    >>> pi_stream_source.register(spark)                                   # doctest: +SKIP
    >>> df = (spark.readStream.format("pi_websocket")                      # doctest: +SKIP
    ...       .option("url", "https://pi.example.com/piwebapi")
    ...       .option("paths", r"\\\\PISRV1\\SINUSOID,\\\\PISRV1\\CDT158")
    ...       .option("authType", "basic").option("username", "svc").option("password", pw)
    ...       .option("startingPosition", "*-2h")
    ...       .load())
    >>> (df.writeStream.format("delta").option("checkpointLocation", "/chk/pi")  # doctest: +SKIP
    ...    .partitionBy("partition_date").toTable("main.bronze.pi_streaming_timeseries"))
    """

    @classmethod
    def name(cls) -> str:
        return "pi_websocket"

    def __init__(self, options: Dict[str, str]) -> None:
        super().__init__(options)
        self._parsed = parse_options(options)

    def schema(self) -> StructType:
        return CONTRACT_SCHEMA

    def reader(self, schema: StructType) -> Any:
        raise PIOptionError("pi_websocket is a streaming source: use spark.readStream.format('pi_websocket') "
                            "(with .trigger(availableNow=True) for a run that stops by itself)")

    def streamReader(self, schema: StructType) -> DataSourceStreamReader:
        return PIStreamReader(self._parsed)
