"""Points deleted and added while the simulator runs, as a plant retires and creates PI points."""
from __future__ import annotations

import time

import pytest
import requests
from websockets.sync.client import connect

from pi_stream_source.simulator.ticks import parse_ticks
from pi_swagger import validate
from test_simulator_channels import adhoc, recv_json


def get(sim, resource, **params):
    return requests.get(sim.url + resource, params=params, timeout=10)


def stamps_by_stream(ws, seconds):
    """{WebId: [stamp ticks]} of what ``ws`` receives for ``seconds``."""
    got = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            msg = recv_json(ws, timeout=max(0.05, deadline - time.monotonic()))
        except TimeoutError:
            break
        validate(msg, "Items[StreamValues]")
        for s in msg["Items"]:
            got.setdefault(s["WebId"], []).extend(parse_ticks(i["Timestamp"]) for i in s["Items"])
    return got


def test_a_deleted_point_is_gone_from_rest_and_its_channel_values_stop(simulator):
    sim = simulator(tags=4, rate=10, history_seconds=5)
    gone, kept = sim.tags[1], sim.tags[2]
    forms = gone.forms()
    with connect(adhoc(sim, [gone.webid, kept.webid]), open_timeout=10) as ws:
        before = stamps_by_stream(ws, 0.5)
        assert before[gone.webid] and before[kept.webid]
        deleted = sim.delete_point(gone.name)
        assert deleted is gone and gone not in sim.tags
        stamps_by_stream(ws, 0.15)                        # a message built before the delete may follow
        after = stamps_by_stream(ws, 1.0)
    assert gone.webid not in after and len(after[kept.webid]) >= 5     # the others go on
    for w in forms:
        for resource in (f"/points/{w}", f"/streams/{w}/end", f"/streams/{w}/recorded"):
            r = get(sim, resource)
            assert r.status_code == 404, resource
            validate(r.json(), "Errors")
        r = get(sim, "/streamsets/recorded", webId=[kept.webid, w])
        assert r.status_code == 404 and "PI Point" in r.json()["Errors"][0]
    assert get(sim, "/points", path=gone.path).status_code == 404
    names = [p["Name"] for p in get(sim, f"/dataservers/{sim.dataserver_webid}/points").json()["Items"]]
    assert gone.name not in names and kept.name in names
    r = requests.get(sim.url + "/streamsets/channel", params={"webId": gone.webid}, timeout=10)
    assert r.status_code == 404                                   # a new channel naming it is refused
    with pytest.raises(KeyError):
        sim.write_value(gone.webid, sim.now(), 1.0)
    with pytest.raises(KeyError):
        sim.delete_point(gone.name)
    # the oracle still knows what was archived up to the deletion, and nothing after it
    archived = sim.archive(gone.webid, ticks=True)
    assert archived and archived[-1][0] == sim.stamp(gone.webid, gone.until)
    sent = sim.sent_values(ticks=True)[gone.webid]
    assert sent[-1][0] <= archived[-1][0] and set(sent) <= set(archived)


def test_an_added_point_gets_values_from_then_on_and_is_listed(simulator):
    sim = simulator(tags=3, rate=10, history_seconds=5)
    before = sim.last_tick()
    w = sim.add_point("SIM.NewFlow", kind="ramp")
    first = sim.stream(w).since                                   # its first step: after the creation
    assert first > before
    end = get(sim, f"/streams/{w}/end").json()       # its "Pt Created" snapshot, or a value if one came since
    validate(end, "TimedValue")
    created_end = isinstance(end["Value"], dict) and end["Value"]["Name"] == "Pt Created"
    assert created_end or parse_ticks(end["Timestamp"]) >= sim.stamp(w, first)
    tag = sim.stream(w)
    assert tag in sim.tags and tag.point_id == 4 and w.startswith("F1DP")
    assert w == get(sim, "/points", path="\\\\SIMSRV\\SIM.NewFlow").json()["WebId"]
    point = get(sim, f"/points/{tag.webid_for('IDOnly')}").json()
    validate(point, "Point")
    assert point["Name"] == "SIM.NewFlow" and point["Id"] == 4
    names = [p["Name"] for p in get(sim, f"/dataservers/{sim.dataserver_webid}/points", nameFilter="SIM.New*").json()["Items"]]
    assert names == ["SIM.NewFlow"]
    with connect(adhoc(sim, [w, sim.tags[0].webid], "&includeInitialValues=false"), open_timeout=10) as ws:
        got = stamps_by_stream(ws, 1.0)
    assert len(got[w]) >= 5
    archived = sim.archive(w, ticks=True)
    # no history before it was created: "Pt Created" (not good) at creation, then its values
    assert archived[0][1] == {"Name": "Pt Created", "Value": 251, "IsSystem": True}
    assert sim.tick_time(first - 1) * 10 < archived[0][0] < archived[1][0] == sim.stamp(w, first)
    created = get(sim, f"/streams/{w}/recorded", startTime="*-1h", maxCount=1).json()["Items"][0]
    assert created["Good"] is False and created["Value"]["Name"] == "Pt Created"
    assert set(got[w]) <= {t for t, _ in archived}
    body = get(sim, "/streamsets/recorded", webId=w, startTime="*-1h").json()
    assert [parse_ticks(i["Timestamp"]) for i in body["Items"][0]["Items"]] == [t for t, _ in sim.archive(w, ticks=True)][
        :len(body["Items"][0]["Items"])]
    # point IDs are never reused: a deleted point's ID stays unused
    sim.delete_point(w)
    other = sim.add_point("SIM.Other", pt_created=False)
    assert sim.stream(other).point_id == 5
    assert all(isinstance(v, float) for _, v in sim.archive(other))
    with pytest.raises(ValueError, match="exists"):
        sim.add_point("sim.other")
    with pytest.raises(ValueError, match="kind"):
        sim.add_point("SIM.Bad", kind="nope")


def test_points_change_over_the_control_api(simulator):
    import orjson

    sim = simulator(tags=2)
    xrw = {"X-Requested-With": "x"}
    r = requests.post(sim.url + "/simulator/faults/add_point", headers=xrw, timeout=10,
                      data=orjson.dumps({"point": "SIM.Added", "kind": "int"}))
    w = r.json()["Result"]
    assert r.status_code == 200 and get(sim, f"/points/{w}").json()["Name"] == "SIM.Added"
    r = requests.post(sim.url + "/simulator/faults/delete_point", headers=xrw, timeout=10,
                      data=orjson.dumps({"point": "SIM.Added"}))
    assert r.json()["Result"] == w and get(sim, f"/points/{w}").status_code == 404
    r = requests.post(sim.url + "/simulator/faults/delete_point", headers=xrw, timeout=10, data=b"{}")
    assert r.status_code == 400 and "point" in r.json()["Errors"][0]            # a clear error, not a 500
    r = requests.post(sim.url + "/simulator/faults/delete_point", headers=xrw, timeout=10,
                      data=orjson.dumps({"point": "SIM.Added"}))
    assert r.status_code == 400 and "SIM.Added" in r.json()["Errors"][0]
