"""Archive reads in a bounded number of bounded tasks, one REST session per executor process (issue 16).

A restart rebuilds the batch an earlier run planned from the archive, per stream (start mark −
lateDataOverlap, end mark]; here 1,000 streams whose marks all differ, spread over a day (the
case that planned about one task per stream before). The reader plans, Spark-style: every task
reads through its own unpickled copy of the reader, as a reused Python worker does."""
from __future__ import annotations

import pickle
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import List
from urllib.parse import parse_qs, urlsplit

import orjson

import numpy as np
import pytest

from pi_stream_source import offsets as O
from pi_stream_source.options import parse_options
from pi_stream_source.pitime import parse_ticks
from pi_stream_source.planning import ArchiveRange, Stream, group_ranges
from pi_stream_source.source import PIArchivePartition, PIStreamReader

TICKS = 10_000_000
HOUR = 3600 * TICKS


class Relay:
    """A TCP relay in front of the simulator that counts the connections clients open to it."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.accepted = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.accepted += 1
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.server.close()


def _restart_batch(sim, spread_hours: float, seed: int):
    """(start, end) offsets of a batch an earlier run planned: end marks at PI's newest step,
    start marks all different, up to ``spread_hours`` earlier."""
    rng = np.random.default_rng(seed)
    newest = sim.tick_time(sim.last_tick()) * 10
    keys = [Stream(t.webid, None, None).key for t in sim.tags]
    back = rng.choice(np.arange(HOUR // TICKS, int(spread_hours * 3600)), size=len(keys), replace=False) * TICKS
    m0 = {k: int(newest - b - 1234 * i) for i, (k, b) in enumerate(zip(keys, back))}
    m1 = {k: int(newest) for k in keys}
    first = min(m0.values()) - HOUR
    start = {"v": O.VERSION, "start": first, "run": "an-earlier-run", "seq": {"0": [10, 1]}, "since": first,
             "marks": O.encode_marks(m0), "merge": False}
    end = {**start, "seq": {"0": [20, 1]}, "marks": O.encode_marks(m1)}
    return start, end, m0, m1


def test_grouping_is_bounded_whatever_the_spread_of_marks():
    base = 1_795_000_000 * TICKS
    rng = np.random.default_rng(3)
    for spread in (60, 3600, 86400, 3 * 86400):
        ranges = [ArchiveRange(Stream(f"F1DPs{i}", None, None), int(base - rng.integers(1, spread) * TICKS), base)
                  for i in range(5000)]
        tasks = group_ranges(ranges, tasks=4, chunk=HOUR, rate=0.01, max_task_values=10_000_000)
        assert 1 <= len(tasks) <= 4, spread
        # every range is read whole, exactly once (pieces tile it)
        pieces = sorted((s.webid, lo, hi) for task in tasks for c in task for s, lo, hi in zip(c.streams, c.lo, c.hi))
        by = {}
        for w, lo, hi in pieces:
            by.setdefault(w, []).append((lo, hi))
        for r in ranges:
            got = by[r.stream.webid]
            assert got[0][0] == r.lo and got[-1][1] == r.hi
            assert all(a[1] == b[0] for a, b in zip(got, got[1:]))
        # a call reads each of its streams at most max(60 s, a quarter of its piece) early
        for task in tasks:
            for c in task:
                assert len({s.key for s in c.streams}) == len(c.streams)
                for lo, hi in zip(c.lo, c.hi):
                    assert lo - c.t <= max(60 * TICKS, (hi - lo) // 4) and c.u >= hi


def test_restart_of_1000_streams_with_different_marks_reads_the_archive_exactly_in_few_tasks(simulator):
    sim = simulator(tags=1000, rate=1, tag_every=[300], history_seconds=2 * 86400, seed=16)
    relay = Relay(int(sim.url.split(":")[2].split("/")[0]))
    try:
        opts = {"url": f"http://127.0.0.1:{relay.port}/piwebapi", "webIds": ",".join(t.webid for t in sim.tags),
                "archiveTasks": "4", "maxArchiveRecordsPerTrigger": "1000000000"}
        reader = PIStreamReader(parse_options(opts))
        start, end, m0, m1 = _restart_batch(sim, 24, seed=5)
        parts = reader.partitions(start, end)
        reader.stop()
        assert parts and all(isinstance(p, PIArchivePartition) for p in parts)
        assert len(parts) <= 4, f"{len(parts)} archive tasks for 1,000 streams"
        before = relay.accepted
        rows: List = []
        for p in parts:                       # each task: its own copy of the reader, one process
            task_reader = pickle.loads(pickle.dumps(reader))
            for batch in task_reader.read(pickle.loads(pickle.dumps(p))):
                rows += zip(batch.column("tag_webid").to_pylist(),
                            batch.column("timestamp").cast("int64").to_pylist(),
                            batch.column("source").to_pylist())
        # one REST session for every task of this process (keep-alive): one connection
        assert relay.accepted - before == 1, f"{relay.accepted - before} connections for {len(parts)} tasks"
        assert {s for _, _, s in rows} == {"replay"}
        overlap = 10 * TICKS
        got, want = {}, {}
        for w, ts, _ in rows:
            got.setdefault(w, []).append(ts)
        for t in sim.tags:
            key = Stream(t.webid, None, None).key
            lo = max(m0[key] - overlap, start["start"])
            want[t.webid] = [ts // 10 for ts, _ in sim.archive(t.webid, lo + 1, m1[key], ticks=True)]
        assert sum(map(len, want.values())) > 100_000
        assert {w: sorted(v) for w, v in got.items()} == {w: v for w, v in want.items() if v}
    finally:
        relay.close()


def test_archive_tasks_option_is_checked():
    from pi_stream_source.errors import PIOptionError

    with pytest.raises(PIOptionError, match="archiveTasks"):
        parse_options({"url": "http://x/piwebapi", "webIds": "F1DPa", "archiveTasks": "0"})
    with pytest.raises(PIOptionError, match="replayTagsPerPartition.*archiveTasks"):
        parse_options({"url": "http://x/piwebapi", "webIds": "F1DPa", "replayTagsPerPartition": "200"})


# ---- the typed fast path of archive pages: paging at duplicate timestamps ---------------------------
SERIES = {"F1DPw": [1, 2, 2, 2, 3, 3, 4, 5, 5, 5, 5, 6], "F1DPv": list(range(1, 11))}


def _stamp(s: int) -> str:
    return f"2024-01-01T00:00:{s:02d}Z"


class _Pages(BaseHTTPRequestHandler):
    """``streamsets/recorded`` over SERIES: values at or after startTime, maxCount per stream (PI's
    paging, with several values at one timestamp, which only the skip count pages past)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        query = parse_qs(urlsplit(self.path).query)
        start, count = parse_ticks(query["startTime"][0]), int(query["maxCount"][0])
        items = []
        for w in query["webId"]:
            vals = [{"Timestamp": _stamp(s), "Value": float(i), "Good": True} for i, s in enumerate(SERIES[w])
                    if parse_ticks(_stamp(s)) >= start][:count]
            items.append({"WebId": w, "Name": w[-1], "Items": vals})
        body = orjson.dumps({"Links": {}, "Items": items})
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.parametrize("page", [5, 6, 7, 100])      # above the most values at one stamp (4): PI has no cursor
def test_archive_pages_decoded_to_rows_page_like_the_general_path(page):
    from pi_stream_source.auth import Credentials
    from pi_stream_source.parse import Columns, ParseStats, fast_batch, parse_streams
    from pi_stream_source.rest import PIRestClient

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    known = {w: (w[-1], None) for w in SERIES}
    try:
        client = PIRestClient(f"http://127.0.0.1:{server.server_address[1]}/piwebapi", Credentials(), timeout=5,
                              retry_for=0)
        fast_rows, kinds = [], set()
        for got in client.recorded(list(SERIES), 0, parse_ticks("2024-01-02T00:00:00Z"), page,
                                   fast=lambda data: (fast_batch(data, "backfill", 1, known) or (None,))[0]):
            kinds.add(type(got).__name__)
            fast_rows += zip(got.column("tag_webid").to_pylist(), got.column("value").to_pylist())
        cols, stats = Columns(), ParseStats()
        for got in client.recorded(list(SERIES), 0, parse_ticks("2024-01-02T00:00:00Z"), page):
            parse_streams(got, cols, stats, "backfill", 1, known)
        client.close()
    finally:
        server.shutdown()
        server.server_close()
    want = sorted((w, float(i)) for w, stamps in SERIES.items() for i in range(len(stamps)))
    assert kinds == {"RecordBatch"}
    assert sorted(fast_rows) == want
    assert sorted(zip(cols.tag_webid, cols.value)) == want
