"""The simulator's history and asset-context endpoints (``simulator/af.py``) with plain HTTP,
validated against the PI Web API 2018 SP1 swagger spec."""
from __future__ import annotations

import pytest
import requests

from archive_oracle import value_at
from pi_stream_source.pitime import MICROS, format_ticks, format_ts, parse_ticks
from pi_swagger import response_definition, validate


def get(sim, resource, **params):
    return requests.get(sim.url + resource, params=params, timeout=10)


def test_interpolated_plot_summary_match_the_spec(simulator):
    sim = simulator(tags=4, kinds="mixed", rate=1, history_seconds=900)
    ids = [t.webid for t in sim.tags]
    rng = {"startTime": format_ts(sim.t0 + 60 * MICROS), "endTime": format_ts(sim.t0 + 660 * MICROS)}
    for path, extra, count in [("interpolated", {"interval": "1m"}, 11), ("plot", {"intervals": "5"}, None)]:
        assert response_definition(f"/streamsets/{path}", "get", "200") == "Items[StreamValues]"
        body = get(sim, f"/streamsets/{path}", webId=ids, **rng, **extra).json()
        validate(body, "Items[StreamValues]")
        assert [s["WebId"] for s in body["Items"]] == ids
        if count:
            assert all(len(s["Items"]) == count for s in body["Items"])
    assert response_definition("/streamsets/summary", "get", "200") == "Items[StreamSummaries]"
    body = get(sim, "/streamsets/summary", webId=ids, summaryType=["Count", "Average"], summaryDuration="5m",
               calculationBasis="EventWeighted", **rng).json()
    validate(body, "Items[StreamSummaries]")
    counts = [i["Value"]["Value"] for i in body["Items"][0]["Items"] if i["Type"] == "Count"]
    # [a, b) then the last interval [a, end]; step 660's stamp is 100-900 ns past the end: outside
    assert counts == [300, 300]
    # the end at PI's resolution: the 660th stamp itself (seven digits) is inside, 100 ns less is not
    stamp = sim.stamp(ids[0], 660)
    for end, count in [(stamp, 601), (stamp - 1, 600)]:
        body = get(sim, "/streamsets/summary", webId=ids[0], summaryType="Count", startTime=rng["startTime"],
                   endTime=format_ticks(end)).json()
        assert [i["Value"]["Value"] for i in body["Items"][0]["Items"]] == [count]


def test_interpolated_at_times_matches_the_spec(simulator):
    sim = simulator(tags=3, kinds="mixed", rate=1, history_seconds=900)
    ids = [t.webid for t in sim.tags]
    assert response_definition("/streamsets/interpolatedattimes", "get", "200") == "Items[StreamValues]"
    times = [sim.t0 + 300 * MICROS + 400_000, sim.t0 + 200 * MICROS]
    body = get(sim, "/streamsets/interpolatedattimes", webId=ids, time=[format_ts(t) for t in times]).json()
    validate(body, "Items[StreamValues]")
    assert [s["WebId"] for s in body["Items"]] == ids
    for s in body["Items"]:                                   # ascending by default, at the times asked
        assert [parse_ticks(v["Timestamp"]) for v in s["Items"]] == sorted(t * 10 for t in times)
        assert [v["Value"] for v in s["Items"]] == [value_at(sim, s["WebId"], t * 10) for t in sorted(times)]
    down = get(sim, "/streamsets/interpolatedattimes", webId=ids[0], time=[format_ts(t) for t in times],
               sortOrder="Descending").json()
    assert [parse_ticks(v["Timestamp"]) for v in down["Items"][0]["Items"]] == sorted((t * 10 for t in times), reverse=True)
    for params in ({"time": "soon"}, {}):
        r = get(sim, "/streamsets/interpolatedattimes", webId=ids[0], **params)
        assert r.status_code == 400
        validate(r.json(), "Errors")


@pytest.mark.parametrize("params, status", [
    ({"summaryType": "Median"}, 400), ({"calculationBasis": "Both"}, 400), ({"summaryDuration": "0s"}, 400),
    ({"startTime": "*", "endTime": "*-1h"}, 400),
])
def test_summary_refuses_bad_parameters(simulator, params, status):
    sim = simulator(tags=1, rate=1)
    r = get(sim, "/streamsets/summary", webId=sim.tags[0].webid, **params)
    assert r.status_code == status
    validate(r.json(), "Errors")


def test_event_frames_match_the_spec_and_their_attributes_read_at_the_end(simulator):
    sim = simulator(tags=8, rate=1, history_seconds=7200, attributes_per_element=4)
    db = sim.model.database_webid
    assert response_definition("/assetdatabases/{webId}/eventframes", "get", "200") == "Items[EventFrame]"
    frames = get(sim, f"/assetdatabases/{db}/eventframes", startTime="*-3h", endTime="*").json()
    validate(frames, "Items[EventFrame]")
    items = frames["Items"]
    assert items and {f["TemplateName"] for f in items} == {"BatchTemplate"}
    assert any(f["EndTime"].startswith("9999-") for f in items)             # running ones: open end
    one = get(sim, f"/eventframes/{items[0]['WebId']}").json()
    validate(one, "EventFrame")
    assert one["RefElementWebIds"] == [sim.elements[0].webid]
    end = parse_ticks(one["EndTime"])
    values = get(sim, f"/streamsets/{one['WebId']}/value", time=one["EndTime"]).json()
    validate(values, "Items[StreamValue]")
    for s in values["Items"]:
        assert parse_ticks(s["Value"]["Timestamp"]) == end
        # stamps carry a sub-µs offset: the value at the frame's end is PI's value at that instant
        assert s["Value"]["Value"] == value_at(sim, sim.stream(s["WebId"]).tag.webid, end)
    paged = get(sim, f"/assetdatabases/{db}/eventframes", startTime="*-3h", endTime="*", startIndex=1, maxCount=2)
    assert [f["WebId"] for f in paged.json()["Items"]] == [f["WebId"] for f in items[1:3]]
    assert get(sim, f"/assetdatabases/{db}/eventframes", searchMode="Backward").status_code == 400
    els = get(sim, f"/assetdatabases/{db}/elements").json()
    validate(els, "Items[Element]")
    assert els["Items"][0]["TemplateName"] == "UnitTemplate"


def test_templates_categories_analyses_units_match_the_spec(simulator):
    sim = simulator(tags=6, rate=1, attributes_per_element=3)
    db, server = sim.model.database_webid, sim.model.assetserver_webid
    for path, definition in [("elementtemplates", "Items[ElementTemplate]"),
                             ("elementcategories", "Items[ElementCategory]"),
                             ("attributecategories", "Items[AttributeCategory]"), ("analyses", "Items[Analysis]")]:
        assert response_definition(f"/assetdatabases/{{webId}}/{path}", "get", "200") == definition
        body = get(sim, f"/assetdatabases/{db}/{path}").json()
        validate(body, definition)
        assert body["Items"], path
        assert get(sim, f"/assetdatabases/F1RDnosuch/{path}").status_code == 404
    templates = get(sim, f"/assetdatabases/{db}/elementtemplates").json()["Items"]
    assert [t["Name"] for t in get(sim, f"/assetdatabases/{db}/elementtemplates", maxCount=1).json()["Items"]] == \
        [templates[0]["Name"]]
    assert response_definition("/elementtemplates/{webId}/attributetemplates", "get", "200") == "Items[AttributeTemplate]"
    attrs = get(sim, f"/elementtemplates/{templates[0]['WebId']}/attributetemplates").json()
    validate(attrs, "Items[AttributeTemplate]")
    assert [a["Name"] for a in attrs["Items"]] == [a.name for a in sim.elements[0].attributes]
    assert response_definition("/assetservers/{webId}/unitclasses", "get", "200") == "Items[UnitClass]"
    classes = get(sim, f"/assetservers/{server}/unitclasses").json()
    validate(classes, "Items[UnitClass]")
    # the spec names a single Unit as this answer; the endpoint lists the class's units: each is a Unit
    assert response_definition("/unitclasses/{webId}/units", "get", "200") == "Unit"
    units = get(sim, f"/unitclasses/{classes['Items'][0]['WebId']}/units").json()
    assert set(units) == {"Links", "Items"} and units["Items"]
    for unit in units["Items"]:
        validate(unit, "Unit")
    assert get(sim, "/unitclasses/F1UCnosuch/units").status_code == 404
