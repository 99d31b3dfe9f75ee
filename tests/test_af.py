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
    ({"table": "uom"}, "option 'table' must be one of .*elementtemplates, attributetemplates, categories, analyses, "
                       "unitclasses, units"),
    ({"table": "elements", "webIds": "F1DPx"}, "option 'webIds' chooses streams"),
    ({"table": "eventframes", "startTime": "*", "endTime": "*-1d"}, "option 'endTime'"),
    ({"table": "eventframes", "searchMode": "Backward"}, "option 'searchMode' must be Overlapped or Inclusive"),
    ({"table": "points", "pageSize": "0"}, "option 'pageSize' must be an integer between 1 and 150000"),
    ({"table": "points", "authType": "basic"}, "authType 'basic' needs options 'username' and 'password'"),
])
def test_bad_options_name_the_option(raw, message):
    with pytest.raises(PIOptionError, match=message):
        parse_af_options({"url": "http://127.0.0.1:9/piwebapi", **raw})


def test_templates_categories_analyses_units(spark, simulator):
    """The tables the Lakeflow osipi connector has beyond the hierarchy, each compared with the
    simulator's documented model (simulator/af.py): 7 elements, so analyses with and without a
    template and both statuses; attribute templates joined to their element template."""
    from pi_stream_source.simulator.rest_api import ELEMENT_CATEGORIES, ELEMENT_TEMPLATE

    sim = simulator(tags=len(KINDS) * 2, kinds="mixed", rate=1, history_seconds=60, attributes_per_element=3,
                    af_elements=7)
    m = sim.model
    assert len(m.elements) == 7
    db = m.database_path
    templates = {r.name: r for r in _table(spark, sim, "elementtemplates")}
    assert set(templates) == {ELEMENT_TEMPLATE, sim_af.EVENT_FRAME_TEMPLATE}
    unit, batch = templates[ELEMENT_TEMPLATE], templates[sim_af.EVENT_FRAME_TEMPLATE]
    assert (unit.path, unit.instance_type, unit.base_template, unit.allow_element_to_extend, unit.database_path) == \
        (f"{db}\\ElementTemplates[{ELEMENT_TEMPLATE}]", "Element", None, True, db)
    assert (batch.instance_type, batch.allow_element_to_extend) == ("EventFrame", False)
    # elements name their template: the join works
    assert {r.template_name for r in _table(spark, sim, "elements")} <= set(templates)

    attribute_templates = _table(spark, sim, "attributetemplates", database=db)
    first = m.elements[0].attributes
    types = {"int": "Int32", "digital": "EnumerationValue", "string": "String", "bool": "Boolean"}
    assert [(r.element_template_webid, r.element_template_name, r.name, r.path, r.type, r.uom, r.data_reference,
             r.default_value, r.category_names, r.database_path) for r in attribute_templates] == \
        [(unit.webid, ELEMENT_TEMPLATE, a.name, f"{unit.path}|{a.name}", types.get(a.tag.gen.kind, "Double"),
          a.tag.uom or None, "PI Point", "0", [sim_af.ATTRIBUTE_CATEGORIES[0]], db) for a in first]
    assert {r.name for r in attribute_templates} == {a.name for e in m.elements for a in e.attributes}

    categories = sorted((r.kind, r.name, r.path, r.database_path) for r in _table(spark, sim, "categories"))
    assert categories == sorted(
        [("element", n, f"{db}\\ElementCategories[{n}]", db) for n in ELEMENT_CATEGORIES]
        + [("attribute", n, f"{db}\\AttributeCategories[{n}]", db) for n in sim_af.ATTRIBUTE_CATEGORIES])

    analyses = {r.name: r for r in _table(spark, sim, "analyses", pageSize=2)}      # paged by 2
    assert set(analyses) == {f"{e.name} rollup" for e in m.elements}
    for i, e in enumerate(m.elements):
        r = analyses[f"{e.name} rollup"]
        assert (r.target_webid, r.target_path, r.template_name, r.status, r.path, r.database_path) == \
            (e.webid, e.path, None if i % 3 == 2 else sim_af.ANALYSIS_TEMPLATE,
             "Stopped" if i % 4 == 3 else "Running", f"{e.path}\\Analyses[{e.name} rollup]", db)
    assert {r.status for r in analyses.values()} == {"Running", "Stopped"}

    classes = {r.name: r for r in _table(spark, sim, "unitclasses")}
    assert {n: (r.canonical_unit_name, r.canonical_unit_abbreviation, r.asset_server) for n, r in classes.items()} \
        == {n: (c[0][0], c[0][1], m.af_server) for n, c in sim_af.UNIT_CLASSES.items()}
    units = _table(spark, sim, "units", database=db)
    assert sorted((r.class_name, r.name, r.abbreviation, r.factor, r.offset, r.reference_unit_abbreviation,
                   r.class_webid) for r in units) == sorted(
        (n, u[0], u[1], u[2], u[3], c[0][1], classes[n].webid) for n, c in sim_af.UNIT_CLASSES.items() for u in c[1])
    # a unit's value in the canonical unit: 20 degC is 293.15 K
    celsius = next(r for r in units if r.abbreviation == "degC")
    assert 20 * celsius.factor + celsius.offset == pytest.approx(293.15)
    for table in ("elementtemplates", "attributetemplates", "categories", "analyses", "unitclasses", "units"):
        rows = _table(spark, sim, table)
        assert len({r.webid for r in rows}) == len(rows) > 0, table


def test_asset_server_tables_refuse_an_unknown_server(spark, simulator):
    sim = simulator(tags=2, rate=1)
    with pytest.raises(Exception, match=r"option 'database' .*names asset server 'NOSUCH'"):
        _table(spark, sim, "units", database="\\\\NOSUCH\\db")
