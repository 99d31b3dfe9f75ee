"""Simulator channels, checked with third-party WebSocket clients (websockets, websocket-client)
and against the swagger spec's 101 response schemas."""
from __future__ import annotations

import math
import time

import orjson
import pytest
import websocket
from websockets.sync.client import connect

from pi_stream_source import webid as W
from pi_stream_source.pitime import parse_ts
from pi_swagger import response_definition, validate

HEARTBEAT = '{"Links":{},"Items":[]}'


def ws_url(sim, path: str) -> str:
    return sim.ws_url + path


def adhoc(sim, webids, extra: str = "") -> str:
    return ws_url(sim, "/streamsets/channel?" + "&".join(f"webId={w}" for w in webids) + extra)


def recv_json(ws, timeout: float = 10.0):
    return orjson.loads(ws.recv(timeout=timeout))


def values_of(msg):
    """{webid: [(ts, value, item)]} of one channel message (either shape)."""
    out = {}
    for s in msg["Items"]:
        items = s["Items"] if "Items" in s else [s["Value"]]
        out.setdefault(s["WebId"], []).extend((parse_ts(i["Timestamp"]), i["Value"], i) for i in items)
    return out


def collect(ws, seconds: float, into=None):
    """Receive for ``seconds``; {webid: {ts: value}} (later values for a timestamp win)."""
    got = into if into is not None else {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            raw = ws.recv(timeout=max(0.05, deadline - time.monotonic()))
        except TimeoutError:
            break
        for w, vals in values_of(orjson.loads(raw)).items():
            for ts, v, _ in vals:
                got.setdefault(w, {})[ts] = v
    return got


def as_json(v):
    """An archive value as PI Web API writes it: NaN and the infinities become strings."""
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    return v


def test_three_channel_forms_match_the_spec_and_the_archive(simulator):
    sim = simulator(tags=12, rate=10, attributes_per_element=4)
    tag = sim.tags[0]
    el = sim.elements[1]
    forms = [
        ("/streams/{webId}/channel", ws_url(sim, f"/streams/{tag.webid}/channel"), [tag.webid]),
        ("/streamsets/{webId}/channel", ws_url(sim, f"/streamsets/{el.webid}/channel"),
         [a.webid for a in el.attributes]),
        ("/streamsets/channel", adhoc(sim, [t.webid for t in sim.tags[:3]]), [t.webid for t in sim.tags[:3]]),
    ]
    assert response_definition("/streams/{webId}/channel", "get", "101") == "Items[StreamValues]"
    for path, url, webids in forms:
        with connect(url, open_timeout=10) as ws:
            msg = recv_json(ws)
        validate(msg, "Items[StreamValues]")          # the Items[] shape of the Channels topic
        assert [s["WebId"] for s in msg["Items"]] == webids, path
        for s in msg["Items"]:
            stream = sim.stream(s["WebId"])
            assert s["Name"] == stream.name and s["Path"] == stream.path
            for item in s["Items"]:
                ts = parse_ts(item["Timestamp"])
                assert sim.archive(s["WebId"], ts, ts) == [(ts, item["Value"])]
    # the element's attributes are PI point data references: same values as their points
    a = el.attributes[0]
    assert a.path == "\\\\SIMAF\\SimDB\\Unit2|Temperature"
    assert sim.archive(a.webid, sim.t0, sim.t0 + 10**7) == sim.archive(a.tag.webid, sim.t0, sim.t0 + 10**7)


def test_value_shape_matches_the_streamset_spec_and_bool_strings(simulator):
    sim = simulator(tags=3, rate=10, message_shape="value")
    with connect(adhoc(sim, [t.webid for t in sim.tags]), open_timeout=10) as ws:
        msg = recv_json(ws)
    assert response_definition("/streamsets/channel", "get", "101") == "Items[StreamValue]"
    validate(msg, "Items[StreamValue]")
    assert all("Value" in s and "Items" not in s for s in msg["Items"])

    sim = simulator(tags=3, rate=10, message_shape="spec", attributes_per_element=3)
    t, el = sim.tags[0], sim.elements[0]
    for template, path in (("/streams/{webId}/channel", f"/streams/{t.webid}/channel"),
                           ("/streamsets/{webId}/channel", f"/streamsets/{el.webid}/channel"),
                           ("/streamsets/channel", f"/streamsets/channel?webId={t.webid}")):
        with connect(ws_url(sim, path), open_timeout=10) as ws:
            validate(recv_json(ws), response_definition(template, "get", "101"))

    sim = simulator(tags=2, rate=10, bool_strings=True)
    with connect(adhoc(sim, [t.webid for t in sim.tags]), open_timeout=10) as ws:
        item = recv_json(ws)["Items"][0]["Items"][0]
    assert {item[f] for f in ("Good", "Questionable", "Substituted", "Annotated")} <= {"true", "false"}
    assert item["Good"] == "true"


def test_include_initial_values_and_heartbeat(simulator):
    # one tag updating every 1000 ticks: the channel is idle, so only heartbeats arrive
    sim = simulator(tags=1, rate=10, tag_every=[1000], history_seconds=200)
    w = sim.tags[0].webid
    with connect(adhoc(sim, [w], "&includeInitialValues=true&heartbeatRate=3"), open_timeout=10) as ws:
        first = recv_json(ws, timeout=2)
        (ts, value, _), = values_of(first)[w]
        assert (ts, value) == sim.archive(w)[-1]         # the snapshot, sent right away
        started = time.monotonic()
        assert ws.recv(timeout=5) == HEARTBEAT
        assert ws.recv(timeout=5) == HEARTBEAT
        assert 0.2 < time.monotonic() - started < 2.0  # 3 polling intervals of 0.1 s each, twice
    with connect(adhoc(sim, [w]), open_timeout=10) as ws:  # no heartbeatRate: silence
        with pytest.raises(TimeoutError):
            ws.recv(timeout=1.0)


def test_only_changed_streams_are_in_a_message(simulator):
    sim = simulator(tags=2, rate=20, tag_every=[1, 4])
    fast, slow = sim.tags
    seen = {fast.webid: 0, slow.webid: 0}
    with connect(adhoc(sim, [fast.webid, slow.webid]), open_timeout=10) as ws:
        for _ in range(12):
            msg = recv_json(ws)
            for s in msg["Items"]:
                seen[s["WebId"]] += len(s["Items"])
                for item in s["Items"]:
                    k = (parse_ts(item["Timestamp"]) - sim.t0) // sim.period_us
                    assert k % (4 if s["WebId"] == slow.webid else 1) == 0
    assert seen[fast.webid] >= 12 and 1 <= seen[slow.webid] <= seen[fast.webid] // 2


def test_webid_types_on_channels(simulator):
    sim = simulator(tags=2, rate=10)
    t = sim.tags[1]
    for kind, expected in (("PathOnly", W.path_only(t.path)), ("IDOnly", t.id_webid), ("Full", t.webid)):
        with connect(adhoc(sim, [t.path_webid], f"&webIdType={kind}"), open_timeout=10) as ws:
            assert recv_json(ws)["Items"][0]["WebId"] == expected
    assert t.path_webid.startswith("P1DP") and t.webid.startswith("F1DP") and t.id_webid.startswith("I1DP")


def test_refusals_before_the_upgrade(simulator):
    import requests

    sim = simulator(tags=2)
    cases = [("/streamsets/channel", {"webId": "F1DPnope"}, 404),
             ("/streamsets/channel", {"webId": "garbage"}, 400),
             (f"/streamsets/{sim.tags[0].webid}/channel", {}, 409),   # a point is not an AF parent
             ("/streamsets/channel", {}, 400)]
    for path, params, status in cases:
        r = requests.get(sim.url + path, params=params, timeout=10)
        assert r.status_code == status, (path, params)
        validate(r.json(), "Errors")
    with pytest.raises(Exception) as info:
        connect(adhoc(sim, ["F1DPnope"]), open_timeout=10)
    assert "404" in str(info.value)


def test_mixed_values_every_kind_and_flag(simulator):
    sim = simulator(tags=10, rate=20, kinds="mixed")
    got = {}
    with connect(adhoc(sim, [t.webid for t in sim.tags], "&includeInitialValues=true"), open_timeout=10) as ws:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            msg = recv_json(ws)
            validate(msg, "Items[StreamValues]")
            for w, vals in values_of(msg).items():
                got.setdefault(w, []).extend(vals)
            edge = got.get(sim.tags[9].webid, [])
            if len({(parse_ts(i["Timestamp"]) - sim.t0) // sim.period_us % 13 for _, _, i in edge}) == 13:
                break
    items = [i for vals in got.values() for _, _, i in vals]
    values = [i["Value"] for i in items]
    assert any(isinstance(v, float) for v in values)
    assert any(isinstance(v, int) and not isinstance(v, bool) for v in values)
    assert any(isinstance(v, str) and v.startswith("batch-") for v in values)
    assert any(isinstance(v, bool) for v in values)
    assert any(isinstance(v, dict) and v["IsSystem"] is False for v in values)            # digital state
    assert any(isinstance(v, dict) and v["IsSystem"] is True and v["Name"] in ("Shutdown", "I/O Timeout", "Pt Created",
               "Bad Input", "Comm Fail", "Scan Off", "Calc Failed", "No Data") for v in values)
    assert {"NaN", "Infinity", "-Infinity"} <= {v for v in values if isinstance(v, str)}
    errored = [i for i in items if i.get("Errors")]
    assert errored and all(i["Value"] is None for i in errored)
    assert errored[0]["Errors"][0]["FieldName"] == "Value" and errored[0]["Errors"][0]["Message"]
    assert any(i["Good"] is False for i in items) and any(i["Questionable"] is True for i in items)
    assert any(i["Annotated"] is True for i in items)
    assert {t.uom for t in sim.tags} == {"degC", ""}               # states and strings have no unit
    # what a client received is exactly the archive at those timestamps (NaN/±Infinity as strings)
    for w, vals in got.items():
        for ts, v, _ in vals:
            (_, archived), = sim.archive(w, ts, ts)
            assert as_json(archived) == v, (w, ts, v, archived)


def test_repeats_and_out_of_order_values_keep_the_oracle_exact(simulator):
    sim = simulator(tags=3, rate=20, repeat_values=True, out_of_order=True)
    webids = [t.webid for t in sim.tags]
    repeats = unordered = 0
    received = {}
    with connect(adhoc(sim, webids), open_timeout=10) as ws:
        seen = set()
        sim.set_stalled(True)
        time.sleep(0.3)               # a backlog of several ticks → one message with several values
        sim.set_stalled(False)
        for _ in range(10):
            msg = recv_json(ws)
            for w, vals in values_of(msg).items():
                stamps = [ts for ts, _, _ in vals]
                unordered += stamps != sorted(stamps)
                for ts, v, _ in vals:
                    repeats += (w, ts) in seen
                    seen.add((w, ts))
                    received.setdefault(w, {})[ts] = v
        sim.set_stalled(True)
        collect(ws, 0.3, received)
    assert repeats > 0 and unordered > 0
    sent = sim.sent_values()
    assert {w: dict(v) for w, v in sent.items()} == received
    for w in webids:                    # no duplicates, in time order, equal to the archive
        stamps = [ts for ts, _ in sent[w]]
        assert stamps == sorted(set(stamps))
        assert sent[w] == sim.archive(w, stamps[0], stamps[-1])


def test_websocket_client_library_reads_fragmented_frames(simulator):
    """websocket-client (another third-party client) sees the fragments and reassembles them."""
    sim = simulator(tags=20, rate=10)
    ws = websocket.create_connection(adhoc(sim, [t.webid for t in sim.tags]), timeout=10)
    try:
        orjson.loads(ws.recv())
        assert sim.inject_fragmented(pieces=4) == 1
        frames = []
        while True:
            frame = ws.recv_frame()
            frames.append(frame)
            if frame.fin:
                break
        assert len(frames) == 4 and frames[0].opcode == websocket.ABNF.OPCODE_TEXT
        assert all(f.opcode == websocket.ABNF.OPCODE_CONT for f in frames[1:])
        msg = orjson.loads(b"".join(f.data for f in frames))
        validate(msg, "Items[StreamValues]")
        sim.inject_fragmented(pieces=3)
        msg = orjson.loads(ws.recv())          # recv() reassembles
        assert len(msg["Items"]) == 20
    finally:
        ws.close()


def test_polling_interval_batches_ticks(simulator):
    sim = simulator(tags=2, rate=20, poll_interval=0.5)
    w = sim.tags[0].webid
    with connect(adhoc(sim, [t.webid for t in sim.tags]), open_timeout=10) as ws:
        recv_json(ws)
        msg = recv_json(ws)
        stamps = [ts for ts, _, _ in values_of(msg)[w]]
    assert len(stamps) >= 8 and stamps == list(range(stamps[0], stamps[-1] + 1, sim.period_us))


def test_url_length_limit(simulator):
    import requests

    sim = simulator(tags=200, rate=10, max_url_length=4096)
    few, many = [t.webid for t in sim.tags[:20]], [t.webid for t in sim.tags]
    with connect(adhoc(sim, few), open_timeout=10) as ws:
        assert len(recv_json(ws)["Items"]) == 20
    r = requests.get(adhoc(sim, many).replace("ws://", "http://", 1), timeout=10)
    assert r.status_code == 414 and r.json()["Errors"]
