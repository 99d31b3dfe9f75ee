"""100-ns time in the simulator: stamps with a 7th fractional digit, recorded ranges compared at
tick resolution (both ends inclusive), and µs oracles that floor ticks as a µs reader does."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import requests
from websockets.sync.client import connect

from pi_stream_source.pitime import parse_ts
from pi_stream_source.simulator.ticks import format_ticks, parse_pi_time_ticks, parse_ticks, to_us
from pi_stream_source.testing import archive_window, expected_rows
from pi_swagger import validate
from test_simulator_channels import adhoc, collect, recv_json

SEVEN = re.compile(r"\.\d{6}[1-9]Z$")


def get(sim, resource, **params):
    return requests.get(sim.url + resource, params=params, timeout=10)


def test_tick_text_round_trips_and_floors_like_a_microsecond_reader():
    for ticks in (17_000_000_000_000_000, 17_000_000_000_000_003, 17_000_000_001_230_007, 17_000_000_000_000_010,
                  -1, -5, -10):
        text = format_ticks(ticks)
        assert parse_ticks(text) == ticks and parse_pi_time_ticks(text, 0) == ticks, text
        assert parse_ts(text) == to_us(ticks) == ticks // 10            # floor toward −∞
    assert format_ticks(17_000_000_001_230_007) == "2023-11-14T22:13:20.1230007Z"
    assert format_ticks(-5) == "1969-12-31T23:59:59.9999995Z" and to_us(-5) == -1
    assert parse_ticks("2023-11-14T22:13:20.12300079Z") == 17_000_000_001_230_007     # beyond 100 ns: dropped
    assert parse_ticks("2023-11-15T03:43:20.1230007+05:30") == 17_000_000_001_230_007
    assert parse_pi_time_ticks("*-1s", 17_000_000_000_000_003) == 16_999_999_990_000_003


def test_stamps_carry_a_seventh_digit_on_channels_and_rest(simulator):
    sim = simulator(tags=4, rate=10, history_seconds=5)
    webids = [t.webid for t in sim.tags]
    with connect(adhoc(sim, webids, "&includeInitialValues=true"), open_timeout=10) as ws:
        msgs = [recv_json(ws) for _ in range(3)]
    stamps = {}
    for msg in msgs:
        validate(msg, "Items[StreamValues]")
        for s in msg["Items"]:
            for item in s["Items"]:
                assert SEVEN.search(item["Timestamp"]), item["Timestamp"]
                ts = parse_ticks(item["Timestamp"])
                k = (to_us(ts) - sim.t0) // sim.period_us
                assert ts == sim.stamp(s["WebId"], k) and to_us(ts) == sim.tick_time(k)
                assert sim.archive(s["WebId"], ts, ts, ticks=True) == [(ts, item["Value"])]
                stamps.setdefault(k, set()).add(ts)
    assert any(len(v) == 3 for v in stamps.values())          # neighbouring tags get different stamps
    body = get(sim, "/streamsets/recorded", webId=webids, startTime="*-2s").json()
    assert all(SEVEN.search(i["Timestamp"]) for s in body["Items"] for i in s["Items"])
    for resource in (f"/streams/{webids[0]}/end", f"/streams/{webids[0]}/value"):
        assert SEVEN.search(get(sim, resource).json()["Timestamp"])


def test_recorded_ranges_are_compared_at_tick_resolution(simulator):
    sim = simulator(tags=3, rate=10, history_seconds=10)
    w = sim.tags[1].webid
    k = sim.last_tick() - 10
    s, e = sim.stamp(w, k), sim.stamp(w, k + 5)
    cases = [((s, e), range(k, k + 6)),               # both ends inclusive, to the 100 ns
             ((s + 1, e), range(k + 1, k + 6)), ((s, e - 1), range(k, k + 5)),
             ((s + 1, e - 1), range(k + 1, k + 5)), ((e, e), range(k + 5, k + 6)), ((e + 1, e + 1), range(0))]
    for (lo, hi), steps in cases:
        want = [sim.stamp(w, j) for j in steps]
        one = get(sim, f"/streams/{w}/recorded", startTime=format_ticks(lo), endTime=format_ticks(hi)).json()
        validate(one, "ExtendedTimedValues")
        assert [parse_ticks(i["Timestamp"]) for i in one["Items"]] == want, (lo - s, hi - e)
        many = get(sim, "/streamsets/recorded", webId=[w, sim.tags[0].webid], startTime=format_ticks(lo),
                   endTime=format_ticks(hi)).json()
        assert [parse_ticks(i["Timestamp"]) for i in many["Items"][0]["Items"]] == want
        assert [p[0] for p in sim.archive(w, lo, hi, ticks=True)] == want
    # descending when end < start, at the same resolution
    desc = get(sim, f"/streams/{w}/recorded", startTime=format_ticks(e - 1), endTime=format_ticks(s)).json()
    assert [parse_ticks(i["Timestamp"]) for i in desc["Items"]] == [sim.stamp(w, j) for j in range(k + 4, k - 1, -1)]
    # a value at an exact 7-digit time, and the one after it
    exact = get(sim, f"/streams/{w}/recordedattime", time=format_ticks(e), retrievalMode="Exact").json()
    assert parse_ticks(exact["Timestamp"]) == e and exact["Value"] == sim.archive(w, e, e, ticks=True)[0][1]
    after = get(sim, f"/streams/{w}/recordedattime", time=format_ticks(e), retrievalMode="After").json()
    assert parse_ticks(after["Timestamp"]) == sim.stamp(w, k + 6)
    value = get(sim, f"/streams/{w}/value", time=format_ticks(s)).json()
    assert parse_ticks(value["Timestamp"]) == s


def test_microsecond_oracles_floor_the_ticks(simulator):
    sim = simulator(tags=2, rate=10, history_seconds=5)
    w = sim.tags[0].webid
    k = sim.last_tick() - 5
    us, ticks = sim.tick_time(k), sim.stamp(w, k)
    assert us == to_us(ticks) and ticks % 10 != 0
    assert sim.archive(w, us, us) == [(us, sim.archive(w, ticks, ticks, ticks=True)[0][1])]
    assert sim.archive(w, us + 1, us + 1) == [] and sim.archive(w, us - 1, us - 1) == []
    full = sim.archive(w, ticks=True)
    assert sim.archive(w) == [(to_us(t), v) for t, v in full]
    assert archive_window(sim, sim.t0, {w: us}) == {w: [(to_us(t), v) for t, v in full if to_us(t) <= us]}
    with connect(adhoc(sim, [w]), open_timeout=10) as ws:
        collect(ws, 0.5)
        sim.set_stalled(True)
        collect(ws, 0.3)
    sent_ticks, sent = sim.sent_values(ticks=True), sim.sent_values()
    assert sent[w] == [(to_us(t), v) for t, v in sent_ticks[w]] and sent[w]
    assert all(t % 10 for t, _ in sent_ticks[w])
    rows = expected_rows(sent)
    assert [r[1] for r in rows] == [r[1] for r in expected_rows({w: [(to_us(t), v) for t, v in sent_ticks[w]]})]
    # a late value written at a 7-digit stamp is found at that µs by the µs oracle
    late = sim.add_late_value(w, ticks + 500_003, 7.5, ticks=True)
    assert late == ticks + 500_003
    assert (to_us(late), 7.5) in sim.archive(w, us, us + 100_000)


def test_whole_microsecond_stamps_on_request(simulator):
    sim = simulator(tags=2, rate=10, history_seconds=5, sub_microsecond=False)
    w = sim.tags[0].webid
    k = sim.last_tick() - 3
    assert sim.stamp(w, k) == sim.tick_time(k) * 10
    body = get(sim, f"/streams/{w}/recorded", startTime="*-2s").json()
    assert body["Items"] and not any(re.search(r"\.\d{7}Z$", i["Timestamp"]) for i in body["Items"])


def test_time_is_zone_free_in_another_process_zone(tmp_path):
    """The simulator's stamps and PI time parsing do not depend on the process's time zone."""
    code = ("from pi_stream_source.simulator.ticks import format_ticks, parse_pi_time_ticks, parse_ticks\n"
            "t = 17_000_000_001_230_007\n"
            "print(format_ticks(t), parse_ticks(format_ticks(t)) == t, parse_pi_time_ticks('T', t))\n")
    outs = set()
    for zone in ("UTC", "Asia/Kolkata", "America/St_Johns"):
        env = {**os.environ, "TZ": zone}
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout)
    assert outs == {"2023-11-14T22:13:20.1230007Z True 16999200000000000\n"}
