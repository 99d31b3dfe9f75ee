"""Endpoints that fail on purpose: a status on one endpoint, persistently or N times (so a client's
failure budget can be tested), and a PI Web API version without ``streamsets/end``."""
from __future__ import annotations

import orjson
import pytest
import requests
from websockets.sync.client import connect

from pi_stream_source.simulator import PISimulator
from pi_swagger import validate
from test_simulator_channels import adhoc, recv_json

XRW = {"X-Requested-With": "XMLHttpRequest"}


def get(sim, resource, **params):
    return requests.get(sim.url + resource, params=params, timeout=10)


def test_an_endpoint_fails_persistently_until_cleared(simulator):
    sim = simulator(tags=2)
    w = sim.tags[0].webid
    sim.fail_endpoint("streamsets/end", 404)
    for _ in range(5):
        r = get(sim, "/streamsets/end", webId=w)
        assert r.status_code == 404
        validate(r.json(), "Errors")
    # only that endpoint: the single-stream end, recorded and the element form still answer
    assert get(sim, f"/streams/{w}/end").status_code == 200
    assert get(sim, "/streamsets/recorded", webId=w).status_code == 200
    assert get(sim, f"/streamsets/{sim.elements[0].webid}/end").status_code == 200
    # inside batch too: the sub-request carries the status
    body = {"a": {"Method": "GET", "Resource": f"{sim.url}/streamsets/end?webId={w}"}}
    out = requests.post(sim.url + "/batch", data=orjson.dumps(body), headers=XRW, timeout=10).json()
    assert out["a"]["Status"] == 404 and out["a"]["Content"]["Errors"]
    assert sim.stats["endpoint_faults_served"] == 6
    sim.clear_endpoint_faults("streamsets/end")
    assert get(sim, "/streamsets/end", webId=w).status_code == 200


def test_an_endpoint_fails_n_times_with_any_status(simulator):
    sim = simulator(tags=2)
    w = sim.tags[0].webid
    sim.fail_endpoint("streams/{webId}/recorded", 400, times=2, message="Parameter 'maxCount' is wrong.")
    sim.fail_endpoint("*/recorded", 503, times=1)              # a second fault, on the streamset form
    r = get(sim, f"/streams/{w}/recorded")
    assert r.status_code == 400 and r.json() == {"Errors": ["Parameter 'maxCount' is wrong."]}
    assert get(sim, "/streamsets/recorded", webId=w).status_code == 503
    assert get(sim, "/streamsets/recorded", webId=w).status_code == 200     # its one time is spent
    assert get(sim, f"/streams/{w}/recorded").status_code == 400
    assert get(sim, f"/streams/{w}/recorded").status_code == 200
    assert get(sim, f"/streams/{w}/recorded").status_code == 200


def test_channel_upgrades_and_the_control_api(simulator):
    sim = simulator(tags=2, rate=10)
    w = sim.tags[0].webid
    r = requests.post(sim.url + "/simulator/faults/fail_endpoint", headers=XRW, timeout=10,
                      data=orjson.dumps({"endpoint": "streamsets/channel", "status": 503, "times": 1}))
    assert r.status_code == 200
    with pytest.raises(Exception) as info:
        connect(adhoc(sim, [w]), open_timeout=10)
    assert "503" in str(info.value)
    with connect(adhoc(sim, [w]), open_timeout=10) as ws:             # once only
        assert recv_json(ws)["Items"][0]["WebId"] == w


def test_bad_fault_arguments_are_refused(simulator):
    sim = simulator(tags=1)
    with pytest.raises(ValueError, match="status"):
        sim.fail_endpoint("streamsets/end", 200)
    with pytest.raises(ValueError, match="times"):
        sim.fail_endpoint("streamsets/end", 404, times=0)
    with pytest.raises(ValueError, match="endpoint"):
        sim.fail_endpoint("/", 404)
    with pytest.raises(ValueError, match="missing_endpoints"):
        PISimulator(missing_endpoints="streamsets/end")


def test_a_version_without_streamsets_end(simulator):
    sim = simulator(tags=3, rate=10, missing_endpoints=("streamsets/end",))
    webids = [t.webid for t in sim.tags]
    r = get(sim, "/streamsets/end", webId=webids)
    assert r.status_code == 404
    validate(r.json(), "Errors")
    # the documented alternative: current values from streamsets/value
    r = get(sim, "/streamsets/value", webId=webids)
    assert r.status_code == 200
    body = r.json()
    validate(body, "Items[StreamValue]")
    assert [s["WebId"] for s in body["Items"]] == webids
    assert get(sim, f"/streams/{webids[0]}/end").status_code == 200     # only the named endpoint is missing
