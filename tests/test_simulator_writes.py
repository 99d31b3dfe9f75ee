"""Values written into the past (edits and late values), as PI sends them on every open channel
that carries the stream, and as the archive then holds them."""
from __future__ import annotations

import time

import pytest
import requests
from websockets.sync.client import connect

from pi_stream_source.simulator.ticks import format_ticks, parse_ticks
from pi_swagger import validate
from test_simulator_channels import adhoc, recv_json, ws_url


def wait_for(ws, stamp, timeout=5.0):
    """Read ``ws`` until a value stamped ``stamp`` (ticks) arrives; {WebId: item} of that stamp."""
    found = {}
    deadline = time.monotonic() + timeout
    while not found and time.monotonic() < deadline:
        try:
            msg = recv_json(ws, timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            break
        validate(msg, "Items[StreamValues]")
        for s in msg["Items"]:
            for item in s["Items"]:
                if parse_ticks(item["Timestamp"]) == stamp:
                    found[s["WebId"]] = item
    return found


def recorded_at(sim, webid, stamp):
    r = requests.get(sim.url + f"/streams/{webid}/recorded", timeout=10,
                     params={"startTime": format_ticks(stamp), "endTime": format_ticks(stamp)})
    (item,) = r.json()["Items"]
    return item


def test_edits_and_late_values_reach_every_channel_carrying_the_stream(simulator):
    sim = simulator(tags=4, rate=10, attributes_per_element=2, history_seconds=5)
    tag, other = sim.tags[0], sim.tags[3]
    attr = sim.elements[0].attributes[0]
    assert attr.tag is tag
    with connect(adhoc(sim, [tag.webid, sim.tags[1].webid]), open_timeout=10) as a, \
            connect(ws_url(sim, f"/streamsets/{sim.elements[0].webid}/channel"), open_timeout=10) as b, \
            connect(adhoc(sim, [other.webid]), open_timeout=10) as c:
        for ws in (a, b, c):
            recv_json(ws)
        k = sim.last_tick() - 5
        stamp = sim.stamp(tag.webid, k)
        # an edit: the archived value is replaced and flagged Substituted
        assert sim.write_value(tag.webid, stamp, 999.5, ticks=True) == stamp
        got_a, got_b = wait_for(a, stamp), wait_for(b, stamp)
        assert got_a[tag.webid]["Value"] == 999.5 and got_a[tag.webid]["Substituted"] is True
        assert got_b[attr.webid]["Value"] == 999.5 and got_b[attr.webid]["Substituted"] is True
        edited = recorded_at(sim, tag.webid, stamp)
        assert edited["Value"] == 999.5 and edited["Substituted"] is True
        assert sim.archive(tag.webid, stamp, stamp, ticks=True) == [(stamp, 999.5)]
        # a late value between steps, at a 7-digit stamp: archived in order, not Substituted
        late = stamp + 3_000_007
        sim.write_value(attr.webid, late, -4.25, ticks=True)
        got_a, got_b = wait_for(a, late), wait_for(b, late)
        assert got_a[tag.webid]["Value"] == -4.25 and got_a[tag.webid]["Substituted"] is False
        assert got_b[attr.webid]["Value"] == -4.25
        stamps = [t for t, _ in sim.archive(tag.webid, stamp, stamp + 5_000_000, ticks=True)]
        assert late in stamps and stamps == sorted(stamps)
        # editing the late value, and a µs time naming the archived value whose µs view it is
        sim.write_value(tag.webid, late, -5.0, ticks=True)
        assert wait_for(a, late)[tag.webid]["Substituted"] is True
        us = sim.tick_time(k - 1)
        assert sim.write_value(tag.webid, us, 1.0, substituted=False) == us
        item = wait_for(a, sim.stamp(tag.webid, k - 1))[tag.webid]
        assert item["Value"] == 1.0 and item["Substituted"] is False
        assert recorded_at(sim, tag.webid, sim.stamp(tag.webid, k - 1))["Substituted"] is False
        # the channel of another stream gets none of it
        assert wait_for(c, stamp, timeout=1.0) == {} and wait_for(c, late, timeout=0.3) == {}
        sim.set_stalled(True)
    sent = dict(sim.sent_values(ticks=True)[tag.webid])
    assert sent[stamp] == 999.5 and sent[late] == -5.0 and sim.stats["values_written"] == 4


def test_write_value_refuses_the_future_and_bad_timestamps(simulator):
    sim = simulator(tags=1, rate=10)
    w = sim.tags[0].webid
    with pytest.raises(ValueError, match="future"):
        sim.write_value(w, sim.now_ticks() + 10_000_000, 1.0, ticks=True)
    with pytest.raises(TypeError, match="timestamp"):
        sim.write_value(w, 1.5, 1.0)
    with pytest.raises(KeyError):
        sim.write_value("F1DPnope", sim.now(), 1.0)


def test_write_over_http_control_api(simulator):
    import orjson

    sim = simulator(tags=1, rate=10, history_seconds=5)
    w = sim.tags[0].webid
    stamp = sim.stamp(w, sim.last_tick() - 3)
    r = requests.post(sim.url + "/simulator/faults/write", headers={"X-Requested-With": "x"}, timeout=10,
                      data=orjson.dumps({"webid": w, "ts": format_ticks(stamp), "value": 3.5}))
    assert r.status_code == 200 and r.json()["Result"] == stamp // 10
    assert recorded_at(sim, w, stamp)["Value"] == 3.5
