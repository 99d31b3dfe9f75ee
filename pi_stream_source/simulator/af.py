"""History and asset-context endpoints of the simulated PI Web API: ``streamsets/interpolated``,
``streamsets/plot``, ``streamsets/summary`` and ``streamsets/interpolatedattimes`` computed from
the archive, and AF event frames.

Event frames: every element has one ``Batch`` frame (template ``BatchTemplate``, category
``Batch``) every ``EVENT_FRAME_EVERY`` of archive time, starting ``EVENT_FRAME_STAGGER`` × its
index after ``t0`` and lasting ``EVENT_FRAME_LENGTH``; a frame still running at the clock's now has
the open end PI uses (9999-12-31). Its primary (only) referenced element is the element; its
attributes are the element's (``streamsets/{frame}/value?time=…`` reads them, e.g. at its end).
(Elements carry a template and categories too: ``rest_api.ELEMENT_TEMPLATE``, ``ELEMENT_CATEGORIES``.)

Asset context beyond the hierarchy (``AssetContext``), fixed by the model, so a test can list what
PI must answer:

* element templates: ``UnitTemplate`` (instance type Element; its attribute templates are the
  attribute names the elements use, ``ATTRIBUTE_NAMES[:attributes_per_element]``, PI Point data
  references, units and type of the first element's attribute of that name, category
  ``Process Data``) and ``BatchTemplate`` (EventFrame, no attribute templates);
* element categories ``ELEMENT_CATEGORIES``; attribute categories ``ATTRIBUTE_CATEGORIES``;
* analyses: one per element, ``<element> rollup`` targeting it, template ``UnitRollup`` except
  every third element's (no template), status ``Running`` except every fourth (``Stopped``);
* units of measure: ``UNIT_CLASSES`` (each with its canonical unit and units: factor and offset
  to the canonical unit).

Registered by ``RestAPI`` through ``routes(api)``. What the simulator computes (and a test can
recompute from ``PISimulator.archive``):

* interpolated: at ``startTime + i * interval`` up to ``endTime``, a recorded value exactly there
  (flags kept), else linear between neighbours for floats, else the previous value;
  ``No Data`` (state 248) before the first value;
* interpolatedattimes: the same value at each ``time`` asked (sorted by ``sortOrder``);
* plot: per each of ``intervals`` equal intervals (``[a, b)``, the last ``[a, end]``), the first,
  last, minimum and maximum recorded values (first and last only for non-numbers), in time order;
* summary: per ``summaryDuration`` interval (the whole range without it; ``[a, b)``, the last
  ``[a, end]``): ``Count`` is the number of recorded values of any kind; ``Minimum``,
  ``Maximum``, ``Range``, ``Average``, ``Total``, ``StdDev``, ``PopulationStdDev`` are over the good
  numeric values (event-weighted; with ``calculationBasis=TimeWeighted``, ``Average`` and ``Total``
  weigh each value by the time until the next one, ``Total`` per day as PI does); ``PercentGood``
  is the share of good values. Timestamps: ``timeType`` ``Auto`` puts Minimum/Maximum at their
  value's time and the rest at the interval start, ``EarliestTime`` the start, ``MostRecentTime``
  the end. An interval without good numbers answers ``No Data`` with ``Good: false``.

Times are the archive's 100-ns ticks throughout: ``startTime``/``endTime`` parse to ticks (a
seventh fractional digit counts), spans and interval edges are ticks, and stamps print with the
seventh digit where the archive has one.
"""
from __future__ import annotations

import fnmatch
import math
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from .. import webid as W
from ..pitime import MICROS, parse_duration
from .model import SimElement
from .rest_api import PIError, Req, Resp, json_resp
from .ticks import TICKS_PER_SECOND, TICKS_PER_US, format_ticks, parse_pi_time_ticks

if TYPE_CHECKING:
    from .rest_api import RestAPI

SUMMARY_TYPES = ("Total", "Average", "Minimum", "Maximum", "Range", "StdDev", "PopulationStdDev", "Count",
                 "PercentGood")
CALCULATION_BASES = ("TimeWeighted", "EventWeighted")
TIME_TYPES = ("Auto", "EarliestTime", "MostRecentTime")
NO_DATA = {"Name": "No Data", "Value": 248, "IsSystem": True}
BAD = (False, False, False)


EVENT_FRAME_TEMPLATE = "BatchTemplate"
# µs, on the archive's µs grid (``t0``); frames keep their times in ticks
EVENT_FRAME_EVERY = 1800 * MICROS
EVENT_FRAME_LENGTH = 1200 * MICROS
EVENT_FRAME_STAGGER = 60 * MICROS
EVENT_FRAMES_AHEAD = 2 * 86400 * MICROS       # frames exist for this long past the start (then none)
OPEN_END = "9999-12-31T23:59:59Z"


ATTRIBUTE_CATEGORIES = ("Process Data", "Diagnostics")
ANALYSIS_TEMPLATE = "UnitRollup"
#: name → (canonical unit (name, abbreviation), [(name, abbreviation, factor, offset)]): a value in
#: the unit is ``value * factor + offset`` in the canonical unit
UNIT_CLASSES: Dict[str, Tuple[Tuple[str, str], List[Tuple[str, str, float, float]]]] = {
    "Temperature": (("kelvin", "K"), [("kelvin", "K", 1.0, 0.0), ("degree Celsius", "degC", 1.0, 273.15),
                                      ("degree Fahrenheit", "degF", 5.0 / 9.0, 255.3722222222222)]),
    "Pressure": (("pascal", "Pa"), [("pascal", "Pa", 1.0, 0.0), ("kilopascal", "kPa", 1000.0, 0.0),
                                    ("bar", "bar", 100000.0, 0.0), ("pound-force per square inch", "psi",
                                                                      6894.757293168361, 0.0)]),
    "Ratio": (("percent", "%"), [("percent", "%", 1.0, 0.0), ("parts per million", "ppm", 0.0001, 0.0)]),
}


def routes(api: "RestAPI") -> List[Tuple[str, str, Callable[[Req], Resp]]]:
    frames = EventFrames(api)
    context = AssetContext(api)
    w = r"(?P<webId>[^/]+)"
    return [
        ("GET", rf"assetdatabases/{w}/elementtemplates", context.element_templates),
        ("GET", rf"elementtemplates/{w}/attributetemplates", context.attribute_templates),
        ("GET", rf"assetdatabases/{w}/elementcategories", context.element_categories),
        ("GET", rf"assetdatabases/{w}/attributecategories", context.attribute_categories),
        ("GET", rf"assetdatabases/{w}/analyses", context.analyses),
        ("GET", rf"assetservers/{w}/unitclasses", context.unit_classes),
        ("GET", rf"unitclasses/{w}/units", context.units),
        ("GET", r"streamsets/interpolated", lambda req: interpolated(api, req)),
        ("GET", r"streamsets/plot", lambda req: plot(api, req)),
        ("GET", r"streamsets/summary", lambda req: summary(api, req)),
        ("GET", r"streamsets/interpolatedattimes", lambda req: interpolated_at_times(api, req)),
        ("GET", rf"assetdatabases/{w}/eventframes", frames.search),
        ("GET", rf"eventframes/{w}", frames.get),
    ]


def _webid(marker: str, owner: uuid.UUID, guid: uuid.UUID) -> str:
    """A Full-form-like WebID of an AF object (marker, owner and object GUIDs)."""
    return "F1" + marker + W.encode_guid(owner) + W.encode_guid(guid)


class AssetContext:
    """Templates, categories, analyses and units of measure of the simulated AF server (see the
    module docstring); each object is built once, with stable GUIDs, as PI Web API objects."""

    def __init__(self, api: "RestAPI") -> None:
        from .rest_api import ELEMENT_CATEGORIES, ELEMENT_TEMPLATE

        self.api = api
        m = api.model
        db, g = m.database_path, m.db_guid
        first = {a.name: a for e in reversed(m.elements) for a in e.attributes}    # the first element's wins
        names = [a.name for a in m.elements[0].attributes] if m.elements else []
        self.templates: List[Dict[str, Any]] = []
        self.attribute_template_lists: Dict[str, List[Dict[str, Any]]] = {}
        for name, kind, attrs in ((ELEMENT_TEMPLATE, "Element", names), (EVENT_FRAME_TEMPLATE, "EventFrame", [])):
            guid = uuid.uuid5(g, "template:" + name)
            path = f"{db}\\ElementTemplates[{name}]"
            t = {"WebId": _webid("ET", g, guid), "Id": str(guid), "Name": name, "Description": f"{kind} template",
                 "Path": path, "BaseTemplate": "", "NamingPattern": "", "CategoryNames": [],
                 "AllowElementToExtend": kind == "Element", "InstanceType": kind, "Severity": "None",
                 "CanBeAcknowledged": False, "ExtendedProperties": {}, "Links": {}}
            self.templates.append(t)
            self.attribute_template_lists[t["WebId"]] = [self._attribute_template(path, guid, first[a]) for a in attrs]
        self.element_category_list = [self._category("EC", "ElementCategories", n) for n in ELEMENT_CATEGORIES]
        self.attribute_category_list = [self._category("AC", "AttributeCategories", n) for n in ATTRIBUTE_CATEGORIES]
        self.analysis_list = []
        for i, el in enumerate(m.elements):
            name = f"{el.name} rollup"
            guid = uuid.uuid5(el.guid, "analysis:" + name)
            templated = i % 3 != 2
            self.analysis_list.append({
                "WebId": _webid("XS", g, guid), "Id": str(guid), "Name": name, "Description": f"rollup of {el.name}",
                "Path": f"{el.path}\\Analyses[{name}]", "AnalysisRulePlugInName": "PerformanceEquation",
                "AutoCreated": False, "CategoryNames": ["Rollups"], "GroupId": 0, "HasNotification": False,
                "HasTarget": True, "HasTemplate": templated, "IsConfigured": True,
                "IsTimeRuleDefinedByTemplate": templated, "MaximumQueueSize": 0, "OutputTime": "",
                "Priority": "High", "PublishResults": False, "Status": "Stopped" if i % 4 == 3 else "Running",
                "TargetWebId": el.webid, "TemplateName": ANALYSIS_TEMPLATE if templated else "",
                "TimeRulePlugInName": "Periodic", "Links": {}})
        self.unit_class_list: List[Dict[str, Any]] = []
        self.unit_lists: Dict[str, List[Dict[str, Any]]] = {}
        for cname, ((canon, canon_abbr), units) in UNIT_CLASSES.items():
            cguid = uuid.uuid5(m.af_guid, "uom-class:" + cname)
            cpath = f"\\\\{m.af_server}\\UOMClasses[{cname}]"
            c = {"WebId": _webid("UC", m.af_guid, cguid), "Id": str(cguid), "Name": cname,
                 "Description": f"{cname} units", "Path": cpath, "CanonicalUnitName": canon,
                 "CanonicalUnitAbbreviation": canon_abbr, "Links": {}}
            self.unit_class_list.append(c)
            self.unit_lists[c["WebId"]] = [
                {"WebId": _webid("UT", cguid, uuid.uuid5(cguid, uname)), "Id": str(uuid.uuid5(cguid, uname)),
                 "Name": uname, "Abbreviation": abbr, "Description": "", "Path": f"{cpath}\\UOMs[{uname}]",
                 "Factor": factor, "Offset": offset, "ReferenceFactor": factor, "ReferenceOffset": offset,
                 "ReferenceUnitAbbreviation": canon_abbr, "Links": {}}
                for uname, abbr, factor, offset in units]

    def _attribute_template(self, template_path: str, template_guid: uuid.UUID, a: Any) -> Dict[str, Any]:
        from .rest_api import attribute_type

        guid = uuid.uuid5(template_guid, "attribute:" + a.name)
        return {"WebId": _webid("AT", template_guid, guid), "Id": str(guid), "Name": a.name,
                "Description": f"{a.name} of the unit", "Path": f"{template_path}|{a.name}",
                "Type": attribute_type(a.tag), "TypeQualifier": "", "DefaultUnitsName": a.tag.uom,
                "DefaultUnitsNameAbbreviation": a.tag.uom, "DefaultValue": 0, "DataReferencePlugIn": "PI Point",
                "ConfigString": "\\\\%Server%\\%Element%.%Attribute%", "IsConfigurationItem": False,
                "IsExcluded": False, "IsHidden": False, "IsManualDataEntry": False, "HasChildren": False,
                "TraitName": "", "CategoryNames": [ATTRIBUTE_CATEGORIES[0]], "Links": {}}

    def _category(self, marker: str, collection: str, name: str) -> Dict[str, Any]:
        m = self.api.model
        guid = uuid.uuid5(m.db_guid, f"{collection}:{name}")
        return {"WebId": _webid(marker, m.db_guid, guid), "Id": str(guid), "Name": name,
                "Description": f"{name} category", "Path": f"{m.database_path}\\{collection}[{name}]", "Links": {}}

    def _database(self, req: Req) -> None:
        if req.match["webId"] != self.api.model.database_webid:
            raise PIError(404, f"The specified AF database was not found for WebId '{req.match['webId']}'.")

    def element_templates(self, req: Req) -> Resp:
        """No startIndex in 2018 SP1: ``maxCount`` (default 1000) cuts the list."""
        self._database(req)
        count = req.qint("maxCount", 1000)
        if count < 1:
            raise PIError(400, "Parameter 'maxCount' must not be negative or zero.")
        return json_resp({"Links": {}, "Items": self.templates[:count]})

    def attribute_templates(self, req: Req) -> Resp:
        found = self.attribute_template_lists.get(req.match["webId"])
        if found is None:
            raise PIError(404, f"The specified element template was not found for WebId '{req.match['webId']}'.")
        first, count = req.qint("startIndex", 0), req.qint("maxCount", 1000)
        if first < 0 or count < 1:
            raise PIError(400, "Parameters 'startIndex' and 'maxCount' must not be negative or zero.")
        return json_resp({"Links": {}, "Items": found[first:first + count]})

    def element_categories(self, req: Req) -> Resp:
        self._database(req)
        return json_resp({"Links": {}, "Items": self.element_category_list})

    def attribute_categories(self, req: Req) -> Resp:
        self._database(req)
        return json_resp({"Links": {}, "Items": self.attribute_category_list})

    def analyses(self, req: Req) -> Resp:
        self._database(req)
        first, count = req.qint("startIndex", 0), req.qint("maxCount", 1000)
        if first < 0 or count < 1:
            raise PIError(400, "Parameters 'startIndex' and 'maxCount' must not be negative or zero.")
        return json_resp({"Links": {}, "Items": self.analysis_list[first:first + count]})

    def unit_classes(self, req: Req) -> Resp:
        if req.match["webId"] != self.api.model.assetserver_webid:
            raise PIError(404, f"The specified PI AF server was not found for WebId '{req.match['webId']}'.")
        return json_resp({"Links": {}, "Items": self.unit_class_list})

    def units(self, req: Req) -> Resp:
        """The units of a class as ``Items`` (the 2018 SP1 spec names ``Unit`` as this response, a
        slip of the spec: the endpoint lists every unit of the class, as ``Items[Unit]``)."""
        found = self.unit_lists.get(req.match["webId"])
        if found is None:
            raise PIError(404, f"The specified unit class was not found for WebId '{req.match['webId']}'.")
        return json_resp({"Links": {}, "Items": found})


@dataclass(eq=False)
class SimEventFrame(SimElement):
    """An event frame; a ``SimElement`` so ``streamsets/{webId}/value`` reads its attributes.
    ``start``/``end`` in 100-ns ticks, as every time the endpoints compare."""
    start: int = 0
    end: int = 0
    primary: Optional[SimElement] = None


class EventFrames:
    """The event frames of the AF database, built once from the archive's start (see the module
    docstring), registered in the model's WebID index."""

    def __init__(self, api: "RestAPI") -> None:
        self.api = api
        m, arch = api.model, api.archive
        self.frames: List[SimEventFrame] = []
        for e, el in enumerate(m.elements):
            n = 0
            while True:
                start_us = arch.t0 + e * EVENT_FRAME_STAGGER + n * EVENT_FRAME_EVERY
                if start_us > arch.t0 + EVENT_FRAMES_AHEAD:
                    break
                start = start_us * TICKS_PER_US
                name = f"{el.name} batch {n + 1:04d}"
                path = f"{m.database_path}\\EventFrames[{name}]"
                guid = uuid.uuid5(el.guid, name)
                ef = SimEventFrame(name, path, "F1Fm" + W.encode_guid(m.af_guid) + W.encode_guid(guid)
                                   + W.encode_name(path[2:]), W.path_only(path, "Fm", ""),
                                   "I1Fm" + W.encode_guid(m.af_guid) + W.encode_guid(guid), guid,
                                   attributes=el.attributes, start=start, end=start + EVENT_FRAME_LENGTH * TICKS_PER_US, primary=el)
                self.frames.append(ef)
                for webid in (ef.webid, ef.path_webid, ef.id_webid):
                    m.by_webid[webid] = ef
                n += 1

    def obj(self, req: Req, ef: SimEventFrame) -> Dict[str, Any]:
        b, wt = req.base_url, self.api.webid_type(req)
        w = ef.webid_for(wt)
        now = self.api.archive.now_ticks()
        assert ef.primary is not None
        return {"WebId": w, "Id": str(ef.guid), "Name": ef.name, "Description": f"batch on {ef.primary.name}",
                "Path": ef.path, "TemplateName": EVENT_FRAME_TEMPLATE, "HasChildren": False,
                "CategoryNames": ["Batch"], "ExtendedProperties": {}, "StartTime": format_ticks(ef.start),
                "EndTime": format_ticks(ef.end) if ef.end <= now else OPEN_END, "Severity": "None",
                "AcknowledgedBy": "", "AcknowledgedDate": "1970-01-01T00:00:00Z", "CanBeAcknowledged": False,
                "IsAcknowledged": False, "IsAnnotated": False, "IsLocked": False, "AreValuesCaptured": ef.end <= now,
                "RefElementWebIds": [ef.primary.webid_for(wt)],
                "Links": {"Self": f"{b}/eventframes/{w}", "Attributes": f"{b}/eventframes/{w}/attributes",
                          "PrimaryReferencedElement": f"{b}/elements/{ef.primary.webid_for(wt)}",
                          "Database": f"{b}/assetdatabases/{self.api.model.database_webid}",
                          "Value": f"{b}/streamsets/{w}/value"}}

    def search(self, req: Req) -> Resp:
        """``assetdatabases/{webId}/eventframes``: searchMode Overlapped (default) or Inclusive,
        nameFilter, templateName, categoryName, referencedElementNameFilter, paged; by start time."""
        api = self.api
        if req.match["webId"] != api.model.database_webid:
            raise PIError(404, f"The specified AF database was not found for WebId '{req.match['webId']}'.")
        now = api.archive.now_ticks()
        start = _time(req, "startTime", "*-8h", now)
        end = _time(req, "endTime", "*", now)
        if end < start:
            raise PIError(400, "The endTime must be greater than or equal to the startTime.")
        mode = _choice(req, "searchMode", ("Overlapped", "Inclusive"), "Overlapped")
        first, count = req.qint("startIndex", 0), req.qint("maxCount", 1000)
        if first < 0 or count < 1:
            raise PIError(400, "Parameters 'startIndex' and 'maxCount' must not be negative or zero.")
        name, element = (req.q("nameFilter") or "*").upper(), (req.q("referencedElementNameFilter") or "*").upper()
        template, category = req.q("templateName"), req.q("categoryName")
        found = []
        for ef in self.frames:
            if ef.start > now:
                continue
            ef_end = ef.end if ef.end <= now else None          # running: open end
            if mode == "Overlapped":
                hit = ef.start <= end and (ef_end is None or ef_end >= start)
            else:
                hit = ef.start >= start and ef_end is not None and ef_end <= end
            assert ef.primary is not None
            hit = hit and fnmatch.fnmatchcase(ef.name.upper(), name) and \
                fnmatch.fnmatchcase(ef.primary.name.upper(), element) and \
                (template is None or template.lower() == EVENT_FRAME_TEMPLATE.lower()) and \
                (category is None or category.lower() == "batch")
            if hit:
                found.append(ef)
        found.sort(key=lambda f: (f.start, f.name))
        return json_resp({"Links": {}, "Items": [self.obj(req, f) for f in found[first:first + count]]})

    def get(self, req: Req) -> Resp:
        ef = self.api.lookup(req.match["webId"], (SimEventFrame,))
        if ef.start > self.api.archive.now_ticks():
            raise PIError(404, f"The specified event frame was not found for WebId '{req.match['webId']}'.")
        return json_resp(self.obj(req, ef))


def _time(req: Req, name: str, default: str, now: int) -> int:
    """A PI time parameter → epoch ticks (a 7-digit ISO stamp keeps its seventh digit)."""
    raw = req.q(name, default)
    try:
        return parse_pi_time_ticks(raw, now)
    except ValueError:
        raise PIError(400, f"The parameter '{name}' is not a valid time: '{raw}'.") from None


def _range(api: "RestAPI", req: Req) -> Tuple[int, int]:
    """[startTime, endTime] in ticks, as the archive compares stamps."""
    now = api.archive.now_ticks()
    start = _time(req, "startTime", "*-1d", now)
    end = _time(req, "endTime", "*", now)
    if end < start:
        raise PIError(400, "The end time must not be before the start time.")
    return start, end


def _duration(req: Req, name: str, default: Optional[str]) -> Optional[int]:
    """A time span parameter → ticks (PI spans go down to the µs here), None when absent."""
    raw = req.q(name, default)
    if raw is None or raw == "":
        return None
    try:
        us = parse_duration(raw)
    except ValueError:
        raise PIError(400, f"The parameter '{name}' is not a valid time span: '{raw}'.") from None
    if us <= 0:
        raise PIError(400, f"The parameter '{name}' must be greater than zero.")
    return us * TICKS_PER_US


def _choice(req: Req, name: str, allowed: Tuple[str, ...], default: str) -> str:
    raw = req.q(name) or default
    for a in allowed:
        if a.lower() == raw.lower():
            return a
    raise PIError(400, f"The value '{raw}' of parameter '{name}' is not valid; use one of {', '.join(allowed)}.")


def _check_cap(api: "RestAPI", values: int) -> None:
    cap = api.sim.config.max_returned_items
    if values > cap:
        raise PIError(400, f"The number of values requested ({values}) is greater than the maximum allowed ({cap}).")


def _answer(api: "RestAPI", req: Req, parts: List[bytes]) -> Resp:
    return Resp(200, b'{"Links":{},"Items":[' + b",".join(parts) + b"]}")


def _interpolated_at(api: "RestAPI", tag: Any, ts: int) -> bytes:
    """The value at ``ts`` (ticks): a recorded value exactly there (flags kept), else the
    interpolation, else ``No Data``."""
    p = api.archive.before(tag, ts + 1)
    if p is not None and p[0] == ts:
        return api.encoder.point_bytes(tag, p, shared=False)
    v = api.interpolate(tag, ts)
    return api.encoder.timed_value(tag, ts, NO_DATA, quality=BAD) if v is None else api.encoder.timed_value(tag, ts, v)


def interpolated(api: "RestAPI", req: Req) -> Resp:
    streams = api.streams_of(req)
    start, end = _range(api, req)
    step = _duration(req, "interval", "1h")
    assert step is not None
    n = (end - start) // step + 1
    _check_cap(api, n * len(streams))
    enc, wt = api.encoder, api.webid_type(req)
    parts = []
    for s in streams:
        items = [_interpolated_at(api, s.tag, start + i * step) for i in range(n)]
        parts.append(enc.stream_prefix(s, wt) + b',"Items":[' + b",".join(items) + b"]}")
    return _answer(api, req, parts)


def interpolated_at_times(api: "RestAPI", req: Req) -> Resp:
    """``streamsets/interpolatedattimes``: per stream, the value at each ``time`` (repeated
    parameter) as ``interpolated`` computes it, in ``sortOrder`` (Ascending by default)."""
    streams = api.streams_of(req)
    raw = req.qall("time")
    if not raw:
        raise PIError(400, "The parameter 'time' is required.")
    now = api.archive.now_ticks()
    times = []
    for t in raw:
        try:
            times.append(parse_pi_time_ticks(t, now))
        except ValueError:
            raise PIError(400, f"The parameter 'time' is not a valid time: '{t}'.") from None
    order = _choice(req, "sortOrder", ("Ascending", "Descending"), "Ascending")
    times.sort(reverse=order == "Descending")
    _check_cap(api, len(times) * len(streams))
    enc, wt = api.encoder, api.webid_type(req)
    parts = [enc.stream_prefix(s, wt) + b',"Items":[' + b",".join(_interpolated_at(api, s.tag, ts) for ts in times)
             + b"]}" for s in streams]
    return _answer(api, req, parts)


def _number(v: Any) -> Optional[float]:
    """The value as a number, or None for strings, states, booleans, NaN and infinities."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _good(tag: Any, p: Any, api: "RestAPI") -> bool:
    k = p[1]
    return k is None or (tag.index, k) in api.archive.edits or tag.gen.quality(k)[0]


def _intervals(start: int, end: int, count: int) -> List[Tuple[int, int, bool]]:
    """``count`` equal intervals of [start, end]: (a, b, last); all but the last are [a, b)."""
    out = []
    for i in range(count):
        a = start + (end - start) * i // count
        b = start + (end - start) * (i + 1) // count
        out.append((a, b, i == count - 1))
    return out


def _inside(points: List[Any], a: int, b: int, last: bool) -> List[Any]:
    return [p for p in points if a <= p[0] and (p[0] <= b if last else p[0] < b)]


def plot(api: "RestAPI", req: Req) -> Resp:
    streams = api.streams_of(req)
    start, end = _range(api, req)
    count = req.qint("intervals", 24)
    if count < 1:
        raise PIError(400, "The parameter 'intervals' must be greater than zero.")
    _check_cap(api, 4 * count * len(streams))
    arch, enc, wt = api.archive, api.encoder, api.webid_type(req)
    parts = []
    for s in streams:
        tag = s.tag
        points = arch.points(tag, start, end)
        chosen: Dict[int, Any] = {}
        for a, b, last in _intervals(start, end, count):
            inside = _inside(points, a, b, last)
            if not inside:
                continue
            pick = [inside[0], inside[-1]]
            numeric = [(n, p) for p in inside if (n := _number(arch.point_value(tag, p))) is not None]
            if numeric:
                pick += [min(numeric, key=lambda x: x[0])[1], max(numeric, key=lambda x: x[0])[1]]
            for p in pick:
                chosen[p[0]] = p
        items = [enc.point_bytes(tag, chosen[t], shared=False) for t in sorted(chosen)]
        parts.append(enc.stream_prefix(s, wt) + b',"Items":[' + b",".join(items) + b"]}")
    return _answer(api, req, parts)


def summary(api: "RestAPI", req: Req) -> Resp:
    import orjson

    streams = api.streams_of(req)
    start, end = _range(api, req)
    types = []
    for raw in req.qall("summaryType") or ["Total"]:
        for t in raw.split(","):
            match = [a for a in SUMMARY_TYPES if a.lower() == t.strip().lower()]
            if not match:
                raise PIError(400, f"The summary type '{t}' is not valid; use {', '.join(SUMMARY_TYPES)}.")
            types.append(match[0])
    basis = _choice(req, "calculationBasis", CALCULATION_BASES, "TimeWeighted")
    time_type = _choice(req, "timeType", TIME_TYPES, "Auto")
    dur = _duration(req, "summaryDuration", None)
    if dur is None:
        spans = [(start, end, True)]
    else:
        spans = []
        a = start
        while True:
            b = min(end, a + dur)
            spans.append((a, b, b >= end))
            if b >= end:
                break
            a = b
    _check_cap(api, len(spans) * len(types) * len(streams))
    arch, enc, wt = api.archive, api.encoder, api.webid_type(req)
    parts = []
    for s in streams:
        tag = s.tag
        points = arch.points(tag, start, end)
        items = []
        for a, b, last in spans:
            inside = _inside(points, a, b, last)
            for t in types:
                value, at, good = _summary_value(api, tag, inside, t, basis, a, b)
                ts = {"EarliestTime": a, "MostRecentTime": b}.get(time_type, at if at is not None else a)
                tv = enc.timed_value(tag, ts, value if good else NO_DATA, quality=(True, False, False) if good else BAD)
                items.append(b'{"Type":' + orjson.dumps(t) + b',"Value":' + tv + b"}")
        parts.append(enc.stream_prefix(s, wt, units=False) + b',"Items":[' + b",".join(items) + b"]}")
    return _answer(api, req, parts)


def _summary_value(api: "RestAPI", tag: Any, inside: List[Any], kind: str, basis: str,
                   a: int, b: int) -> Tuple[Any, Optional[int], bool]:
    """(value, timestamp of the value or None, good) of one summary over the points ``inside``."""
    arch = api.archive
    if kind == "Count":
        return len(inside), None, True
    good = [p for p in inside if _good(tag, p, api)]
    if kind == "PercentGood":
        return (100.0 * len(good) / len(inside), None, True) if inside else (None, None, False)
    nums = [(n, p) for p in good if (n := _number(arch.point_value(tag, p))) is not None]
    if not nums:
        return None, None, False
    values = [n for n, _ in nums]
    if kind == "Minimum":
        n, p = min(nums, key=lambda x: x[0])
        return n, p[0], True
    if kind == "Maximum":
        n, p = max(nums, key=lambda x: x[0])
        return n, p[0], True
    if kind == "Range":
        return max(values) - min(values), None, True
    if kind in ("Average", "Total"):
        if basis == "EventWeighted":
            avg = sum(values) / len(values)
            return (avg if kind == "Average" else sum(values)), None, True
        # each value holds until the next one (or the interval end)
        stamps = [p[0] for _, p in nums] + [b]
        weights = [stamps[i + 1] - stamps[i] for i in range(len(values))]
        span = sum(weights)
        avg = sum(v * w for v, w in zip(values, weights)) / span if span else values[-1]
        return (avg if kind == "Average" else avg * (b - a) / (86400 * TICKS_PER_SECOND)), None, True
    mean = sum(values) / len(values)
    sq = sum((v - mean) ** 2 for v in values)
    if kind == "PopulationStdDev":
        return math.sqrt(sq / len(values)), None, True
    return (math.sqrt(sq / (len(values) - 1)), None, True) if len(values) > 1 else (None, None, False)
