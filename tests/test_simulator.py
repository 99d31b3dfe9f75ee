"""The simulator, checked with third-party clients (requests, websockets) only."""
import orjson
import requests
from websockets.sync.client import connect

from pi_stream_source.pitime import format_ts, parse_ts
from pi_stream_source.simulator.ticks import format_ticks


def through(us: int) -> str:
    """An endTime that ends with µs ``us`` (its last 100-ns tick): stamps carry a 7th digit."""
    return format_ticks(us * 10 + 9)


def test_recorded_matches_archive_and_pages(simulator):
    sim = simulator(tags=3, rate=2, history_seconds=30)
    w = [t.webid for t in sim.tags]
    end = sim.tick_time(sim.last_tick())
    start = end - 10_000_000
    k0 = sim.last_tick() - 20
    r = requests.get(sim.url + "/streamsets/recorded", timeout=10,
                     params={"webId": w, "startTime": format_ts(start), "endTime": through(end)})
    assert r.status_code == 200
    body = r.json()
    assert [s["WebId"] for s in body["Items"]] == w
    for stream in body["Items"]:
        got = [(parse_ts(i["Timestamp"]), i["Value"]) for i in stream["Items"]]
        assert got == sim.archive(stream["WebId"], start, end)
        assert len(got) == 21                                   # inclusive of both ends at 2 Hz
    r = requests.get(sim.url + f"/streams/{w[0]}/recorded", timeout=10,
                     params={"startTime": format_ts(start), "endTime": through(end), "maxCount": 5})
    assert [i["Timestamp"] for i in r.json()["Items"]] == [format_ticks(sim.stamp(w[0], k0 + k)) for k in range(5)]
    assert [parse_ts(i["Timestamp"]) for i in r.json()["Items"]] == [start + k * 500_000 for k in range(5)]
    r = requests.get(sim.url + "/streamsets/recorded", timeout=10, params={"webId": w, "maxCount": 10**9})
    assert r.status_code == 400 and "maximum allowed" in r.json()["Errors"][0]


def test_channel_with_third_party_websocket_client(simulator):
    sim = simulator(tags=4, rate=10)
    ws_url = sim.url.replace("http", "ws", 1) + "/streamsets/channel?" + "&".join(f"webId={t.webid}" for t in sim.tags)
    with connect(ws_url, open_timeout=10) as ws:
        msg = orjson.loads(ws.recv(timeout=10))
    assert set(msg) == {"Links", "Items"}
    stream = msg["Items"][0]
    assert {"WebId", "Name", "Path", "Items", "UnitsAbbreviation", "Links"} <= set(stream)
    value = stream["Items"][0]
    assert {"Timestamp", "Value", "Good", "Questionable", "Substituted", "Annotated", "UnitsAbbreviation"} <= set(value)
    ts = parse_ts(value["Timestamp"])
    assert dict(sim.archive(stream["WebId"], ts, ts))[ts] == value["Value"]


def test_basic_auth_refuses_with_pi_error_body(simulator):
    sim = simulator(tags=1, auth="basic")
    r = requests.get(sim.url + "/points", params={"path": sim.tags[0].path}, timeout=10)
    assert r.status_code == 401 and r.json()["Errors"] and "WWW-Authenticate" in r.headers
    r = requests.get(sim.url + "/points", params={"path": sim.tags[0].path}, timeout=10,
                     auth=(sim.config.username, sim.config.password))
    assert r.status_code == 200 and r.json()["WebId"] == sim.tags[0].webid


def test_unknown_webid_on_channel_is_refused_before_upgrade(simulator):
    sim = simulator(tags=1)
    r = requests.get(sim.url + "/streamsets/channel", params={"webId": "F1DPnope"}, timeout=10)
    assert r.status_code == 404 and r.json()["Errors"]


def test_expected_archive_and_sent_values_agree_with_a_reader(simulator):
    sim = simulator(tags=3, rate=10, history_seconds=10)
    webids = [t.webid for t in sim.tags]
    end = sim.tick_time(sim.last_tick())
    expected = sim.expected_archive(webids, sim.t0, end)
    assert set(expected) == set(webids)
    assert all(len(v) == (end - sim.t0) // sim.period_us + 1 for v in expected.values())     # every tick since t0
    r = requests.get(sim.url + "/streamsets/recorded", timeout=10, params={
        "webId": webids, "startTime": format_ts(sim.t0), "endTime": through(end)})
    for s in r.json()["Items"]:
        assert [(parse_ts(i["Timestamp"]), i["Value"]) for i in s["Items"]] == expected[s["WebId"]]
    assert sim.sent_values() == {}                        # nothing on channels yet
