"""Fault injection: every fault seen from a third-party client, and the oracle (sent_values,
archive) staying exact under it."""
from __future__ import annotations

import time

import orjson
import pytest
import requests
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus
from websockets.sync.client import connect

from pi_stream_source.pitime import format_ts, parse_ts
from pi_stream_source.simulator.ticks import format_ticks
from pi_stream_source.simulator.cli import run_command
from pi_stream_source.testing import wait_until
from pi_swagger import validate
from test_simulator_channels import adhoc, collect, recv_json, values_of


def test_clean_drop_and_abrupt_reset(simulator):
    sim = simulator(tags=2, rate=10)
    url = adhoc(sim, [t.webid for t in sim.tags])
    with connect(url, open_timeout=10) as ws:
        recv_json(ws)
        assert sim.drop_channels() == 1
        with pytest.raises(ConnectionClosed) as info:
            for _ in range(50):
                ws.recv(timeout=5)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001       # a close frame
    with connect(url, open_timeout=10) as ws:
        recv_json(ws)
        assert sim.drop_channels(abrupt=True) == 1
        with pytest.raises(ConnectionClosedError) as info:
            for _ in range(50):
                ws.recv(timeout=5)
        assert info.value.rcvd is None                                             # no close frame: a reset
    wait_until(lambda: sim.channel_count() == 0, 5, what="channels closed")


def test_drop_one_channel_of_several(simulator):
    sim = simulator(tags=2, rate=10)
    with connect(adhoc(sim, [sim.tags[0].webid]), open_timeout=10) as a, \
            connect(adhoc(sim, [sim.tags[1].webid]), open_timeout=10) as b:
        recv_json(a), recv_json(b)
        first = min(c["id"] for c in sim.channels())
        assert sim.drop_channels(abrupt=True, channel=first) == 1
        with pytest.raises(ConnectionClosed):
            for _ in range(50):
                a.recv(timeout=5)
        recv_json(b)                                                               # the other one lives on
        assert sim.channel_count() == 1


def test_stall_keeps_the_socket_open_and_the_backlog_follows(simulator):
    sim = simulator(tags=3, rate=20)
    webids = [t.webid for t in sim.tags]
    with connect(adhoc(sim, webids, "&heartbeatRate=1"), open_timeout=10) as ws:
        got = collect(ws, 0.3)
        sim.set_stalled(True)
        time.sleep(0.1)
        collect(ws, 0.1, got)                      # whatever was in flight
        with pytest.raises(TimeoutError):          # no values, no heartbeats
            ws.recv(timeout=1.0)
        sim.set_stalled(False)
        msg = recv_json(ws)
        assert sum(len(s["Items"]) for s in msg["Items"]) >= 3 * 15    # one message with the ~1 s backlog
        for w, vals in values_of(msg).items():
            for ts, v, _ in vals:
                got.setdefault(w, {})[ts] = v
        collect(ws, 0.3, got)
        sim.set_stalled(True)
        collect(ws, 0.3, got)
    sent = sim.sent_values()
    assert {w: dict(v) for w, v in sent.items()} == got                 # the oracle is exact
    for w in webids:                                                     # and has no hole
        stamps = [ts for ts, _ in sent[w]]
        assert stamps == list(range(stamps[0], stamps[-1] + 1, sim.period_us))


def test_stall_one_channel(simulator):
    sim = simulator(tags=2, rate=20)
    with connect(adhoc(sim, [sim.tags[0].webid]), open_timeout=10) as a, \
            connect(adhoc(sim, [sim.tags[1].webid]), open_timeout=10) as b:
        recv_json(a), recv_json(b)
        ids = sorted(c["id"] for c in sim.channels())
        sim.set_stalled(True, channel=ids[0])
        collect(a, 0.2)
        with pytest.raises(TimeoutError):
            a.recv(timeout=0.6)
        recv_json(b)


def test_restart_keeps_the_port_and_the_archive(simulator):
    sim = simulator(tags=2, rate=10, history_seconds=5)
    w = sim.tags[0].webid
    port = sim.config.port
    with connect(adhoc(sim, [w]), open_timeout=10) as ws:
        recv_json(ws)
        sim.restart(downtime=1.0)
        with pytest.raises(ConnectionClosed):
            for _ in range(50):
                ws.recv(timeout=5)
    assert sim.config.port == port
    r = requests.get(sim.url + f"/streams/{w}/recorded", params={"startTime": "*-10s"}, timeout=10)
    items = r.json()["Items"]
    stamps = [parse_ts(i["Timestamp"]) for i in items]
    assert stamps == list(range(stamps[0], stamps[-1] + 1, sim.period_us))      # no hole over the downtime
    assert [(parse_ts(i["Timestamp"]), i["Value"]) for i in items] == sim.archive(w, stamps[0], stamps[-1])
    with connect(adhoc(sim, [w]), open_timeout=10) as ws:
        recv_json(ws)


def test_restart_refuses_connections_while_down(simulator):
    import threading

    sim = simulator(tags=1, rate=10)
    t = threading.Thread(target=sim.restart, kwargs={"downtime": 1.5})
    t.start()
    try:
        time.sleep(0.5)
        with pytest.raises(requests.ConnectionError):
            requests.get(sim.url + "/", timeout=2)
    finally:
        t.join(30)
    assert requests.get(sim.url + "/", timeout=5).status_code == 200


def test_malformed_frame_then_valid_messages(simulator):
    sim = simulator(tags=2, rate=10)
    with connect(adhoc(sim, [t.webid for t in sim.tags]), open_timeout=10) as ws:
        recv_json(ws)
        assert sim.inject_malformed() == 1
        raw = ws.recv(timeout=5)
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(raw)
        validate(recv_json(ws), "Items[StreamValues]")


def test_ten_megabyte_frame(simulator):
    sim = simulator(tags=5, rate=10)
    w = [t.webid for t in sim.tags]
    with connect(adhoc(sim, w), open_timeout=10, max_size=None) as ws:
        before = recv_json(ws)
        sim.inject_big()
        raw = ws.recv(timeout=30)
        for _ in range(10):                     # a message sent before the big one may come first
            if len(raw) >= 10 * 1024 * 1024:
                break
            raw = ws.recv(timeout=30)
        assert len(raw) >= 10 * 1024 * 1024
        msg = orjson.loads(raw)
        vals = values_of(msg)[w[0]]
        stamps = {ts for ts, _, _ in vals}
        assert len(vals) > 10_000 and len(stamps) <= 3          # repeats of the current value, then new ones
        assert max(stamps) > max(ts for ts, _, _ in values_of(before)[w[0]])
        recv_json(ws)
    # the third-party client's default limit (1 MiB) refuses such a frame: clients must raise it
    with connect(adhoc(sim, w), open_timeout=10) as ws:
        recv_json(ws)
        sim.inject_big()
        with pytest.raises(ConnectionClosed):
            for _ in range(20):
                ws.recv(timeout=10)


def test_401_on_the_next_reconnect_and_slow_acceptance(simulator):
    sim = simulator(tags=1, rate=10, auth="basic")
    url = adhoc(sim, [sim.tags[0].webid]).replace("ws://", f"ws://{sim.config.username}:{sim.config.password}@")
    with connect(url, open_timeout=10) as ws:
        recv_json(ws)
        sim.reject_next_upgrades(1, 401)
        sim.drop_channels(abrupt=True)
    with pytest.raises(InvalidStatus) as info:
        connect(url, open_timeout=10)
    assert info.value.response.status_code == 401
    validate(orjson.loads(info.value.response.body), "Errors")
    sim.set_accept_delay(1.0)
    started = time.monotonic()
    with connect(url, open_timeout=10) as ws:          # the credentials still work afterwards
        assert time.monotonic() - started >= 1.0
        recv_json(ws)


def test_time_jump_archives_the_skipped_ticks_but_channels_skip_them(simulator):
    sim = simulator(tags=2, rate=10)
    w = sim.tags[0].webid
    with connect(adhoc(sim, [w]), open_timeout=10) as ws:
        got = collect(ws, 0.3)
        first, last = sim.jump_time(30)
        assert last - first >= 290
        collect(ws, 0.5, got)
        sim.set_stalled(True)
        collect(ws, 0.3, got)
    stamps = sorted(got[w])
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert max(gaps) >= 29 * 1_000_000                                 # the channel jumped
    assert sim.sent_values()[w] == [(ts, got[w][ts]) for ts in stamps]
    skipped = sim.archive(w, sim.tick_time(first), sim.tick_time(last))
    assert len(skipped) == last - first + 1                              # ... the archive did not
    r = requests.get(sim.url + f"/streams/{w}/recorded", timeout=10, params={
        "startTime": format_ts(sim.tick_time(first)), "endTime": format_ticks(sim.stamp(w, last)), "maxCount": 10000})
    assert len(r.json()["Items"]) == len(skipped)


def test_edit_is_resent_substituted_and_archived(simulator):
    sim = simulator(tags=2, rate=10)
    w = sim.tags[1].webid
    with connect(adhoc(sim, [t.webid for t in sim.tags]), open_timeout=10) as ws:
        got = collect(ws, 0.5)
        ts, new = sim.edit_value(w)
        assert ts in got[w] and got[w][ts] != new
        edit = None
        deadline = time.monotonic() + 5
        while edit is None and time.monotonic() < deadline:
            for ts2, v, item in values_of(recv_json(ws)).get(w, []):
                got[w][ts2] = v
                if ts2 == ts:
                    edit = item
        assert edit is not None and edit["Value"] == new and edit["Substituted"] is True
        sim.set_stalled(True)
        collect(ws, 0.3, got)
    r = requests.get(sim.url + f"/streams/{w}/recorded", timeout=10,
                     params={"startTime": format_ts(ts), "endTime": format_ticks(ts * 10 + 9)})   # all of that µs
    (item,) = r.json()["Items"]
    assert item["Value"] == new and item["Substituted"] is True
    assert dict(sim.sent_values()[w])[ts] == new
    assert {k: dict(v) for k, v in sim.sent_values().items()} == got


def test_late_value_only_in_the_archive_when_no_channel_is_open(simulator):
    sim = simulator(tags=1, rate=10)
    w = sim.tags[0].webid
    late_ts = sim.tick_time(sim.last_tick() - 5) + 12_345
    sim.add_late_value(w, late_ts, 123.25)
    r = requests.get(sim.url + f"/streams/{w}/recorded", timeout=10, params={
        "startTime": format_ts(late_ts - 200_000), "endTime": format_ts(late_ts + 200_000)})
    items = [(parse_ts(i["Timestamp"]), i["Value"]) for i in r.json()["Items"]]
    assert (late_ts, 123.25) in items and items == sorted(items)
    assert w not in sim.sent_values()
    # with a channel open, the late value is sent too (out of order)
    with connect(adhoc(sim, [w]), open_timeout=10) as ws:
        got = collect(ws, 0.3)
        late2 = sim.tick_time(sim.last_tick() - 3) + 5_000
        sim.add_late_value(w, late2, -1.5)
        collect(ws, 0.5, got)
        sim.set_stalled(True)
        collect(ws, 0.3, got)
    assert got[w][late2] == -1.5
    assert {k: dict(v) for k, v in sim.sent_values().items()} == got


def test_rest_faults_500_and_web_exception(simulator):
    sim = simulator(tags=2)
    sim.fail_next_requests(1, 500)
    r = requests.get(sim.url + "/dataservers", timeout=10)
    assert r.status_code == 500
    validate(r.json(), "Errors")
    assert requests.get(sim.url + "/dataservers", timeout=10).status_code == 200
    sim.fail_next_requests(1, web_exception=True)
    r = requests.get(sim.url + "/streamsets/recorded", params={"webId": sim.tags[0].webid}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["WebException"]["StatusCode"] == 500
    validate(body["WebException"], "WebException")
    validate({k: v for k, v in body.items() if k != "WebException"}, "Items[StreamValues]")


def test_faults_over_http_and_from_cli_commands(simulator):
    sim = simulator(tags=2, rate=10)
    r = requests.post(sim.url + "/simulator/faults/stall", timeout=10)
    assert r.status_code == 400 and "X-Requested-With" in r.json()["Errors"][0]          # CSRF, like PI
    r = requests.post(sim.url + "/simulator/faults/stall", headers={"X-Requested-With": "XMLHttpRequest"}, timeout=10)
    assert r.status_code == 200 and sim.stalled
    assert run_command(sim, "resume") == "resumed" and not sim.stalled
    assert "ticks" in run_command(sim, "jump 5")
    assert sim.clock_offset >= 5_000_000
    with connect(adhoc(sim, [sim.tags[0].webid]), open_timeout=10) as ws:
        recv_json(ws)
        r = requests.post(sim.url + "/simulator/faults/reset", headers={"X-Requested-With": "x"}, timeout=10)
        assert r.status_code == 200
        with pytest.raises(ConnectionClosedError):
            for _ in range(50):
                ws.recv(timeout=5)
    assert "closed 0" in run_command(sim, "drop")
    assert "drop" in run_command(sim, "help")


def drain(ws, got, timeout: float = 20.0) -> None:
    """Read until a second passes without a new value (a loaded machine reads a backlog slowly)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = sum(len(v) for v in got.values())
        collect(ws, 1.0, got)
        if sum(len(v) for v in got.values()) == before:
            return


def test_slow_consumer_gets_backpressure_and_loses_nothing(simulator):
    """A client that stops reading fills the socket; the server waits (no unbounded buffer, no
    drop) and sends the backlog when the client reads again."""
    sim = simulator(tags=2000, rate=20)
    webids = [t.webid for t in sim.tags]
    with connect(adhoc(sim, webids), open_timeout=10, max_size=None, max_queue=1) as ws:
        got = collect(ws, 0.3)
        time.sleep(2.5)                                  # ~25 MB offered; socket buffers hold far less
        stuck = sim.stats["values_sent"]
        time.sleep(0.5)
        assert sim.stats["values_sent"] - stuck < 2000 * 10      # the sender is blocked on the socket
        collect(ws, 3.0, got)
        sim.set_stalled(True)
        drain(ws, got)
    sent = sim.sent_values()
    assert {w: dict(v) for w, v in sent.items()} == got
    stamps = [ts for ts, _ in sent[webids[0]]]
    assert stamps == list(range(stamps[0], stamps[-1] + 1, sim.period_us))


def test_channel_options_per_channel(simulator):
    sim = simulator(tags=1, rate=20)
    w = sim.tags[0].webid

    def repeats(ws) -> int:
        """Values in 5 messages whose timestamp an earlier message already carried."""
        seen, n = set(), 0
        for _ in range(5):
            stamps = {ts for ts, _, _ in values_of(recv_json(ws))[w]}
            n += len(stamps & seen)
            seen |= stamps
        return n

    with connect(adhoc(sim, [w]), open_timeout=10) as a, connect(adhoc(sim, [w]), open_timeout=10) as b:
        recv_json(a), recv_json(b)
        first = min(c["id"] for c in sim.channels())
        sim.set_channel_options(channel=first, repeat_values=True)
        time.sleep(0.2)
        assert repeats(a) >= 3 and repeats(b) == 0          # the repeats come only on the first


def test_time_jump_can_send_the_skipped_ticks(simulator):
    sim = simulator(tags=1, rate=10)
    w = sim.tags[0].webid
    with connect(adhoc(sim, [w]), open_timeout=10, max_size=None) as ws:
        got = collect(ws, 0.3)
        first, last = sim.jump_time(5, send_skipped=True)
        collect(ws, 0.5, got)
        sim.set_stalled(True)
        collect(ws, 0.3, got)
    stamps = sorted(got[w])
    assert stamps == list(range(stamps[0], stamps[-1] + 1, sim.period_us))      # no hole this time
    assert sim.tick_time(first) in got[w] and sim.tick_time(last) in got[w]


def test_cli_reads_fault_commands_from_stdin():
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "pi_stream_source.simulator", "--tags", "2", "--port", "0"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate("stall\nstats\njump 10\nbogus\nresume\nquit\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "stalled" in out and '"channels_opened": 0' in out and "ticks" in out
    assert "error: unknown command 'bogus'" in out and "resumed" in out


def test_frozen_stall_leaves_pings_unanswered(simulator):
    sim = simulator(tags=1, rate=10)
    with connect(adhoc(sim, [sim.tags[0].webid]), open_timeout=10, ping_interval=None) as ws:
        recv_json(ws)
        assert ws.ping().wait(5)                                  # a quiet stall still answers
        sim.set_stalled(True)
        collect(ws, 0.2)
        assert ws.ping().wait(5)
        sim.set_stalled(True, freeze=True)
        pong = ws.ping()
        assert not pong.wait(1.5)                                 # a frozen one does not
        sim.set_stalled(False)
        assert pong.wait(5)
        recv_json(ws)
