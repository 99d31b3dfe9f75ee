"""The simulator takes a stream's WebID in every WebID 2.0 type and answers in the ``webIdType``
asked for (default Full), on channels, archive reads, lookups and inside ``batch``."""
from __future__ import annotations

import orjson
import pytest
import requests
from websockets.sync.client import connect

from pi_stream_source import webid as W
from pi_stream_source.pitime import parse_ts
from pi_swagger import validate
from test_simulator_channels import adhoc, recv_json, ws_url

TYPES = ("Full", "IDOnly", "PathOnly", "LocalIDOnly", "DefaultIDOnly")
XRW = {"X-Requested-With": "XMLHttpRequest"}


def get(sim, resource, **params):
    return requests.get(sim.url + resource, params=params, timeout=10)


def asked(webid_type):
    """Query parameters asking for ``webid_type`` (None: leave it to the default, Full)."""
    return {} if webid_type is None else {"webIdType": webid_type}


def assert_is_archived(sim, tag, value):
    ts = parse_ts(value["Timestamp"])
    assert sim.archive(tag.webid, ts, ts) == [(ts, value["Value"])]


def test_every_form_is_accepted_and_answered_in_the_type_asked_for_on_rest(simulator):
    sim = simulator(tags=6, rate=10, attributes_per_element=3)
    tag, attr, el = sim.tags[5], sim.elements[1].attributes[2], sim.elements[1]
    assert attr.tag is tag
    forms = {t: tag.webid_for(t) for t in TYPES}
    assert [f[:4] for f in forms.values()] == ["F1DP", "I1DP", "P1DP", "L1DP", "D1DP"]
    assert len(set(forms.values())) == 5
    for given_type, given in forms.items():
        for want in (None,) + TYPES:
            expect = tag.webid_for(want or "Full")
            q = asked(want)
            for resource in ("/streamsets/end", "/streamsets/recorded", "/streamsets/value"):
                r = get(sim, resource, webId=[given, sim.tags[0].webid], startTime="*-2s", **q)
                assert r.status_code == 200, (resource, given_type, want, r.text)
                body = r.json()
                validate(body, "Items[StreamValues]" if resource != "/streamsets/value" else "Items[StreamValue]")
                assert [s["WebId"] for s in body["Items"]] == [expect, sim.tags[0].webid_for(want or "Full")]
            for resource in ("end", "recorded", "value"):
                r = get(sim, f"/streams/{given}/{resource}")
                assert r.status_code == 200, (resource, given_type)
            assert_is_archived(sim, tag, get(sim, f"/streams/{given}/end").json())
            point = get(sim, f"/points/{given}", **q).json()
            validate(point, "Point")
            assert point["WebId"] == expect and point["Links"]["Self"].endswith("/points/" + expect)
            assert get(sim, "/points", path=tag.path, **q).json()["WebId"] == expect
            page = get(sim, f"/dataservers/{sim.dataserver_webid}/points", nameFilter=tag.name, **q).json()
            assert [p["WebId"] for p in page["Items"]] == [expect]
    for given_type in TYPES:
        given = attr.webid_for(given_type)
        for want in (None,) + TYPES:
            q = asked(want)
            expect = attr.webid_for(want or "Full")
            a = get(sim, f"/attributes/{given}", **q).json()
            validate(a, "Attribute")
            assert a["WebId"] == expect
            assert get(sim, "/attributes", path=attr.path, **q).json()["WebId"] == expect
            body = get(sim, f"/elements/{el.webid_for(given_type)}/attributes", **q).json()
            assert [x["WebId"] for x in body["Items"]] == [x.webid_for(want or "Full") for x in el.attributes]
            body = get(sim, f"/streamsets/{el.webid_for(given_type)}/end", **q).json()
            assert [x["WebId"] for x in body["Items"]] == [x.webid_for(want or "Full") for x in el.attributes]
            body = get(sim, "/streamsets/recorded", webId=given, startTime="*-1s", **q).json()
            assert [x["WebId"] for x in body["Items"]] == [expect]
        assert_is_archived(sim, tag, get(sim, f"/streams/{given}/end").json())   # the attribute's point's values


def test_lookups_by_the_encoded_ids_and_paths_like_pi(simulator):
    sim = simulator(tags=3)
    tag = sim.tags[2]
    # a Full WebID whose name part is stale (the point was renamed) still finds the point by its IDs
    renamed = W.full_point(sim.server_guid, tag.point_id, "\\\\SIMSRV\\OLD.NAME")
    assert get(sim, f"/points/{renamed}").json()["Name"] == tag.name
    # a PathOnly WebID built from the path in another case (PI paths are case-insensitive)
    assert get(sim, f"/points/{W.path_only(tag.path.lower())}").json()["Name"] == tag.name
    # WebID 2.0 parts decode the way the simulator encodes them
    parts = W.decode_parts(tag.webid_for("IDOnly"))
    assert (parts.type, parts.marker, parts.server_guid, parts.point_id, parts.path) == \
        ("IDOnly", "DP", sim.server_guid, tag.point_id, None)
    assert W.decode_parts(tag.webid_for("LocalIDOnly")).point_id == tag.point_id
    # another data server's point, an unknown point ID: 404 in PI's shape
    other = W.id_only_point(W.uuid.uuid4(), tag.point_id)
    for missing in (other, W.server_relative_point("LocalIDOnly", 999), "P1DP" + W.encode_name("SIMSRV\\NOPE")):
        r = get(sim, f"/streams/{missing}/end")
        assert r.status_code == 404, missing
        validate(r.json(), "Errors")
    r = get(sim, "/points/L1DPshort")
    assert r.status_code == 404 and r.json()["Errors"]


def test_unknown_webid_type_is_refused_with_pi_error_shape(simulator):
    sim = simulator(tags=2, rate=10)
    w = sim.tags[0].webid
    for resource, params in (("/streamsets/recorded", {"webId": w}), ("/streamsets/end", {"webId": w}),
                             (f"/points/{w}", {}), ("/points", {"path": sim.tags[0].path}),
                             (f"/dataservers/{sim.dataserver_webid}/points", {}), ("/streamsets/channel", {"webId": w}),
                             (f"/streams/{w}/channel", {})):
        r = get(sim, resource, webIdType="Shortest", **params)
        assert r.status_code == 400, resource
        validate(r.json(), "Errors")
        (message,) = r.json()["Errors"]
        assert "webIdType" in message and "Shortest" in message and "DefaultIDOnly" in message
    assert get(sim, "/streamsets/end", webId=w, webIdType="idonly").json()["Items"][0]["WebId"] == \
        sim.tags[0].webid_for("IDOnly")             # PI's enum parameters are case-insensitive


@pytest.mark.parametrize("want", [None, "IDOnly", "PathOnly", "LocalIDOnly", "DefaultIDOnly"])
def test_channels_take_any_form_and_answer_in_the_type_asked_for(simulator, want):
    sim = simulator(tags=6, rate=10, attributes_per_element=3)
    tag, el = sim.tags[1], sim.elements[0]
    extra = "" if want is None else f"&webIdType={want}"
    for given_type in TYPES:
        given = tag.webid_for(given_type)
        assert given[:4] == given_type[0] + "1DP"                 # really that type (L1DP…, D1DP…)
        for url in (adhoc(sim, [given, sim.tags[2].webid_for(given_type)], extra),
                    ws_url(sim, f"/streams/{given}/channel?includeInitialValues=true{extra}")):
            with connect(url, open_timeout=10) as ws:
                msg = recv_json(ws)
            validate(msg, "Items[StreamValues]")
            assert msg["Items"][0]["WebId"] == tag.webid_for(want or "Full"), (given_type, url)
        with connect(ws_url(sim, f"/streamsets/{el.webid_for(given_type)}/channel?x=1{extra}"), open_timeout=10) as ws:
            msg = recv_json(ws)
        assert [s["WebId"] for s in msg["Items"]] == [a.webid_for(want or "Full") for a in el.attributes]
    # what the oracle says was sent is keyed by the WebID as sent, and it resolves
    sent = sim.sent_values()
    assert tag.webid_for(want or "Full") in sent
    assert all(sim.stream(w) is not None for w in sent)


def test_batch_sub_requests_take_any_form_and_webidtype(simulator):
    sim = simulator(tags=3)
    tag = sim.tags[1]
    body = {
        "point": {"Method": "GET", "Resource": f"{sim.url}/points/{tag.webid_for('IDOnly')}?webIdType=PathOnly"},
        "end": {"Method": "GET", "Resource": f"{sim.url}/streamsets/end?webId={{0}}&webIdType=LocalIDOnly",
                "Parameters": ["$.point.Content.WebId"], "ParentIds": ["point"]},
        "bad": {"Method": "GET", "Resource": f"{sim.url}/points/{tag.webid}?webIdType=Nope"},
    }
    r = requests.post(sim.url + "/batch", data=orjson.dumps(body), headers=XRW, timeout=10)
    assert r.status_code == 207
    out = r.json()
    assert out["point"]["Status"] == 200 and out["point"]["Content"]["WebId"] == tag.webid_for("PathOnly")
    assert out["end"]["Status"] == 200
    assert out["end"]["Content"]["Items"][0]["WebId"] == tag.webid_for("LocalIDOnly")
    assert out["bad"]["Status"] == 400 and "webIdType" in out["bad"]["Content"]["Errors"][0]


def test_a_server_whose_default_webid_type_is_not_full(simulator):
    """PI's WebIDType configuration item sets the form of answers that ask for none."""
    sim = simulator(tags=2, rate=10, default_webid_type="IDOnly")
    tag = sim.tags[0]
    assert get(sim, "/streamsets/end", webId=tag.webid).json()["Items"][0]["WebId"] == tag.webid_for("IDOnly")
    assert get(sim, "/streamsets/end", webId=tag.webid, webIdType="Full").json()["Items"][0]["WebId"] == tag.webid
    assert get(sim, f"/points/{tag.webid}").json()["WebId"] == tag.webid_for("IDOnly")
    with connect(adhoc(sim, [tag.webid]), open_timeout=10) as ws:
        assert recv_json(ws)["Items"][0]["WebId"] == tag.webid_for("IDOnly")
    assert tag.webid_for("IDOnly") in sim.sent_values()
    from pi_stream_source.simulator import PISimulator
    with pytest.raises(ValueError, match="default_webid_type"):
        PISimulator(default_webid_type="Short")
