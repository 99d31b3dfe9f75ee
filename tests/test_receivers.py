"""Channels in receiving processes (option ``receiverProcesses``, ``receivers.py``): real Spark, real
Delta, the simulator. The table must equal what PI archived whichever process received, when one of
those processes is killed, and when the query restarts with a different number of them."""
from __future__ import annotations

import json
import os
import signal

import psutil
import pytest
from pyspark.errors import StreamingQueryException

from pi_stream_source import webid as W
from pi_stream_source.receivers import auto_processes
from pi_stream_source.testing import checkpoint_start, finish, start_stream, wait_until

from test_source import expected, landed, run


def receiving_processes():
    """This test's receiving processes: descendants of this process (through Spark's JVM and the
    source's Python runner) started as ``python -m pi_stream_source.receivers``."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "pi_stream_source.receivers" in " ".join(p.cmdline()):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def totals(q):
    return json.loads(q.lastProgress["sources"][0]["latestOffset"])["totals"]


def test_channels_in_receiving_processes_land_exactly_when_one_is_killed_and_across_restarts(spark, simulator, tmp_path):
    """12 tags in 4 channels over 2 receiving processes, Basic auth: the table equals the archive after
    a channel drop and after one receiving process is killed (it is started again; its channels'
    gaps come from the archive); then the query restarts on the same checkpoint with the channels
    in the reader's own process, and again with 3 receiving processes, its WebIDs given in another
    form than before (through ``write_stream``: a
    restart re-reads ``lateDataOverlap`` below the marks and merges it)."""
    sim = simulator(tags=12, rate=5, seed=31, auth="basic")
    auth = {"authType": "basic", "username": sim.config.username, "password": sim.config.password}
    # WebIDs as a user may paste them: IDOnly, PathOnly and Full mixed (the restarts below use Full only)
    forms = ["IDOnly", "PathOnly", "Full"]
    mixed = [W.point_in_form(t.webid, forms[i % 3]) for i, t in enumerate(sim.tags)]
    q, table, ck = run(spark, sim, tmp_path, seconds_of_values=1, tagsPerChannel=3, receiverProcesses=2, merge=True,
                       webids=mixed, **auth)
    wait_until(lambda: sim.channel_count() == 4, 60, what="4 channels")
    procs = receiving_processes()
    assert len(procs) == 2, [p.cmdline() for p in procs]
    for p in procs:                                   # the options (and their secrets) went over a pipe
        assert sim.config.password not in " ".join(p.cmdline())
        assert sim.config.password not in json.dumps(p.environ())
    sent = sim.stats["values_sent"]
    sim.drop_channels(abrupt=True)
    wait_until(lambda: sim.channel_count() == 4 and sim.stats["values_sent"] > sent + 60, 60,
               what="the channels back after a reset")
    procs[0].send_signal(signal.SIGKILL)
    sent = sim.stats["values_sent"]
    wait_until(lambda: len(receiving_processes()) == 2 and sim.channel_count() == 4 and
               sim.stats["values_sent"] > sent + 120, 90, what="the killed receiving process started again")
    wait_until(lambda: q.lastProgress and totals(q).get("receiverRestarts", 0) >= 1, 30, what="the restart counted")
    finish(q, sim, spark, table)
    got, dupes, _ = landed(spark, table)
    assert not dupes and got == expected(sim, checkpoint_start(ck))
    t = totals(q)
    assert t["receiverProcesses"] == 2 and t["channels"] == 4 and t["receiveMessages"] > 0
    assert t["reconnects"] >= 4 and t["gapFills"] >= 4
    wait_until(lambda: not receiving_processes(), 30, what="the receiving processes ending with the query")

    for processes in (0, 3):                           # restarts with another number of processes
        sim.set_stalled(False)
        q = start_stream(spark, sim, table, ck, tagsPerChannel=3, receiverProcesses=processes, merge=True, **auth)
        sent = sim.stats["values_sent"]
        wait_until(lambda: sim.stats["values_sent"] > sent + 120 or q.exception() is not None, 90,
                   what="values after the restart")
        assert len(receiving_processes()) == processes
        finish(q, sim, spark, table)
        got, dupes, _ = landed(spark, table)
        assert not dupes and got == expected(sim, checkpoint_start(ck))
        assert totals(q)["receiverProcesses"] == processes


def test_a_refused_channel_in_a_receiving_process_fails_the_query_clearly(spark, simulator, tmp_path):
    sim = simulator(tags=2, auth="basic")
    q = start_stream(spark, sim, str(tmp_path / "a"), str(tmp_path / "a_ck"), authType="basic", receiverProcesses=1,
                     username=sim.config.username, password="not-the-password-456")
    with pytest.raises(StreamingQueryException) as info:
        q.awaitTermination(90)
    text = str(info.value)
    assert "401" in text and "credentials refused" in text and "not-the-password-456" not in text
    wait_until(lambda: not receiving_processes(), 30, what="the receiving process ending with the query")


def test_auto_uses_the_readers_own_loop_below_8_cores_and_one_process_per_4_cores_above():
    assert [auto_processes(c, 1000) for c in (1, 2, 4, 7, 8, 16, 64)] == [0, 0, 0, 0, 2, 4, 16]
    assert auto_processes(16, 3) == 3 and auto_processes(16, 1) == 1 and auto_processes(None, 10) == 0
    assert auto_processes(os.cpu_count(), 10) == (0 if (os.cpu_count() or 1) < 8 else min(10, os.cpu_count() // 4))


@pytest.mark.parametrize("processes", [0, 2])
def test_stop_ends_every_channel_promptly_when_the_buffer_is_full(simulator, processes):
    """A query stopped while its buffer is full (nothing commits any more): the reader's stop() must
    end its 20 channels together. It stopped the receiving loop only after joining each channel, and
    each join waited 5 s for a connection the blocked loop kept open (100 s here; 80 min at 1,000
    channels)."""
    import time

    from pi_stream_source.options import parse_options
    from pi_stream_source.source import PIStreamReader

    sim = simulator(tags=40, rate=50, seed=41)
    reader = PIStreamReader(parse_options({"url": sim.url, "webIds": ",".join(t.webid for t in sim.tags),
                                           "tagsPerChannel": "2", "maxBufferRecords": "1000",
                                           "receiverProcesses": str(processes)}))
    try:
        reader.awaitStart()
        assert len(reader._receivers) == 20
        wait_until(lambda: reader._budget.rows >= 1000, 60, what="a full buffer")
    finally:
        t0 = time.monotonic()
        reader.stop()
        took = time.monotonic() - t0
    assert took < 30, f"stop() took {took:.0f}s"
    wait_until(lambda: sim.channel_count() == 0, 30, what="every channel closed")
    assert not receiving_processes()


@pytest.mark.parametrize("bad", ["-1", "many", "257", "1.5"])
def test_a_bad_receiver_processes_value_names_the_option(bad):
    from pi_stream_source.errors import PIOptionError
    from pi_stream_source.options import parse_options

    with pytest.raises(PIOptionError) as info:
        parse_options({"url": "http://127.0.0.1:1/piwebapi", "webIds": "F1DPabc", "receiverProcesses": bad})
    assert "receiverProcesses" in str(info.value) and repr(bad).strip("'") in str(info.value)
    assert parse_options({"url": "http://127.0.0.1:1/piwebapi", "webIds": "F1DPabc",
                          "receiverProcesses": " AUTO "}).receiver_processes is None
