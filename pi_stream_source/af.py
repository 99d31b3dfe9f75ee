"""Asset context as batch tables: ``spark.read.format("pi_af").option("table", …)``.

Tables (option ``table``), each with its schema in ``TABLES``:

* ``databases``: AF databases of every asset server (or the one in ``database``);
* ``elements``: every element of the database(s), the whole hierarchy: path, parent path,
  template, categories;
* ``attributes``: every attribute of those elements: type, units, data reference, and for a PI
  Point data reference the point behind it (WebID and ``\\\\server\\tag`` path);
* ``eventframes``: the event frames that overlap [``startTime``, ``endTime``] (``searchMode``
  Overlapped, or Inclusive): start, end (null while running), template, categories, primary
  element;
* ``eventframe_values``: per event frame, its attributes' values at its end (now for a running
  one), from ``streamsets/{frame}/value?time=…``: the data contract's value columns;
* ``points``: the points of ``dataServer`` (every one, or those matching ``nameFilter``): point
  type, class, units, descriptor, digital set, span, zero, step;
* ``elementtemplates``: the database's element (and event frame: ``instance_type``) templates:
  base template, naming pattern, categories, whether elements may extend them;
* ``attributetemplates``: every attribute template of those templates (inherited and child ones
  too), with its template: type, units, data reference, config string, default value, flags;
* ``categories``: element and attribute categories (``kind`` = ``element`` | ``attribute``);
* ``analyses``: name, template (null without one), target element (WebID and path), status
  (``Running``, ``Stopped``, … as PI gives it), rule and time-rule plug-ins, priority, categories;
* ``unitclasses``: the units-of-measure classes of the asset server(s) with their canonical unit;
* ``units``: every unit of those classes: abbreviation, ``factor`` and ``offset`` to the
  reference unit (``value * factor + offset``), the class.

Join to values on ``tag_webid`` (= ``attributes.point_webid`` or ``points.webid``) or on the path.
Auth, TLS and proxy options are the streaming source's (``options.parse_options``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple
from urllib.parse import quote

from pyspark.sql.datasource import DataSource, DataSourceReader, InputPartition
from pyspark.sql.types import (ArrayType, BooleanType, DoubleType, IntegerType, StringType, StructField, StructType,
                               TimestampType)

from .errors import PIOptionError, PIWebAPIError
from .options import SourceOptions, parse_options
from .pitime import TICKS_PER_MICRO, format_ticks, format_ts, now_micros, parse_pi_time, parse_ticks, parse_ts
from .rest import PIRestClient, batch_get

log = logging.getLogger(__name__)

_S, _B, _T = StringType(), BooleanType(), TimestampType()


def _schema(*fields: Tuple[str, Any]) -> StructType:
    return StructType([StructField(n, t, True) for n, t in fields])


TABLES: Dict[str, StructType] = {
    "databases": _schema(("webid", _S), ("id", _S), ("name", _S), ("path", _S), ("description", _S),
                         ("asset_server", _S)),
    "elements": _schema(("webid", _S), ("id", _S), ("name", _S), ("path", _S), ("parent_path", _S),
                        ("description", _S), ("template_name", _S), ("category_names", ArrayType(_S)),
                        ("has_children", _B), ("database_path", _S)),
    "attributes": _schema(("webid", _S), ("id", _S), ("name", _S), ("path", _S), ("element_webid", _S),
                          ("element_path", _S), ("description", _S), ("type", _S), ("uom", _S),
                          ("data_reference", _S), ("config_string", _S), ("point_webid", _S), ("point_path", _S),
                          ("category_names", ArrayType(_S))),
    "eventframes": _schema(("webid", _S), ("id", _S), ("name", _S), ("path", _S), ("description", _S),
                           ("template_name", _S), ("category_names", ArrayType(_S)), ("start_time", _T),
                           ("end_time", _T), ("severity", _S), ("primary_element_webid", _S),
                           ("primary_element_path", _S), ("database_path", _S)),
    "eventframe_values": _schema(("eventframe_webid", _S), ("eventframe_name", _S), ("attribute_webid", _S),
                                 ("attribute_name", _S), ("attribute_path", _S), ("timestamp", _T),
                                 ("value", DoubleType()), ("value_string", _S), ("digital_state_code", IntegerType()),
                                 ("good", _B), ("uom", _S), ("error", _S)),
    "points": _schema(("webid", _S), ("id", IntegerType()), ("name", _S), ("path", _S), ("descriptor", _S),
                      ("point_class", _S), ("point_type", _S), ("digital_set_name", _S), ("uom", _S),
                      ("span", DoubleType()), ("zero", DoubleType()), ("step", _B), ("future", _B),
                      ("data_server", _S)),
    "elementtemplates": _schema(("webid", _S), ("id", _S), ("name", _S), ("path", _S), ("description", _S),
                                ("instance_type", _S), ("base_template", _S), ("naming_pattern", _S),
                                ("category_names", ArrayType(_S)), ("allow_element_to_extend", _B), ("severity", _S),
                                ("can_be_acknowledged", _B), ("database_path", _S)),
    "attributetemplates": _schema(("element_template_webid", _S), ("element_template_name", _S), ("webid", _S),
                                  ("id", _S), ("name", _S), ("path", _S), ("description", _S), ("type", _S),
                                  ("type_qualifier", _S), ("uom", _S), ("data_reference", _S), ("config_string", _S),
                                  ("default_value", _S), ("is_configuration_item", _B), ("is_excluded", _B),
                                  ("is_hidden", _B), ("is_manual_data_entry", _B), ("has_children", _B),
                                  ("trait_name", _S), ("category_names", ArrayType(_S)), ("database_path", _S)),
    "categories": _schema(("kind", _S), ("webid", _S), ("id", _S), ("name", _S), ("path", _S), ("description", _S),
                          ("database_path", _S)),
    "analyses": _schema(("webid", _S), ("id", _S), ("name", _S), ("path", _S), ("description", _S),
                        ("template_name", _S), ("target_webid", _S), ("target_path", _S), ("status", _S),
                        ("analysis_rule_plugin", _S), ("time_rule_plugin", _S), ("priority", _S),
                        ("category_names", ArrayType(_S)), ("auto_created", _B), ("publish_results", _B),
                        ("database_path", _S)),
    "unitclasses": _schema(("webid", _S), ("id", _S), ("name", _S), ("path", _S), ("description", _S),
                           ("canonical_unit_name", _S), ("canonical_unit_abbreviation", _S), ("asset_server", _S)),
    "units": _schema(("webid", _S), ("id", _S), ("name", _S), ("abbreviation", _S), ("path", _S), ("description", _S),
                     ("factor", DoubleType()), ("offset", DoubleType()), ("reference_factor", DoubleType()),
                     ("reference_offset", DoubleType()), ("reference_unit_abbreviation", _S), ("class_webid", _S),
                     ("class_name", _S), ("asset_server", _S)),
}
#: tables read per asset server (the rest per database, points per data server)
_SERVER_TABLES = ("unitclasses", "units")

#: name → (default, help): this source's own options; auth/TLS/proxy come from ``options.OPTIONS``.
AF_OPTIONS: Dict[str, Tuple[Optional[str], str]] = {
    "table": (None, " | ".join(TABLES) + " (required)"),
    "database": (None, "AF database path \\\\afserver\\db (default: every database of every asset server; "
                       "unitclasses/units: its asset server)"),
    "dataServer": (None, "points: the PI Data Archive (name or WebID; default: every data server)"),
    "nameFilter": ("*", "points: point name filter (PI wildcards); eventframes: event frame name filter"),
    "startTime": ("*-1d", "eventframes/eventframe_values: start of the search range (PI time or ISO 8601)"),
    "endTime": ("*", "eventframes/eventframe_values: end of the search range"),
    "searchMode": ("Overlapped", "eventframes: Overlapped (frames that overlap the range) | Inclusive (inside it)"),
    "pageSize": ("1000", "maxCount of each listing call"),
}
_AF_LOWER = {k.lower(): k for k in AF_OPTIONS}
_STREAM_SELECTION = ("webIds", "paths", "elementPath")


@dataclass
class AFOptions:
    source: SourceOptions
    table: str
    database: Optional[str]
    data_server: Optional[str]
    name_filter: str
    start: int
    end: int
    search_mode: str
    page_size: int

    def __repr__(self) -> str:
        return f"AFOptions({self.source!r}, table={self.table!r})"


def parse_af_options(raw: Mapping[str, Any], now: Optional[int] = None) -> AFOptions:
    mine: Dict[str, str] = {}
    rest: Dict[str, Any] = {}
    for key, value in raw.items():
        canon = _AF_LOWER.get(str(key).lower())
        if canon is not None:
            mine[canon] = "" if value is None else str(value).strip()
        elif str(key).lower() in {s.lower() for s in _STREAM_SELECTION}:
            raise PIOptionError(f"option '{key}' chooses streams for the 'pi' and 'pi_websocket' sources; "
                                f"the asset tables take 'database', 'dataServer' and 'nameFilter'")
        else:
            rest[key] = value
    for name, (default, _) in AF_OPTIONS.items():
        if default is not None and not mine.get(name):
            mine[name] = default
    table = mine.get("table", "").lower()
    if table not in TABLES:
        raise PIOptionError(f"option 'table' must be one of {', '.join(TABLES)}, got {mine.get('table', '')!r}")
    source = parse_options(rest, require_streams=False)
    now = now_micros() if now is None else now
    times = {}
    for name in ("startTime", "endTime"):
        try:
            times[name] = parse_pi_time(mine[name], now)
        except ValueError:
            raise PIOptionError(f"option '{name}' must be a PI time (*-7d, t, y) or ISO 8601, "
                                f"got {mine[name]!r}") from None
    if times["endTime"] < times["startTime"]:
        raise PIOptionError(f"option 'endTime' ({mine['endTime']!r}) is before option 'startTime' "
                            f"({mine['startTime']!r})")
    mode = {"overlapped": "Overlapped", "inclusive": "Inclusive"}.get(mine["searchMode"].lower())
    if mode is None:
        raise PIOptionError(f"option 'searchMode' must be Overlapped or Inclusive, got {mine['searchMode']!r}")
    try:
        page = int(mine["pageSize"])
    except ValueError:
        page = 0
    if not 1 <= page <= 150_000:
        raise PIOptionError(f"option 'pageSize' must be an integer between 1 and 150000, got {mine['pageSize']!r}")
    return AFOptions(source, table, mine.get("database") or None, mine.get("dataServer") or None,
                     mine["nameFilter"], times["startTime"], times["endTime"], mode, page)


# ---- REST walks --------------------------------------------------------------------------------
def _client(o: AFOptions) -> PIRestClient:
    s = o.source
    return PIRestClient(s.url, s.credentials, s.ca_bundle, s.connect_timeout, proxy=s.proxy)


def _paged(client: PIRestClient, path: str, params: Dict[str, Any], page: int) -> Iterator[Dict[str, Any]]:
    """Every item of a PI listing, ``page`` at a time (startIndex/maxCount)."""
    start = 0
    while True:
        doc = client.get(path, params={**params, "startIndex": start, "maxCount": page})
        items = doc.get("Items") or [] if isinstance(doc, dict) else []
        yield from (i for i in items if isinstance(i, dict))
        if len(items) < page:
            return
        start += page


def _databases(client: PIRestClient, o: AFOptions) -> List[Dict[str, Any]]:
    if o.database:
        return [client.get("assetdatabases", params={"path": o.database})]
    out = []
    for server in client.get("assetservers").get("Items") or []:
        for db in client.get(f"assetservers/{server['WebId']}/assetdatabases").get("Items") or []:
            out.append({**db, "_server": server.get("Name")})
    return out


def _asset_servers(client: PIRestClient, o: AFOptions) -> List[Dict[str, Any]]:
    """Every asset server, or the one of ``database`` (``\\\\server\\db``)."""
    servers = [s for s in client.get("assetservers").get("Items") or [] if isinstance(s, dict)]
    if not o.database:
        return servers
    name = o.database.lstrip("\\").split("\\")[0]
    chosen = [s for s in servers if str(s.get("Name", "")).upper() == name.upper()]
    if not chosen:
        raise PIOptionError(f"option 'database' {o.database!r} names asset server {name!r}, which PI Web API does "
                            "not list; known: " + ", ".join(str(s.get("Name")) for s in servers[:10]))
    return chosen


def _items(doc: Any) -> List[Dict[str, Any]]:
    items = doc.get("Items") if isinstance(doc, dict) else None
    return [i for i in items or [] if isinstance(i, dict)]


def _text(v: Any) -> Optional[str]:
    """A PI string field, None when empty (PI sends "" for no template, no base template, …)."""
    return v if isinstance(v, str) and v else None


def _point_of(attr: Dict[str, Any]) -> Tuple[Optional[str], Optional[str]]:
    """(WebID, path) of the PI point behind a PI Point data reference, from the Point link and the
    config string (``\\\\server\\tag;options``)."""
    if str(attr.get("DataReferencePlugIn", "")).lower() != "pi point":
        return None, None
    link = (attr.get("Links") or {}).get("Point") or ""
    webid = link.rsplit("/points/", 1)[1].split("?")[0] if "/points/" in link else None
    config = str(attr.get("ConfigString") or "").split(";")[0].split("?")[0]
    return webid, config if config.startswith("\\\\") else None


def _parent(path: str) -> Optional[str]:
    head, sep, _ = path.rpartition("\\")
    return head if sep and head.count("\\") > 3 else None


def _ts(text: Any, parse: Callable[[str], int] = parse_ts) -> Optional[int]:
    """A PI timestamp → µs (``parse_ts``) or ticks (``parse_ticks``); None for PI's open end."""
    if not isinstance(text, str) or text.startswith("9999-"):        # PI's open end: still running
        return None
    try:
        return parse(text)
    except ValueError:
        return None


@dataclass
class AFPartition(InputPartition):
    """One database (``key``: its WebID) or, for points, one data server."""
    key: str
    label: str


class AFReader(DataSourceReader):
    def __init__(self, opts: AFOptions) -> None:
        self.opts = opts

    def __repr__(self) -> str:
        return f"AFReader({self.opts!r})"

    def partitions(self) -> List[InputPartition]:
        client = _client(self.opts)
        try:
            if self.opts.table == "points":
                servers = client.get("dataservers").get("Items") or []
                want = self.opts.data_server
                chosen = [s for s in servers if want is None or want.upper() in (str(s.get("Name")).upper(),
                                                                                   str(s.get("WebId")).upper())]
                if not chosen:
                    raise PIOptionError(f"option 'dataServer' {want!r} matches no data server; known: "
                                        + ", ".join(str(s.get("Name")) for s in servers[:10]))
                return [AFPartition(s["WebId"], s.get("Name") or "") for s in chosen]
            if self.opts.table in _SERVER_TABLES:
                return [AFPartition(a["WebId"], a.get("Name") or "") for a in _asset_servers(client, self.opts)]
            return [AFPartition(db["WebId"], db.get("Path") or db.get("Name") or "") for db in _databases(client, self.opts)]
        finally:
            client.close()

    def read(self, partition: InputPartition) -> Iterator[Tuple[Any, ...]]:
        assert isinstance(partition, AFPartition)
        o = self.opts
        client = _client(o)
        try:
            yield from getattr(self, f"_{o.table}")(client, partition)
        finally:
            client.close()

    def _databases(self, client: PIRestClient, part: AFPartition) -> Iterator[Tuple[Any, ...]]:
        db = client.get(f"assetdatabases/{part.key}")
        server = db.get("Path", "").split("\\")[2] if str(db.get("Path", "")).startswith("\\\\") else None
        yield (db.get("WebId"), db.get("Id"), db.get("Name"), db.get("Path"), db.get("Description"), server)

    def _element_items(self, client: PIRestClient, part: AFPartition) -> Iterator[Dict[str, Any]]:
        return _paged(client, f"assetdatabases/{part.key}/elements", {"searchFullHierarchy": "true"},
                      self.opts.page_size)

    def _elements(self, client: PIRestClient, part: AFPartition) -> Iterator[Tuple[Any, ...]]:
        for e in self._element_items(client, part):
            path = e.get("Path") or ""
            yield (e.get("WebId"), e.get("Id"), e.get("Name"), path, _parent(path), e.get("Description"),
                   e.get("TemplateName") or None, list(e.get("CategoryNames") or []), e.get("HasChildren"), part.label)

    def _attributes(self, client: PIRestClient, part: AFPartition) -> Iterator[Tuple[Any, ...]]:
        elements = list(self._element_items(client, part))
        # each element's attributes in POST batch calls (one round trip per 200 elements)
        resources = [f"elements/{quote(e['WebId'])}/attributes?searchFullHierarchy=true&maxCount=150000"
                     for e in elements]
        for e, (status, content) in zip(elements, batch_get(client, resources)):
            if status != 200 or not isinstance(content, dict):
                raise PIWebAPIError(f"attributes of element {e.get('Path')}", status,
                                    [client.credentials.redact(str(content)[:200])] if content else [])
            for a in content.get("Items") or []:
                point_webid, point_path = _point_of(a)
                yield (a.get("WebId"), a.get("Id"), a.get("Name"), a.get("Path"), e.get("WebId"), e.get("Path"),
                       a.get("Description"), a.get("Type"), a.get("DefaultUnitsNameAbbreviation") or None,
                       a.get("DataReferencePlugIn") or None, a.get("ConfigString") or None, point_webid, point_path,
                       list(a.get("CategoryNames") or []))

    def _frame_items(self, client: PIRestClient, part: AFPartition) -> Iterator[Dict[str, Any]]:
        o = self.opts
        return _paged(client, f"assetdatabases/{part.key}/eventframes", {
            "startTime": format_ts(o.start), "endTime": format_ts(o.end), "searchMode": o.search_mode,
            "nameFilter": o.name_filter, "searchFullHierarchy": "true"}, o.page_size)

    def _eventframes(self, client: PIRestClient, part: AFPartition) -> Iterator[Tuple[Any, ...]]:
        from .pitime import to_datetime

        frames = list(self._frame_items(client, part))
        refs = [(f.get("RefElementWebIds") or [None])[0] for f in frames]
        paths: Dict[str, Optional[str]] = {}
        wanted = sorted({r for r in refs if r})
        for w, (status, content) in zip(wanted, batch_get(client, [f"elements/{quote(w)}?selectedFields=Path"
                                                                   for w in wanted])):
            paths[w] = content.get("Path") if status == 200 and isinstance(content, dict) else None
        for f, ref in zip(frames, refs):
            start, end = _ts(f.get("StartTime")), _ts(f.get("EndTime"))
            yield (f.get("WebId"), f.get("Id"), f.get("Name"), f.get("Path"), f.get("Description"),
                   f.get("TemplateName") or None, list(f.get("CategoryNames") or []),
                   to_datetime(start) if start is not None else None, to_datetime(end) if end is not None else None,
                   f.get("Severity"), ref, paths.get(ref) if ref else None, part.label)

    def _eventframe_values(self, client: PIRestClient, part: AFPartition) -> Iterator[Tuple[Any, ...]]:
        from .parse import Columns, ParseStats, parse_streams
        from .pitime import to_datetime

        now = now_micros()
        for f in self._frame_items(client, part):
            # the frame's end at PI's resolution (a seventh digit kept), so the values read are
            # the ones at that instant, not at its µs floor
            end = _ts(f.get("EndTime"), parse_ticks)
            at = end if end is not None else now * TICKS_PER_MICRO
            doc = client.get(f"streamsets/{f['WebId']}/value", params={"time": format_ticks(at)})
            cols, stats = Columns(), ParseStats()
            streams = doc.get("Items") if isinstance(doc, dict) else None
            metas = [(s.get("WebId"), s.get("Name"), s.get("Path")) if isinstance(s, dict) else (None, None, None)
                     for s in (streams if isinstance(streams, list) else [])]
            parse_streams(streams, cols, stats, "eventframe", now)
            by_webid = {m[0]: m for m in metas}
            for i in range(len(cols)):
                w = cols.tag_webid[i]
                _, name, path = by_webid.get(w, (w, None, None))
                ts = cols.timestamp[i]          # epoch ticks; the table keeps µs (floored)
                yield (f.get("WebId"), f.get("Name"), w, name, path,
                       to_datetime(ts // TICKS_PER_MICRO) if ts is not None else None,
                       cols.value[i], cols.value_string[i], cols.digital_state_code[i], cols.good[i], cols.uom[i],
                       cols.error[i])

    def _template_items(self, client: PIRestClient, part: AFPartition) -> List[Dict[str, Any]]:
        # 2018 SP1 pages no template listing (no startIndex): one call, refused when it may be cut
        limit = 150_000
        items = _items(client.get(f"assetdatabases/{part.key}/elementtemplates", params={"maxCount": limit}))
        if len(items) >= limit:
            raise PIWebAPIError(f"{part.label} has {limit} or more element templates: the listing may be cut", 413, [])
        return items

    def _elementtemplates(self, client: PIRestClient, part: AFPartition) -> Iterator[Tuple[Any, ...]]:
        for t in self._template_items(client, part):
            yield (t.get("WebId"), t.get("Id"), t.get("Name"), t.get("Path"), t.get("Description"),
                   _text(t.get("InstanceType")), _text(t.get("BaseTemplate")), _text(t.get("NamingPattern")),
                   list(t.get("CategoryNames") or []), t.get("AllowElementToExtend"), _text(t.get("Severity")),
                   t.get("CanBeAcknowledged"), part.label)

    def _attributetemplates(self, client: PIRestClient, part: AFPartition) -> Iterator[Tuple[Any, ...]]:
        templates = self._template_items(client, part)
        resources = [f"elementtemplates/{quote(t['WebId'])}/attributetemplates?showInherited=true"
                     f"&showDescendants=true&maxCount=150000" for t in templates]
        for t, (status, content) in zip(templates, batch_get(client, resources)):
            if status != 200 or not isinstance(content, dict):
                raise PIWebAPIError(f"attribute templates of {t.get('Path')}", status,
                                    [client.credentials.redact(str(content)[:200])] if content else [])
            for a in _items(content):
                yield (t.get("WebId"), t.get("Name"), a.get("WebId"), a.get("Id"), a.get("Name"), a.get("Path"),
                       a.get("Description"), _text(a.get("Type")), _text(a.get("TypeQualifier")),
                       _text(a.get("DefaultUnitsNameAbbreviation")) or _text(a.get("DefaultUnitsName")),
                       _text(a.get("DataReferencePlugIn")), _text(a.get("ConfigString")),
                       _default_value(a.get("DefaultValue")), a.get("IsConfigurationItem"), a.get("IsExcluded"),
                       a.get("IsHidden"), a.get("IsManualDataEntry"), a.get("HasChildren"), _text(a.get("TraitName")),
                       list(a.get("CategoryNames") or []), part.label)

    def _categories(self, client: PIRestClient, part: AFPartition) -> Iterator[Tuple[Any, ...]]:
        for kind in ("element", "attribute"):
            for c in _items(client.get(f"assetdatabases/{part.key}/{kind}categories")):
                yield (kind, c.get("WebId"), c.get("Id"), c.get("Name"), c.get("Path"), c.get("Description"),
                       part.label)

    def _analyses(self, client: PIRestClient, part: AFPartition) -> Iterator[Tuple[Any, ...]]:
        found = list(_paged(client, f"assetdatabases/{part.key}/analyses", {}, self.opts.page_size))
        targets = sorted({a["TargetWebId"] for a in found if _text(a.get("TargetWebId"))})
        paths: Dict[str, Optional[str]] = {}
        for w, (status, content) in zip(targets, batch_get(client, [f"elements/{quote(w)}?selectedFields=Path"
                                                                    for w in targets])):
            paths[w] = content.get("Path") if status == 200 and isinstance(content, dict) else None
        for a in found:
            target = _text(a.get("TargetWebId"))
            yield (a.get("WebId"), a.get("Id"), a.get("Name"), a.get("Path"), a.get("Description"),
                   _text(a.get("TemplateName")), target, paths.get(target) if target else None, _text(a.get("Status")),
                   _text(a.get("AnalysisRulePlugInName")), _text(a.get("TimeRulePlugInName")),
                   _text(a.get("Priority")), list(a.get("CategoryNames") or []), a.get("AutoCreated"),
                   a.get("PublishResults"), part.label)

    def _class_items(self, client: PIRestClient, part: AFPartition) -> List[Dict[str, Any]]:
        return _items(client.get(f"assetservers/{part.key}/unitclasses"))

    def _unitclasses(self, client: PIRestClient, part: AFPartition) -> Iterator[Tuple[Any, ...]]:
        for c in self._class_items(client, part):
            yield (c.get("WebId"), c.get("Id"), c.get("Name"), c.get("Path"), c.get("Description"),
                   c.get("CanonicalUnitName"), c.get("CanonicalUnitAbbreviation"), part.label)

    def _units(self, client: PIRestClient, part: AFPartition) -> Iterator[Tuple[Any, ...]]:
        classes = self._class_items(client, part)
        resources = [f"unitclasses/{quote(c['WebId'])}/units" for c in classes]
        for c, (status, content) in zip(classes, batch_get(client, resources)):
            if status != 200 or not isinstance(content, dict):
                raise PIWebAPIError(f"units of class {c.get('Name')}", status,
                                    [client.credentials.redact(str(content)[:200])] if content else [])
            # the 2018 SP1 spec names a single Unit as the answer; PI lists them (Items)
            for u in _items(content) if "Items" in content else [content]:
                yield (u.get("WebId"), u.get("Id"), u.get("Name"), u.get("Abbreviation"), u.get("Path"),
                       u.get("Description"), _float(u.get("Factor")), _float(u.get("Offset")),
                       _float(u.get("ReferenceFactor")), _float(u.get("ReferenceOffset")),
                       _text(u.get("ReferenceUnitAbbreviation")), c.get("WebId"), c.get("Name"), part.label)

    def _points(self, client: PIRestClient, part: AFPartition) -> Iterator[Tuple[Any, ...]]:
        for p in _paged(client, f"dataservers/{part.key}/points", {"nameFilter": self.opts.name_filter},
                        self.opts.page_size):
            yield (p.get("WebId"), p.get("Id"), p.get("Name"), p.get("Path"), p.get("Descriptor"), p.get("PointClass"),
                   p.get("PointType"), p.get("DigitalSetName") or None, p.get("EngineeringUnits") or None,
                   _float(p.get("Span")), _float(p.get("Zero")), p.get("Step"), p.get("Future"), part.label)


def _default_value(v: Any) -> Optional[str]:
    """An attribute template's DefaultValue (any JSON: a number, a string, a digital state) as text."""
    if v is None:
        return None
    if isinstance(v, dict):
        return str(v.get("Name", v))
    return str(v).lower() if isinstance(v, bool) else str(v)


def _float(v: Any) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


class PIAFDataSource(DataSource):
    __doc__ = (__doc__ or "") + "\n    Options (case-insensitive)::\n\n" + "\n".join(
        f"    {n:<12} default {d if d is not None else '(none)'}: {t}" for n, (d, t) in AF_OPTIONS.items())

    @classmethod
    def name(cls) -> str:
        return "pi_af"

    def __init__(self, options: Dict[str, str]) -> None:
        super().__init__(options)
        self._parsed = parse_af_options(options)

    def schema(self) -> StructType:
        return TABLES[self._parsed.table]

    def reader(self, schema: StructType) -> DataSourceReader:
        return AFReader(self._parsed)
