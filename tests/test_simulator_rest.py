"""Simulator REST endpoints with plain HTTP (requests), validated against the swagger spec."""
from __future__ import annotations

import ssl
import subprocess
import sys
import time

import pytest
import requests
from websockets.sync.client import connect

from pi_stream_source import webid as W
from pi_stream_source.pitime import format_ts, parse_ts
from pi_stream_source.simulator.ticks import format_ticks, parse_ticks
from pi_swagger import response_definition, validate
from test_simulator_channels import adhoc, recv_json

XRW = {"X-Requested-With": "XMLHttpRequest"}


def get(sim, resource, **params):
    return requests.get(sim.url + resource, params=params, timeout=10)


def test_recorded_boundaries_order_time_strings_and_cap(simulator):
    sim = simulator(tags=2, rate=2, history_seconds=60, max_returned_items=1000)
    w = sim.tags[0].webid
    assert response_definition("/streams/{webId}/recorded", "get", "200") == "ExtendedTimedValues"
    end = sim.tick_time(sim.last_tick() - 4)
    start = end - 5_000_000
    inside = get(sim, f"/streams/{w}/recorded", startTime=format_ts(start + 1), endTime=format_ts(end - 1)).json()
    validate(inside, "ExtendedTimedValues")
    assert [parse_ts(i["Timestamp"]) for i in inside["Items"]] == list(range(start + 500_000, end, 500_000))
    outside = get(sim, f"/streams/{w}/recorded", startTime=format_ts(start + 1), endTime=format_ts(end - 1),
                  boundaryType="Outside").json()
    assert [parse_ts(i["Timestamp"]) for i in outside["Items"]] == list(range(start, end + 1, 500_000))
    interp = get(sim, f"/streams/{w}/recorded", startTime=format_ts(start + 250_000), endTime=format_ts(end),
                 boundaryType="Interpolated").json()["Items"]
    assert parse_ts(interp[0]["Timestamp"]) == start + 250_000
    (_, a), (_, b) = sim.archive(w, start, start + 500_000)
    assert interp[0]["Value"] == pytest.approx((a + b) / 2)
    desc = get(sim, f"/streams/{w}/recorded", startTime=format_ticks(end * 10 + 9),
               endTime=format_ts(start)).json()["Items"]
    assert [parse_ts(i["Timestamp"]) for i in desc] == list(range(end, start - 1, -500_000))
    default = get(sim, f"/streams/{w}/recorded").json()["Items"]       # *-1d .. *, maxCount 1000 > archive
    assert [(parse_ts(i["Timestamp"]), i["Value"]) for i in default] == sim.archive(w)
    rel = get(sim, f"/streams/{w}/recorded", startTime="*-10s", endTime="*").json()["Items"]
    assert 19 <= len(rel) <= 21
    today = get(sim, f"/streams/{w}/recorded", startTime="T", endTime="*", maxCount=5).json()["Items"]
    assert len(today) == 5 or sim.now() % 86_400_000_000 < 10_000_000
    r = get(sim, f"/streams/{w}/recorded", maxCount=1001)
    assert r.status_code == 400 and "maximum allowed" in r.json()["Errors"][0]
    validate(r.json(), "Errors")
    r = get(sim, "/streamsets/recorded", webId=[t.webid for t in sim.tags], maxCount=1000)   # 2 × 121 values fit
    assert r.status_code == 200
    sim.config.max_returned_items = 200
    r = get(sim, "/streamsets/recorded", webId=[t.webid for t in sim.tags], maxCount=200)
    assert r.status_code == 200 and sum(len(s["Items"]) for s in r.json()["Items"]) > 200
    sim.config.cap_whole_call = True                          # optionally the cap counts the whole call
    r = get(sim, "/streamsets/recorded", webId=[t.webid for t in sim.tags], maxCount=200)
    assert r.status_code == 400 and "maximum allowed" in r.json()["Errors"][0]
    r = get(sim, f"/streams/{w}/recorded", startTime="yesterday at noon")
    assert r.status_code == 400 and r.json()["Errors"]


def test_streamset_recorded_pages_like_the_client_does(simulator):
    sim = simulator(tags=3, rate=10, history_seconds=20)
    webids = [t.webid for t in sim.tags]
    start = sim.t0 * 10
    end = sim.stamp(webids[-1], sim.last_tick())         # 100-ns ticks: stamps have 7 digits
    got = {w: [] for w in webids}
    frm = {w: start for w in webids}
    for _ in range(20):                           # page by maxCount and time, as REFERENCE §2 describes
        pending = [w for w in webids if frm[w] is not None]
        if not pending:
            break
        body = get(sim, "/streamsets/recorded", webId=pending, startTime=format_ticks(min(frm[w] for w in pending)),
                   endTime=format_ticks(end), maxCount=70).json()
        validate(body, "Items[StreamValues]")
        for s in body["Items"]:
            items = [(parse_ticks(i["Timestamp"]), i["Value"]) for i in s["Items"]]
            items = [p for p in items if not got[s["WebId"]] or p[0] > got[s["WebId"]][-1][0]]
            got[s["WebId"]].extend(items)
            frm[s["WebId"]] = items[-1][0] if len(s["Items"]) == 70 else None
    for w in webids:
        assert got[w] == sim.archive(w, start, end, ticks=True)
        assert len(got[w]) >= 200                       # 20 s of history at 10 Hz


def test_value_end_and_streamset_value(simulator):
    sim = simulator(tags=2, rate=10, kinds="sine,digital")
    w, d = sim.tags[0].webid, sim.tags[1].webid
    end = get(sim, f"/streams/{w}/end").json()
    validate(end, "TimedValue")
    ts = parse_ts(end["Timestamp"])
    assert sim.archive(w, ts, ts) == [(ts, end["Value"])] and sim.now() - ts < 1_000_000
    value = get(sim, f"/streams/{d}/value").json()
    assert set(value["Value"]) == {"Name", "Value", "IsSystem"}
    at = sim.tick_time(sim.last_tick() - 20)
    v = get(sim, f"/streams/{w}/value", time=format_ts(at + 50_000)).json()
    (_, a), (_, b) = sim.archive(w, at, at + 100_000)
    assert v["Value"] == pytest.approx((a + b) / 2)
    exact = get(sim, f"/streams/{w}/recordedattime", time=format_ticks(sim.stamp(w, sim.last_tick() - 20))).json()
    assert (parse_ts(exact["Timestamp"]), exact["Value"]) == (at, a)
    after = get(sim, f"/streams/{w}/recordedattime", time=format_ts(at + 1), retrievalMode="AtOrAfter").json()
    assert (parse_ts(after["Timestamp"]), after["Value"]) == (at + 100_000, b)
    none = get(sim, f"/streams/{w}/recordedattime", time=format_ts(at + 1), retrievalMode="Exact").json()
    assert none["Value"]["Name"] == "No Data" and none["Good"] is False
    body = get(sim, "/streamsets/end", webId=[w, d]).json()
    validate(body, "Items[StreamValues]")            # the spec's shape for the ad-hoc end
    assert [s["WebId"] for s in body["Items"]] == [w, d]


def test_discovery_points_paths_and_webids(simulator):
    sim = simulator(tags=25, attributes_per_element=5, af_elements=3)
    ds = get(sim, "/dataservers").json()
    validate(ds, "Items[DataServer]")
    (server,) = ds["Items"]
    assert server["WebId"] == sim.dataserver_webid and server["Name"] == "SIMSRV"
    assert get(sim, "/dataservers", path="\\\\PIServers[SIMSRV]").json()["WebId"] == sim.dataserver_webid
    pages = []
    for start in range(0, 25, 10):
        body = get(sim, f"/dataservers/{server['WebId']}/points", startIndex=start, maxCount=10).json()
        validate(body, "Items[Point]")
        pages.extend(p["WebId"] for p in body["Items"])
    assert pages == [t.webid for t in sim.tags]
    body = get(sim, f"/dataservers/{server['WebId']}/points", nameFilter="sim.tag00001?").json()
    assert [p["Name"] for p in body["Items"]] == [f"SIM.Tag0000{i}" for i in range(10, 20)]
    tag = sim.tags[3]
    point = get(sim, "/points", path=tag.path).json()
    validate(point, "Point")
    assert point["WebId"] == tag.webid and point["Id"] == 4 and point["Path"] == tag.path
    # WebID 2.0, as the client's own webid module builds them
    info = W.decode(point["WebId"])
    assert (info.type, info.marker, info.server_guid, info.point_id, info.path) == \
        ("Full", "DP", sim.server_guid, 4, tag.path.upper())
    path_only = get(sim, "/points", path=tag.path, webIdType="PathOnly").json()["WebId"]
    assert path_only == W.path_only(tag.path) and path_only.startswith("P1DP")
    assert get(sim, f"/points/{path_only}").json()["WebId"] == tag.webid
    assert get(sim, f"/streams/{W.path_only(tag.path)}/end").status_code == 200
    r = get(sim, "/points", path="\\\\SIMSRV\\NOPE")
    assert r.status_code == 404 and "path was not found" in r.json()["Errors"][0]


def test_published_path_only_example_resolves(simulator):
    sim = simulator(tags=1, server_name="PISRV1", tag_prefix="SINUSOID")
    # the simulator names points prefix + 6 digits; the published example is the path's encoding
    assert W.path_only("\\\\PISRV1\\SINUSOID") == "P1DPUElTUlYxXFNJTlVTT0lE"
    t = sim.tags[0]
    assert t.path == "\\\\PISRV1\\SINUSOID000000"
    assert t.path_webid == "P1DP" + W.encode_name("PISRV1\\SINUSOID000000")
    assert get(sim, f"/points/{t.path_webid}").json()["Name"] == "SINUSOID000000"


def test_af_elements_attributes_and_element_channel(simulator):
    sim = simulator(tags=6, rate=10, attributes_per_element=3)
    servers = get(sim, "/assetservers").json()
    validate(servers, "Items[AssetServer]")
    dbs = get(sim, f"/assetservers/{servers['Items'][0]['WebId']}/assetdatabases").json()
    validate(dbs, "Items[AssetDatabase]")
    els = get(sim, f"/assetdatabases/{dbs['Items'][0]['WebId']}/elements").json()
    validate(els, "Items[Element]")
    assert [e["Path"] for e in els["Items"]] == ["\\\\SIMAF\\SimDB\\Unit1", "\\\\SIMAF\\SimDB\\Unit2"]
    el = get(sim, "/elements", path="\\\\SIMAF\\SimDB\\Unit2").json()
    validate(el, "Element")
    assert el["WebId"] == sim.elements[1].webid and el["WebId"].startswith("F1Em")
    attrs = get(sim, f"/elements/{el['WebId']}/attributes").json()
    validate(attrs, "Items[Attribute]")
    assert [a["Name"] for a in attrs["Items"]] == ["Temperature", "Pressure", "Flow"]
    attr = get(sim, "/attributes", path="\\\\SIMAF\\SimDB\\Unit2|Pressure").json()
    validate(attr, "Attribute")
    assert attr["WebId"].startswith("F1AbE") and attr["ConfigString"] == sim.tags[4].path
    assert get(sim, "/attributes", path="\\\\SIMAF\\SimDB\\Unit2|Pressure", webIdType="PathOnly").json()["WebId"] == \
        W.path_only("\\\\SIMAF\\SimDB\\Unit2|Pressure", W.MARKER_ATTRIBUTE)
    filtered = get(sim, f"/elements/{el['WebId']}/attributes", nameFilter="P*").json()["Items"]
    assert [a["Name"] for a in filtered] == ["Pressure"]
    # the attributes' recorded values are their points' values
    rec = get(sim, f"/streamsets/{el['WebId']}/recorded", startTime="*-2s").json()
    validate(rec, "Items[StreamValues]")
    for s in rec["Items"]:
        stream = sim.stream(s["WebId"])
        assert [(parse_ts(i["Timestamp"]), i["Value"]) for i in s["Items"]] == \
            sim.archive(stream.tag.webid, parse_ts(s["Items"][0]["Timestamp"]), parse_ts(s["Items"][-1]["Timestamp"]))
    with connect(sim.ws_url + f"/streamsets/{el['WebId']}/channel?nameFilter=Flow", open_timeout=10) as ws:
        msg = recv_json(ws)
    assert [s["Path"] for s in msg["Items"]] == ["\\\\SIMAF\\SimDB\\Unit2|Flow"]


def test_batch_runs_dependent_requests(simulator):
    sim = simulator(tags=3)
    tag = sim.tags[2]
    body = {
        "point": {"Method": "GET", "Resource": f"{sim.url}/points?path={tag.path}"},
        "end": {"Method": "GET", "Resource": sim.url + "/streams/{0}/end", "ParentIds": ["point"],
                "Parameters": ["$.point.Content.WebId"]},
        "all": {"Method": "GET", "Resource": f"{sim.url}/dataservers/{sim.dataserver_webid}/points"},
        "ends": {"Method": "GET", "ParentIds": ["all"], "Parameters": ["$.all.Content.Items[*].WebId"],
                 "RequestTemplate": {"Resource": sim.url + "/streams/{0}/end"}},
        "bad": {"Method": "GET", "Resource": f"{sim.url}/points?path=\\\\SIMSRV\\NOPE"},
        "child": {"Method": "GET", "Resource": sim.url + "/points/{0}", "ParentIds": ["bad"],
                  "Parameters": ["$.bad.Content.WebId"]},
    }
    r = requests.post(sim.url + "/batch", json=body, headers=XRW, timeout=10)
    assert r.status_code == 207
    out = r.json()
    assert out["point"]["Status"] == 200 and out["point"]["Content"]["WebId"] == tag.webid
    validate(out["point"]["Content"], "Point")
    assert out["end"]["Status"] == 200
    validate(out["end"]["Content"], "TimedValue")
    ends = out["ends"]["Content"]["Items"]
    assert len(ends) == 3 and all(i["Status"] == 200 for i in ends)
    assert out["bad"]["Status"] == 404 and out["child"]["Status"] >= 400
    r = requests.post(sim.url + "/batch", json=body, timeout=10)          # no X-Requested-With
    assert r.status_code == 400
    validate(r.json(), "Errors")


def test_error_statuses_and_shapes(simulator):
    sim = simulator(tags=2)
    w = sim.tags[0].webid
    cases = [(f"/streams/{w[:-3]}xyz/end", 404), ("/streams/notawebid/end", 400), (f"/elements/{w}", 409),
             ("/nothing/here", 404), (f"/streams/{w}/recorded?maxCount=abc", 400)]
    for path, status in cases:
        r = requests.get(sim.url + path, timeout=10)
        assert r.status_code == status, path
        validate(r.json(), "Errors")
    sim.forbid(w)
    r = get(sim, f"/streams/{w}/end")
    assert r.status_code == 403
    validate(r.json(), "Errors")
    r = requests.delete(sim.url + f"/points/{sim.tags[1].webid}", headers=XRW, timeout=10)
    assert r.status_code == 405


def test_bearer_auth_with_configured_and_issued_tokens(simulator):
    sim = simulator(tags=1, rate=10, auth="bearer", token="tok-123")
    r = get(sim, "/dataservers")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    validate(r.json(), "Errors")
    for token in ("tok-123", sim.issue_token()):
        r = requests.get(sim.url + "/dataservers", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 200
    r = requests.get(sim.url + "/dataservers", headers={"Authorization": "Bearer wrong"}, timeout=10)
    assert r.status_code == 401
    url = adhoc(sim, [sim.tags[0].webid])
    with pytest.raises(Exception) as info:
        connect(url, open_timeout=10)
    assert "401" in str(info.value)
    with connect(url, additional_headers={"Authorization": "Bearer tok-123"}, open_timeout=10) as ws:
        recv_json(ws)


def test_tls_with_a_generated_ca(simulator):
    sim = simulator(tags=1, rate=10, tls=True, auth="basic")
    assert sim.url.startswith("https://") and sim.ca_file
    with pytest.raises(requests.exceptions.SSLError):            # not trusted by the system store
        requests.get(sim.url + "/", timeout=10)
    r = requests.get(sim.url + "/dataservers", verify=sim.ca_file, auth=(sim.config.username, sim.config.password),
                     timeout=10)
    assert r.status_code == 200
    ctx = ssl.create_default_context(cafile=sim.ca_file)
    import base64
    cred = base64.b64encode(f"{sim.config.username}:{sim.config.password}".encode()).decode()
    with connect(adhoc(sim, [sim.tags[0].webid]), ssl=ctx, open_timeout=10,
                 additional_headers={"Authorization": f"Basic {cred}"}) as ws:
        assert ws.request.path.startswith("/piwebapi/streamsets/channel")
        validate(recv_json(ws), "Items[StreamValues]")


def test_channel_instances_and_home(simulator):
    sim = simulator(tags=1, rate=10)
    home = get(sim, "/").json()
    validate(home, "Landing")
    with connect(adhoc(sim, [sim.tags[0].webid]), open_timeout=10) as ws:
        recv_json(ws)
        body = get(sim, "/channels/instances").json()
        validate(body, "Items[ChannelInstance]")
        assert len(body["Items"]) == 1 and body["Items"][0]["SentMessageCount"] >= 1


def test_cli_prints_url_credentials_and_webids(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "pi_stream_source.simulator", "--tags", "3", "--port", "0",
                             "--auth", "basic", "--tls", "--no-commands"], stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("Ctrl-C" in x for x in lines):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        text = "".join(lines)
        assert "PI Web API simulator at https://127.0.0.1:" in text
        assert "username=piuser" in text and "password=" in text and "caBundle" in text
        assert text.count("F1DP") >= 3
        url = text.split(" at ", 1)[1].split()[0]
        ca = text.split("(option caBundle): ", 1)[1].split()[0]
        r = requests.get(url + "/dataservers", verify=ca, auth=("piuser", "pi-secret"), timeout=10)
        assert r.status_code == 200
    finally:
        proc.terminate()
        proc.wait(20)
    assert proc.returncode == 0


def test_every_get_endpoint_matches_its_swagger_response(simulator):
    """Each REST route, answered with the definition the spec names for its 200 response."""
    sim = simulator(tags=4, rate=10, attributes_per_element=2)
    t, el = sim.tags[0], sim.elements[0]
    a = el.attributes[0]
    ds, srv, db = sim.dataserver_webid, sim.model.assetserver_webid, sim.model.database_webid
    routes = [
        ("/", "/", {}),
        ("/dataservers", "/dataservers", {}),
        ("DataServer", "/dataservers", {"path": "\\\\PIServers[SIMSRV]"}),   # GetByPath: not in this spec
        ("/dataservers/{webId}", f"/dataservers/{ds}", {}),
        ("/dataservers/{webId}/points", f"/dataservers/{ds}/points", {"nameFilter": "*", "maxCount": 2}),
        ("/points", "/points", {"path": t.path}),
        ("/points/{webId}", f"/points/{t.webid}", {}),
        ("/assetservers", "/assetservers", {}),
        ("/assetservers/{webId}", f"/assetservers/{srv}", {}),
        ("/assetservers/{webId}/assetdatabases", f"/assetservers/{srv}/assetdatabases", {}),
        ("/assetdatabases", "/assetdatabases", {"path": "\\\\SIMAF\\SimDB"}),
        ("/assetdatabases/{webId}", f"/assetdatabases/{db}", {}),
        ("/assetdatabases/{webId}/elements", f"/assetdatabases/{db}/elements", {}),
        ("/elements", "/elements", {"path": el.path}),
        ("/elements/{webId}", f"/elements/{el.webid}", {}),
        ("/elements/{webId}/attributes", f"/elements/{el.webid}/attributes", {}),
        ("/attributes", "/attributes", {"path": a.path}),
        ("/attributes/{webId}", f"/attributes/{a.webid}", {}),
        ("/streams/{webId}/recorded", f"/streams/{a.webid}/recorded", {"startTime": "*-2s"}),
        ("/streams/{webId}/value", f"/streams/{t.webid}/value", {"time": "*-1.05s"}),
        ("/streams/{webId}/end", f"/streams/{t.webid}/end", {}),
        ("/streams/{webId}/recordedattime", f"/streams/{t.webid}/recordedattime", {"time": "*-1.05s"}),
        ("/streamsets/recorded", "/streamsets/recorded", {"webId": [t.webid, a.webid], "startTime": "*-1s"}),
        ("/streamsets/value", "/streamsets/value", {"webId": [t.webid, a.webid]}),
        ("/streamsets/end", "/streamsets/end", {"webId": [t.webid]}),
        ("/streamsets/{webId}/recorded", f"/streamsets/{el.webid}/recorded", {"startTime": "*-1s"}),
        ("/streamsets/{webId}/value", f"/streamsets/{el.webid}/value", {}),
        ("/streamsets/{webId}/end", f"/streamsets/{el.webid}/end", {}),
        ("/channels/instances", "/channels/instances", {}),
    ]
    swagger_paths = set()
    for template, path, params in routes:
        definition = response_definition(template, "get", "200") if template.startswith("/") else template
        r = get(sim, path, **params)
        assert r.status_code == 200, (path, r.text)
        validate(r.json(), definition)
        swagger_paths.add(template)
    assert len(swagger_paths) == 29


def test_selected_fields(simulator):
    sim = simulator(tags=2, rate=10)
    body = get(sim, "/streamsets/recorded", webId=[t.webid for t in sim.tags], startTime="*-1s",
               selectedFields="Items.WebId;Items.Items.Timestamp;Items.Items.Value").json()
    validate(body, "Items[StreamValues]")
    assert set(body) == {"Items"} and set(body["Items"][0]) == {"WebId", "Items"}
    assert set(body["Items"][0]["Items"][0]) == {"Timestamp", "Value"}


def test_outside_boundary_keeps_a_value_on_the_boundary(simulator):
    sim = simulator(tags=1, rate=2, history_seconds=30)
    w = sim.tags[0].webid
    last = sim.last_tick() - 4
    start, end = sim.stamp(w, last - 4), sim.stamp(w, last)      # 100-ns stamps with a 7th digit
    items = get(sim, f"/streams/{w}/recorded", startTime=format_ticks(start), endTime=format_ticks(end),
                boundaryType="Outside").json()["Items"]
    assert [parse_ticks(i["Timestamp"]) for i in items] == [sim.stamp(w, k) for k in range(last - 4, last + 1)]
