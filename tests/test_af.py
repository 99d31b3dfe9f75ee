"""Asset context tables (``pi_af``) read with real Spark from the simulator, compared with its model."""
from __future__ import annotations

import math

import pytest

from archive_oracle import value_at
from pi_stream_source.af import TABLES, parse_af_options
from pi_stream_source.errors import PIOptionError
from pi_stream_source.pitime import MICROS, to_datetime
from pi_stream_source.simulator import af as sim_af
from pi_stream_source.simulator.generators import KINDS


def _table(spark, sim, table, **options):
    reader = spark.read.format("pi_af").option("url", sim.url).option("table", table)
    for k, v in options.items():
        reader = reader.option(k, str(v))
    df = reader.load()
    assert df.schema == TABLES[table]
    return df.collect()


@pytest.fixture
def sim(simulator):
    return simulator(tags=len(KINDS) * 2, kinds="mixed", rate=1, history_seconds=7200, attributes_per_element=5)


def test_databases_elements_attributes_points(spark, sim):
    m = sim.model
    [db] = _table(spark, sim, "databases")
    assert (db.webid, db.name, db.path, db.asset_server) == (m.database_webid, m.af_database, m.database_path, m.af_server)
    elements = {r.path: r for r in _table(spark, sim, "elements")}
    assert set(elements) == {e.path for e in m.elements}
    for e in m.elements:
        r = elements[e.path]
        assert (r.webid, r.name, r.template_name, r.category_names, r.database_path) == \
            (e.webid, e.name, "UnitTemplate", ["Simulated", "Process Unit"], m.database_path)
    attributes = {r.path: r for r in _table(spark, sim, "attributes", database=m.database_path)}
    expected = [a for e in m.elements for a in e.attributes]
    assert set(attributes) == {a.path for a in expected}
    for a in expected:
        r = attributes[a.path]
        assert (r.webid, r.element_webid, r.element_path, r.data_reference, r.point_webid, r.point_path, r.uom) == \
            (a.webid, a.element.webid, a.element.path, "PI Point", a.tag.webid, a.tag.path, a.tag.uom or None)
    points = {r.webid: r for r in _table(spark, sim, "points", dataServer=m.server_name)}
    assert set(points) == {t.webid for t in sim.tags}
    types = {"int": "Int32", "digital": "Digital", "string": "String", "bool": "Digital"}
    for t in sim.tags:
        r = points[t.webid]
        assert (r.name, r.path, r.point_type, r.uom) == (t.name, t.path, types.get(t.gen.kind, "Float32"), t.uom or None)
        assert r.digital_set_name == {"digital": "Modes", "bool": "BOOL"}.get(t.gen.kind)
        assert r.descriptor == f"simulated {t.gen.kind}"
    some = _table(spark, sim, "points", nameFilter="SIM.Tag00000?")
    assert sorted(r.name for r in some) == [t.name for t in sim.tags[:10]]


def _frames_expected(sim, start, end):
    """The simulator's documented event frames that overlap [start, end] (now: the archive clock)."""
    now, out = sim.now(), {}
    for e, el in enumerate(sim.model.elements):
        n = 0
        while True:
            s = sim.t0 + e * sim_af.EVENT_FRAME_STAGGER + n * sim_af.EVENT_FRAME_EVERY
            if s > now:
                break
            f_end = s + sim_af.EVENT_FRAME_LENGTH
            if s <= end and (f_end > now or f_end >= start):
                out[f"{el.name} batch {n + 1:04d}"] = (s, f_end if f_end <= now else None, el)
            n += 1
    return out


def _local(spark, micros):
    """How PySpark's collect() shows an instant: a naive datetime in the Python process's zone."""
    return None if micros is None else to_datetime(micros).astimezone().replace(tzinfo=None)


def test_event_frames_and_their_values(spark, sim):
    start, end = sim.t0 + 1000 * MICROS, sim.now()
    rows = _table(spark, sim, "eventframes", startTime=to_datetime(start).isoformat(), endTime="*")
    want = _frames_expected(sim, start, end)
    assert {r.name for r in rows} == set(want) and len(rows) == len(want)
    for r in rows:
        s, f_end, el = want[r.name]
        assert (r.start_time, r.end_time) == (_local(spark, s), _local(spark, f_end))
        assert (r.template_name, r.category_names, r.primary_element_webid, r.primary_element_path) == \
            ("BatchTemplate", ["Batch"], el.webid, el.path)
    assert any(r.end_time is None for r in rows), "a running frame has no end"
    values = _table(spark, sim, "eventframe_values", startTime=to_datetime(start).isoformat(), endTime="*")
    by_frame = {}
    for v in values:
        by_frame.setdefault(v.eventframe_name, []).append(v)
    assert set(by_frame) == set(want)
    for name, (s, f_end, el) in want.items():
        got = {v.attribute_webid: v for v in by_frame[name]}
        assert set(got) == {a.webid for a in el.attributes}
        if f_end is None:
            continue
        for a in el.attributes:
            # stamps lie 100-900 ns past the grid, the frame ends on it: PI's value at the end
            value = value_at(sim, a.tag.webid, f_end * 10)
            v = got[a.webid]
            assert v.timestamp == _local(spark, f_end)
            if isinstance(value, float):
                assert v.value == value or (math.isnan(v.value) and math.isnan(value))
    inclusive = _table(spark, sim, "eventframes", startTime=to_datetime(start).isoformat(), endTime="*",
                       searchMode="Inclusive")
    assert {r.name for r in inclusive} == {n for n, (s, e, _) in want.items() if s >= start and e is not None}


@pytest.mark.parametrize("raw, message", [
    ({}, "option 'table' must be one of databases, elements"),
    ({"table": "templates"}, "option 'table' must be one of"),
    ({"table": "elements", "webIds": "F1DPx"}, "option 'webIds' chooses streams"),
    ({"table": "eventframes", "startTime": "*", "endTime": "*-1d"}, "option 'endTime'"),
    ({"table": "eventframes", "searchMode": "Backward"}, "option 'searchMode' must be Overlapped or Inclusive"),
    ({"table": "points", "pageSize": "0"}, "option 'pageSize' must be an integer between 1 and 150000"),
    ({"table": "points", "authType": "basic"}, "authType 'basic' needs options 'username' and 'password'"),
])
def test_bad_options_name_the_option(raw, message):
    with pytest.raises(PIOptionError, match=message):
        parse_af_options({"url": "http://127.0.0.1:9/piwebapi", **raw})
