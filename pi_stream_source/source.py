"""The ``pi_websocket`` Spark data source: PI Web API channels as a Structured Streaming source."""
from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.streaming.datasource import ReadAllAvailable, ReadLimit, ReadMaxRows, SupportsTriggerAvailableNow
from pyspark.sql.types import StructType

from .channel import ChannelReceiver, ShardBuffer, shard_webids
from .options import OPTIONS, SourceOptions, parse_options
from .pitime import MICROS, now_micros
from .rest import PIRestClient
from .schema import ARROW_SCHEMA, BUFFER_SCHEMA, CONTRACT_SCHEMA

log = logging.getLogger(__name__)
_DAY_US = 86400 * MICROS


def to_contract(batch: pa.RecordBatch, ingested: int) -> pa.RecordBatch:
    """Buffer rows → the data contract: timestamps as UTC ``timestamp[us]``, plus
    ``ingestion_timestamp`` and ``partition_date`` (the UTC date of ``timestamp``)."""
    ts = batch.column(3)
    ts_type = ARROW_SCHEMA.field("timestamp").type
    days = pc.floor(pc.divide(pc.cast(ts, pa.float64()), float(_DAY_US)))
    date = pc.cast(pc.cast(days, pa.int32()), pa.date32())
    n = batch.num_rows
    arrays = list(batch.columns)
    arrays[3] = ts.cast(ts_type)
    arrays[15] = batch.column(15).cast(ts_type)
    arrays.append(pa.array(np.full(n, ingested, dtype=np.int64)).cast(ts_type))
    arrays.append(date)
    return pa.RecordBatch.from_arrays(arrays, schema=ARROW_SCHEMA)


def _ipc(batches: List[pa.RecordBatch]) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, BUFFER_SCHEMA) as writer:
        for b in batches:
            writer.write_batch(b)
    return sink.getvalue().to_pybytes()


@dataclass
class PIInputPartition(InputPartition):
    """Rows of one shard for one micro-batch, as Arrow IPC bytes (read on an executor)."""
    shard: int
    rows: int
    payload: bytes

    def __repr__(self) -> str:
        return f"PIInputPartition(shard={self.shard}, rows={self.rows})"


class PIStreamReader(DataSourceStreamReader, SupportsTriggerAvailableNow):
    """Driver side: one channel per shard, buffers, offsets. Executor side: ``read()`` only.

    Offset (JSON in the checkpoint): ``{"run": id of the reader that buffered the rows,
    "since": start of the run (epoch µs), "shards": {"0": next sequence, …}}``.
    """

    def __init__(self, options: SourceOptions) -> None:
        self.opts = options
        self.run_id = uuid.uuid4().hex[:16]
        self.shards = shard_webids(options)
        self._lock = threading.Lock()
        self._started = False
        self._buffers: List[ShardBuffer] = []
        self._receivers: List[ChannelReceiver] = []
        self._rest: Optional[PIRestClient] = None
        self._initial: Optional[Dict[str, Any]] = None
        self._target: Optional[Dict[str, int]] = None

    # Executors get a pickled copy: no sockets, threads or buffers travel with it.
    def __getstate__(self) -> Dict[str, Any]:
        return {"opts": self.opts, "run_id": self.run_id, "shards": self.shards}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(state["opts"])
        self.run_id = state["run_id"]

    def __repr__(self) -> str:
        return f"PIStreamReader(url={self.opts.url!r}, streams={len(self.opts.webids)}, shards={len(self.shards)})"

    # -- driver --------------------------------------------------------------------------------
    def _ensure_started(self) -> None:
        with self._lock:
            if self._started:
                return
            since = now_micros()
            self._rest = PIRestClient(self.opts.url, self.opts.credentials, self.opts.ca_bundle, self.opts.connect_timeout)
            initial = self.opts.starting_position == "snapshot"
            for i, webids in enumerate(self.shards):
                buf = ShardBuffer()
                rec = ChannelReceiver(i, webids, self.opts, buf, since, self._rest, initial_values=initial)
                self._buffers.append(buf)
                self._receivers.append(rec)
            for rec in self._receivers:
                rec.start()
            self._initial = {"run": self.run_id, "since": since,
                             "shards": {str(i): 0 for i in range(len(self.shards))}}
            self._started = True
            log.info("pi_websocket: %d streams in %d channels to %s", len(self.opts.webids), len(self.shards), self.opts.url)

    def _raise_failures(self) -> None:
        for rec in self._receivers:
            if rec.failure is not None:
                raise rec.failure

    def initialOffset(self) -> Dict[str, Any]:
        self._ensure_started()
        assert self._initial is not None
        return self._initial

    def getDefaultReadLimit(self) -> ReadLimit:
        if self.opts.max_records_per_trigger:
            return ReadMaxRows(self.opts.max_records_per_trigger)
        return ReadAllAvailable()

    def prepareForTriggerAvailableNow(self) -> None:
        self._ensure_started()
        self._target = {str(i): b.next_seq for i, b in enumerate(self._buffers)}

    def latestOffset(self, start: Dict[str, Any], limit: ReadLimit) -> Dict[str, Any]:
        self._ensure_started()
        self._raise_failures()
        mine = start.get("run") == self.run_id
        begin = {k: (int(v) if mine else 0) for k, v in start.get("shards", {}).items()}
        if not mine:
            begin = {str(i): 0 for i in range(len(self.shards))}
        avail = {str(i): b.next_seq for i, b in enumerate(self._buffers)}
        if self._target is not None:
            avail = {k: min(v, self._target.get(k, v)) for k, v in avail.items()}
        pending = {k: max(0, avail[k] - begin.get(k, 0)) for k in avail}
        if isinstance(limit, ReadMaxRows):
            pending = _fair_share(pending, limit.maxRows)
        end = {k: begin.get(k, 0) + pending[k] for k in avail}
        if mine and end == begin:
            return start
        return {"run": self.run_id, "since": self._initial["since"] if self._initial else start.get("since"),
                "shards": end}

    def partitions(self, start: Dict[str, Any], end: Dict[str, Any]) -> List[InputPartition]:
        self._ensure_started()
        if end.get("run") != self.run_id:
            raise RuntimeError("pi_websocket: this batch was planned by an earlier run of the query and "
                               "rebuilding it from the PI archive is not available in this build")
        mine = start.get("run") == self.run_id
        parts: List[InputPartition] = []
        for key, stop in end["shards"].items():
            begin = int(start.get("shards", {}).get(key, 0)) if mine else 0
            if stop <= begin:
                continue
            batches = self._buffers[int(key)].slice(begin, stop)
            rows = sum(b.num_rows for b in batches)
            parts.append(PIInputPartition(int(key), rows, _ipc(batches)))
        return parts

    def commit(self, end: Dict[str, Any]) -> None:
        if end.get("run") != self.run_id:
            return
        for key, upto in end.get("shards", {}).items():
            self._buffers[int(key)].trim(int(upto))

    def reportLatestOffset(self) -> Optional[Dict[str, Any]]:
        if not self._started:
            return None
        shards = {str(i): r.metrics() for i, r in enumerate(self._receivers)}
        totals = {k: sum(m[k] for m in shards.values()) for k in
                  ("received", "buffered", "reconnects", "gapFills", "gapValues", "malformedFrames",
                   "valueErrors", "repeatsDropped", "unknownWebIds")}
        lags = [m["lagSeconds"] for m in shards.values() if m["lagSeconds"] is not None]
        totals["maxLagSeconds"] = max(lags) if lags else None
        totals["channelsOpen"] = sum(1 for m in shards.values() if m["state"] == "open")
        return {"run": self.run_id, "totals": totals, "shards": shards}

    def stop(self) -> None:
        for rec in self._receivers:
            rec.stop()
        for rec in self._receivers:
            rec.join(5)
        if self._rest is not None:
            self._rest.close()

    # -- executor -------------------------------------------------------------------------------
    def read(self, partition: PIInputPartition) -> Iterator[pa.RecordBatch]:
        ingested = now_micros()
        with pa.ipc.open_stream(partition.payload) as reader:
            for batch in reader:
                if batch.num_rows:
                    yield to_contract(batch, ingested)


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


class PIWebSocketDataSource(DataSource):
    """Streams PI values from PI Web API channels into Spark. Placeholder manual; see README."""

    @classmethod
    def name(cls) -> str:
        return "pi_websocket"

    def __init__(self, options: Dict[str, str]) -> None:
        super().__init__(options)
        self._parsed = parse_options(options)

    def schema(self) -> StructType:
        return CONTRACT_SCHEMA

    def streamReader(self, schema: StructType) -> DataSourceStreamReader:
        return PIStreamReader(self._parsed)
