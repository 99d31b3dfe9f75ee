"""REST endpoints of the simulated PI Web API: archive reads, discovery, and ``batch``.

Handlers are plain functions of a ``Req`` (method, path under the base path, query, body) that
return a ``Resp``, so ``POST batch`` can run sub-requests through the same table the HTTP server
uses. Query parameter names are case-insensitive, as in PI Web API.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson

from ..pitime import format_ts
from .model import WEBID_TYPES, SimAttribute, SimElement, SimTag
from .ticks import parse_pi_time_ticks

if TYPE_CHECKING:
    from .server import PISimulator

ELEMENT_TEMPLATE = "UnitTemplate"                      # AF context of the simulated elements
ELEMENT_CATEGORIES = ("Simulated", "Process Unit")

PATH_NOT_FOUND = ("The specified path was not found. If more details are needed, please contact your PI Web API "
                  "administrator for help in enabling debug mode.")


class PIError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Req:
    method: str
    path: str                                 # below the base path, no leading slash
    query: Dict[str, List[str]]               # lower-cased names
    base_url: str                             # scheme://host/piwebapi
    body: bytes = b""
    match: Dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, method: str, path: str, pairs: List[Tuple[str, str]], base_url: str, body: bytes = b"") -> "Req":
        query: Dict[str, List[str]] = {}
        for k, v in pairs:
            query.setdefault(k.lower(), []).append(v)
        return cls(method.upper(), path.strip("/"), query, base_url, body)

    def q(self, name: str, default: Optional[str] = None) -> Optional[str]:
        vals = self.query.get(name.lower())
        return vals[0] if vals else default

    def qall(self, name: str) -> List[str]:
        return self.query.get(name.lower(), [])

    def qint(self, name: str, default: int) -> int:
        raw = self.q(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise PIError(400, f"The parameter '{name}' is not a valid integer: '{raw}'.") from None

    def qbool(self, name: str, default: bool = False) -> bool:
        raw = self.q(name)
        return default if raw is None else raw.strip().lower() == "true"


@dataclass
class Resp:
    status: int
    body: bytes
    headers: Dict[str, str] = field(default_factory=dict)


def attribute_type(tag: SimTag) -> str:
    """The AF value type of an attribute (or attribute template) over ``tag``."""
    return {"int": "Int32", "digital": "EnumerationValue", "string": "String", "bool": "Boolean"}.get(
        tag.gen.kind, "Double")


def json_resp(obj: Any, status: int = 200) -> Resp:
    return Resp(status, orjson.dumps(obj))


def error_resp(status: int, *errors: str) -> Resp:
    return Resp(status, orjson.dumps({"Errors": list(errors)}))


class RestAPI:
    def __init__(self, sim: "PISimulator") -> None:
        self.sim = sim
        self.model = sim.model
        self.archive = sim.archive_store
        self.encoder = sim.encoder
        w = r"(?P<webId>[^/]+)"
        table: List[Tuple[str, str, Callable[[Req], Resp]]] = [
            ("GET", r"", self.home),
            ("GET", r"system", self.system),
            ("GET", r"dataservers", self.dataservers),
            ("GET", rf"dataservers/{w}", self.dataserver),
            ("GET", rf"dataservers/{w}/points", self.dataserver_points),
            ("GET", r"points", self.point_by_path),
            ("GET", rf"points/{w}", self.point),
            ("GET", r"assetservers", self.assetservers),
            ("GET", rf"assetservers/{w}", self.assetserver),
            ("GET", rf"assetservers/{w}/assetdatabases", self.databases),
            ("GET", r"assetdatabases", self.database_by_path),
            ("GET", rf"assetdatabases/{w}", self.database),
            ("GET", rf"assetdatabases/{w}/elements", self.database_elements),
            ("GET", r"elements", self.element_by_path),
            ("GET", rf"elements/{w}", self.element),
            ("GET", rf"elements/{w}/attributes", self.element_attributes),
            ("GET", r"attributes", self.attribute_by_path),
            ("GET", rf"attributes/{w}", self.attribute),
            ("GET", rf"streams/{w}/recorded", self.stream_recorded),
            ("GET", rf"streams/{w}/value", self.stream_value),
            ("GET", rf"streams/{w}/end", self.stream_end),
            ("GET", rf"streams/{w}/recordedattime", self.stream_recorded_at_time),
            ("GET", r"streamsets/recorded", self.streamset_recorded),
            ("GET", r"streamsets/value", self.streamset_value),
            ("GET", r"streamsets/end", self.streamset_end),
            ("GET", rf"streamsets/{w}/recorded", self.streamset_recorded),
            ("GET", rf"streamsets/{w}/value", self.streamset_value),
            ("GET", rf"streamsets/{w}/end", self.streamset_end),
            ("GET", r"channels/instances", self.channel_instances),
            ("POST", r"batch", self.batch),
            ("POST", r"simulator/faults/(?P<fault>[a-z_]+)", self.control),
            ("GET", r"simulator/stats", self.sim_stats),
        ]
        self.routes: List[Tuple[str, Any, Callable[[Req], Resp]]] = []
        self.add_routes(table)
        from .af import routes as history_routes         # interpolated, plot, summary, event frames

        self.add_routes(history_routes(self))

    def add_routes(self, table: List[Tuple[str, str, Callable[[Req], Resp]]]) -> None:
        """Serve more endpoints: ``(method, path regex below the base path, handler)``; ``{webId}``
        style groups are ``(?P<name>[^/]+)``. Handlers get a ``Req`` and return a ``Resp`` (raise
        ``PIError`` for PI's error shape); they run for HTTP requests and inside ``batch`` alike,
        and endpoint faults (``fail_endpoint``, ``missing_endpoints``) apply to them too."""
        self.routes.extend((m, re.compile(p + r"/?", re.IGNORECASE), h) for m, p, h in table)

    # ---- dispatch ------------------------------------------------------------------------------
    def dispatch(self, req: Req) -> Resp:
        if not req.path.lower().startswith("simulator/"):
            failed = self.sim.endpoint_failure(req.path)
            if failed is not None:
                return failed
        allowed = False
        for method, rx, handler in self.routes:
            m = rx.fullmatch(req.path)
            if m is None:
                continue
            if method != req.method:
                allowed = True
                continue
            req.match = {k: unquote(v) for k, v in m.groupdict().items()}
            try:
                if req.q("webIdType") is not None:
                    self.webid_type(req)          # a bad value is refused even where no WebID is returned
                resp = handler(req)
                fields = req.q("selectedFields")
                if fields and resp.status == 200 and method == "GET":
                    resp.body = orjson.dumps(select_fields(orjson.loads(resp.body), fields))
                return resp
            except PIError as exc:
                return error_resp(exc.status, exc.message)
            except ValueError as exc:
                return error_resp(400, str(exc))
        if allowed:
            return error_resp(405, f"The requested resource does not support http method '{req.method}'.")
        return error_resp(404, f"The requested resource was not found: '{req.path}'.")

    # ---- lookups -------------------------------------------------------------------------------
    def lookup(self, webid: str, want: Tuple[type, ...] = (SimTag, SimAttribute)) -> Any:
        if len(webid) < 4 or webid[0] not in "FIPLD" or webid[1] != "1":
            raise PIError(400, f"Unknown or invalid WebID format: '{webid}'.")
        obj = self.model.resolve(webid)
        if obj is None:
            marker = webid[2:4]
            what = {"DP": "PI Point", "Ab": "attribute", "Em": "element", "DS": "PI Data Archive server",
                    "RS": "PI AF server", "RD": "AF database"}.get(marker, "object")
            raise PIError(404, f"The specified {what} was not found for WebId '{webid}'.")
        if not isinstance(obj, want):
            raise PIError(409, "Unsupported operation on the given AF object.")
        if webid in self.sim.forbidden:
            raise PIError(403, "The user does not have permission to read this object.")
        return obj

    def by_path(self, req: Req, want: type) -> Any:
        path = req.q("path") or ""
        obj = self.model.by_path.get(path.upper())
        if obj is None or not isinstance(obj, want):
            raise PIError(404, PATH_NOT_FOUND)
        return obj

    def webid_type(self, req: Req) -> str:
        """The request's ``webIdType`` (case-insensitive), else the server's default (PI's
        ``WebIDType`` configuration item, ``SimConfig.default_webid_type``)."""
        t = req.q("webIdType") or self.sim.config.default_webid_type
        for known in WEBID_TYPES:
            if known.lower() == t.lower():
                return known
        raise PIError(400, f"The parameter 'webIdType' has an invalid value '{t}'; "
                           f"allowed: {', '.join(WEBID_TYPES)}.")

    def streams_of(self, req: Req) -> List[Any]:
        """Streams named by the request: ``{webId}`` of an element (its attributes), or ``webId=…``."""
        if "webId" in req.match:
            el = self.lookup(req.match["webId"], (SimElement,))
            attrs = el.attributes
            name_filter = req.q("nameFilter")
            if name_filter:
                attrs = [a for a in attrs if fnmatch.fnmatchcase(a.name.upper(), name_filter.upper())]
            return attrs
        webids = req.qall("webId")
        if not webids:
            raise PIError(400, "The parameter 'webId' is required.")
        return [self.lookup(w) for w in webids]

    # ---- objects -------------------------------------------------------------------------------
    def home(self, req: Req) -> Resp:
        b = req.base_url
        return json_resp({"Links": {"Self": b + "/", "AssetServers": b + "/assetservers",
                                    "DataServers": b + "/dataservers", "System": b + "/system"}})

    def system(self, req: Req) -> Resp:
        return json_resp({"ProductTitle": "PI Web API (simulator)", "ProductVersion": "1.11.1.5383",
                          "Links": {"Self": req.base_url + "/system"}})

    def dataserver_obj(self, req: Req) -> Dict[str, Any]:
        m, b = self.model, req.base_url
        w = m.dataserver_webid
        return {"WebId": w, "Id": str(m.server_guid), "Name": m.server_name, "Path": m.dataserver_path,
                "IsConnected": True, "ServerVersion": "3.4.440.477", "ServerTime": format_ts(self.archive.now()),
                "Links": {"Self": f"{b}/dataservers/{w}", "Points": f"{b}/dataservers/{w}/points"}}

    def dataservers(self, req: Req) -> Resp:
        if req.q("path") is not None:
            if req.q("path", "").upper() != self.model.dataserver_path.upper():
                raise PIError(404, PATH_NOT_FOUND)
            return json_resp(self.dataserver_obj(req))
        return json_resp({"Links": {}, "Items": [self.dataserver_obj(req)]})

    def _check_dataserver(self, webid: str) -> None:
        if webid != self.model.dataserver_webid:
            if len(webid) < 4 or webid[0] not in "FIPLD" or webid[1] != "1":
                raise PIError(400, f"Unknown or invalid WebID format: '{webid}'.")
            raise PIError(404, f"The specified PI Data Archive server was not found for WebId '{webid}'.")

    def dataserver(self, req: Req) -> Resp:
        self._check_dataserver(req.match["webId"])
        return json_resp(self.dataserver_obj(req))

    def point_obj(self, req: Req, tag: SimTag) -> Dict[str, Any]:
        b, wt = req.base_url, self.webid_type(req)
        w = tag.webid_for(wt)
        kind = tag.gen.kind
        ptype = {"int": "Int32", "digital": "Digital", "string": "String", "bool": "Digital"}.get(kind, "Float32")
        return {"WebId": w, "Id": tag.point_id, "Name": tag.name, "Path": tag.path,
                "Descriptor": f"simulated {kind}", "PointClass": "classic", "PointType": ptype,
                "DigitalSetName": "Modes" if kind == "digital" else ("BOOL" if kind == "bool" else ""),
                "EngineeringUnits": tag.uom, "Span": 100.0, "Zero": 0.0, "Step": kind in ("step", "int", "digital"),
                "Future": False, "DisplayDigits": -5,
                "Links": {"Self": f"{b}/points/{w}", "DataServer": f"{b}/dataservers/{self.model.dataserver_webid}",
                          "Value": f"{b}/streams/{w}/value", "EndValue": f"{b}/streams/{w}/end",
                          "RecordedData": f"{b}/streams/{w}/recorded"}}

    def dataserver_points(self, req: Req) -> Resp:
        self._check_dataserver(req.match["webId"])
        name_filter = (req.q("nameFilter") or "*").upper()
        start = req.qint("startIndex", 0)
        count = req.qint("maxCount", 1000)
        if count > self.sim.config.max_returned_items:
            raise PIError(400, f"Parameter 'maxCount' is greater than the maximum allowed "
                               f"({self.sim.config.max_returned_items}).")
        if start < 0 or count < 0:
            raise PIError(400, "Parameters 'startIndex' and 'maxCount' must not be negative.")
        matched = [t for t in self.model.tags if fnmatch.fnmatchcase(t.name.upper(), name_filter)]
        return json_resp({"Links": {}, "Items": [self.point_obj(req, t) for t in matched[start:start + count]]})

    def point_by_path(self, req: Req) -> Resp:
        tag = self.by_path(req, SimTag)
        return json_resp(self.point_obj(req, tag))

    def point(self, req: Req) -> Resp:
        return json_resp(self.point_obj(req, self.lookup(req.match["webId"], (SimTag,))))

    def assetserver_obj(self, req: Req) -> Dict[str, Any]:
        m, b = self.model, req.base_url
        w = m.assetserver_webid
        return {"WebId": w, "Id": str(m.af_guid), "Name": m.af_server, "Description": "simulated AF server",
                "Path": f"\\\\{m.af_server}", "IsConnected": True, "ServerVersion": "2.10.0.0",
                "Links": {"Self": f"{b}/assetservers/{w}", "Databases": f"{b}/assetservers/{w}/assetdatabases"}}

    def assetservers(self, req: Req) -> Resp:
        return json_resp({"Links": {}, "Items": [self.assetserver_obj(req)]})

    def _check_assetserver(self, webid: str) -> None:
        if webid != self.model.assetserver_webid:
            raise PIError(404, f"The specified PI AF server was not found for WebId '{webid}'.")

    def assetserver(self, req: Req) -> Resp:
        self._check_assetserver(req.match["webId"])
        return json_resp(self.assetserver_obj(req))

    def database_obj(self, req: Req) -> Dict[str, Any]:
        m, b = self.model, req.base_url
        w = m.database_webid
        return {"WebId": w, "Id": str(m.db_guid), "Name": m.af_database, "Description": "simulated AF database",
                "Path": m.database_path, "ExtendedProperties": {},
                "Links": {"Self": f"{b}/assetdatabases/{w}", "Elements": f"{b}/assetdatabases/{w}/elements"}}

    def databases(self, req: Req) -> Resp:
        self._check_assetserver(req.match["webId"])
        return json_resp({"Links": {}, "Items": [self.database_obj(req)]})

    def database_by_path(self, req: Req) -> Resp:
        if (req.q("path") or "").upper() != self.model.database_path.upper():
            raise PIError(404, PATH_NOT_FOUND)
        return json_resp(self.database_obj(req))

    def _check_database(self, webid: str) -> None:
        if webid != self.model.database_webid:
            raise PIError(404, f"The specified AF database was not found for WebId '{webid}'.")

    def database(self, req: Req) -> Resp:
        self._check_database(req.match["webId"])
        return json_resp(self.database_obj(req))

    def element_obj(self, req: Req, el: SimElement) -> Dict[str, Any]:
        b, wt = req.base_url, self.webid_type(req)
        w = el.webid_for(wt)
        return {"WebId": w, "Id": str(el.guid), "Name": el.name, "Description": "simulated unit", "Path": el.path,
                "TemplateName": ELEMENT_TEMPLATE, "HasChildren": False, "CategoryNames": list(ELEMENT_CATEGORIES),
                "ExtendedProperties": {},
                "Links": {"Self": f"{b}/elements/{w}", "Attributes": f"{b}/elements/{w}/attributes",
                          "Database": f"{b}/assetdatabases/{self.model.database_webid}"}}

    def database_elements(self, req: Req) -> Resp:
        self._check_database(req.match["webId"])
        return json_resp({"Links": {}, "Items": [self.element_obj(req, e) for e in self.model.elements]})

    def element_by_path(self, req: Req) -> Resp:
        return json_resp(self.element_obj(req, self.by_path(req, SimElement)))

    def element(self, req: Req) -> Resp:
        return json_resp(self.element_obj(req, self.lookup(req.match["webId"], (SimElement,))))

    def attribute_obj(self, req: Req, a: SimAttribute) -> Dict[str, Any]:
        b, wt = req.base_url, self.webid_type(req)
        w = a.webid_for(wt)
        tag = a.tag
        atype = attribute_type(tag)
        return {"WebId": w, "Id": str(a.guid), "Name": a.name, "Description": f"{a.name} of {a.element.name}",
                "Path": a.path, "Type": atype, "TypeQualifier": "", "DefaultUnitsName": tag.uom,
                "DefaultUnitsNameAbbreviation": tag.uom, "DisplayDigits": -5, "DataReferencePlugIn": "PI Point",
                "ConfigString": tag.path, "IsConfigurationItem": False, "IsExcluded": False, "IsHidden": False,
                "IsManualDataEntry": False, "HasChildren": False, "CategoryNames": [], "Step": False,
                "TraitName": "", "Span": 100.0, "Zero": 0.0,
                "Links": {"Self": f"{b}/attributes/{w}", "Element": f"{b}/elements/{a.element.webid}",
                          "Point": f"{b}/points/{tag.webid}", "Value": f"{b}/streams/{w}/value",
                          "EndValue": f"{b}/streams/{w}/end", "RecordedData": f"{b}/streams/{w}/recorded"}}

    def element_attributes(self, req: Req) -> Resp:
        attrs = self.streams_of(req)
        start, count = req.qint("startIndex", 0), req.qint("maxCount", 1000)
        return json_resp({"Links": {}, "Items": [self.attribute_obj(req, a) for a in attrs[start:start + count]]})

    def attribute_by_path(self, req: Req) -> Resp:
        return json_resp(self.attribute_obj(req, self.by_path(req, SimAttribute)))

    def attribute(self, req: Req) -> Resp:
        return json_resp(self.attribute_obj(req, self.lookup(req.match["webId"], (SimAttribute,))))

    # ---- values --------------------------------------------------------------------------------
    def _recorded_items(self, stream: Any, start: int, end: int, max_count: int, boundary: str) -> bytes:
        tag = stream.tag
        arch, enc = self.archive, self.encoder
        desc = end < start
        lo, hi = (end, start) if desc else (start, end)
        pts = arch.points(tag, lo, hi)
        seq = pts[::-1] if desc else pts
        items = [enc.point_bytes(tag, p, shared=False) for p in seq[:max_count + 1]]
        if boundary == "outside":
            # the values just outside the range, unless one lies exactly on the boundary
            on_lo = bool(pts) and pts[0][0] == lo
            on_hi = bool(pts) and pts[-1][0] == hi
            before = None if on_lo else arch.before(tag, lo)
            after = None if on_hi else arch.after(tag, hi)
            first, last = (after, before) if desc else (before, after)
            if first is not None:
                items.insert(0, enc.point_bytes(tag, first))
            if last is not None and len(items) <= max_count:
                items.append(enc.point_bytes(tag, last))
        elif boundary == "interpolated":
            edges = [(lo, 0), (hi, len(items))] if not desc else [(hi, 0), (lo, len(items))]
            have = {p[0] for p in pts}
            for ts, pos in reversed(edges):
                if ts not in have and ts <= arch.now_ticks():
                    v = self.interpolate(tag, ts)
                    if v is not None:
                        items.insert(pos, enc.timed_value(tag, ts, v))
        return b",".join(items[:max_count])

    def interpolate(self, tag: SimTag, ts: int) -> Any:
        """Value at ``ts``: linear between neighbours for floats, else the previous value."""
        arch = self.archive
        before, after = arch.before(tag, ts + 1), arch.after(tag, ts)
        if before is None:
            return None
        bv = arch.point_value(tag, before)
        if before[0] == ts or after is None:
            return bv
        av = arch.point_value(tag, after)
        if type(bv) is float and type(av) is float and bv == bv and av == av:
            return bv + (av - bv) * (ts - before[0]) / (after[0] - before[0])
        return bv

    def _recorded_args(self, req: Req) -> Tuple[int, int, int, str]:
        # at PI's resolution: a 7-digit endTime is honoured to the 100 ns, both ends inclusive
        now = self.archive.now_ticks()
        start = parse_pi_time_ticks(req.q("startTime", "*-1d"), now)
        end = parse_pi_time_ticks(req.q("endTime", "*"), now)
        max_count = req.qint("maxCount", 1000)
        cap = self.sim.config.max_returned_items
        if max_count > cap:
            raise PIError(400, f"Parameter 'maxCount' is greater than the maximum allowed ({cap}).")
        if max_count < 1:
            raise PIError(400, "Parameter 'maxCount' must be greater than 0.")
        boundary = (req.q("boundaryType") or "Inside").lower()
        if boundary not in ("inside", "outside", "interpolated"):
            raise PIError(400, f"The boundary type '{req.q('boundaryType')}' is not valid; "
                               "use Inside, Outside or Interpolated.")
        return start, end, max_count, boundary

    def stream_recorded(self, req: Req) -> Resp:
        stream = self.lookup(req.match["webId"])
        start, end, max_count, boundary = self._recorded_args(req)
        body = self._recorded_items(stream, start, end, max_count, boundary)
        return Resp(200, b'{"Items":[' + body + b'],"UnitsAbbreviation":' +
                    orjson.dumps(stream.uom) + b"}")

    def streamset_recorded(self, req: Req) -> Resp:
        streams = self.streams_of(req)
        start, end, max_count, boundary = self._recorded_args(req)
        if self.sim.config.cap_whole_call and len(streams) * max_count > self.sim.config.max_returned_items:
            # optionally the cap also bounds the values of the whole call (UNCONFIRMED for real
            # servers, whose documented check is on the maxCount parameter)
            total = sum(len(self.archive.points(s.tag, min(start, end), max(start, end))) for s in streams)
            if total > self.sim.config.max_returned_items:
                raise PIError(400, f"The number of values requested ({total}) is greater than the maximum "
                                   f"allowed ({self.sim.config.max_returned_items}).")
        wt = self.webid_type(req)
        parts = [self.encoder.stream_prefix(s, wt) + b',"Items":[' +
                 self._recorded_items(s, start, end, max_count, boundary) + b"]}" for s in streams]
        return self._maybe_web_exception(Resp(200, b'{"Links":{},"Items":[' + b",".join(parts) + b"]}"))

    def _maybe_web_exception(self, resp: Resp) -> Resp:
        """Fault: a 200 whose body ends with a top-level ``WebException`` (an error while streaming)."""
        if self.sim.take_web_exception():
            resp.body = resp.body[:-1] + b',"WebException":{"Errors":["Error occurred during writing of the output ' \
                                         b'stream."],"StatusCode":500}}'
        return resp

    def _value_at(self, req: Req, stream: Any) -> bytes:
        tag, arch = stream.tag, self.archive
        t = req.q("time")
        if t is None or t.strip() in ("", "*"):
            return self.encoder.point_bytes(tag, arch.current(tag))
        ts = parse_pi_time_ticks(t, arch.now_ticks())
        p = arch.before(tag, ts + 1)
        if p is not None and p[0] == ts:
            return self.encoder.point_bytes(tag, p)
        v = self.interpolate(tag, ts)
        if v is None:
            return self.encoder.timed_value(tag, ts, {"Name": "No Data", "Value": 248, "IsSystem": True},
                                            quality=(False, False, False))
        return self.encoder.timed_value(tag, ts, v)

    def stream_value(self, req: Req) -> Resp:
        return Resp(200, self._value_at(req, self.lookup(req.match["webId"])))

    def stream_recorded_at_time(self, req: Req) -> Resp:
        """The recorded value at ``time``; ``retrievalMode`` (Auto = AtOrBefore here, AtOrBefore,
        Before, AtOrAfter, After, Exact) picks one when none is exactly there."""
        stream = self.lookup(req.match["webId"])
        tag, arch = stream.tag, self.archive
        raw = req.q("time")
        if not raw:
            raise PIError(400, "The parameter 'time' is required.")
        ts = parse_pi_time_ticks(raw, arch.now_ticks())
        mode = (req.q("retrievalMode") or "Auto").lower()
        pick = {"auto": lambda: arch.before(tag, ts + 1), "atorbefore": lambda: arch.before(tag, ts + 1),
                "before": lambda: arch.before(tag, ts), "atorafter": lambda: arch.after(tag, ts - 1),
                "after": lambda: arch.after(tag, ts), "exact": lambda: arch.before(tag, ts + 1)}.get(mode)
        if pick is None:
            raise PIError(400, f"The retrieval mode '{req.q('retrievalMode')}' is not valid.")
        p = pick()
        if p is None or (mode == "exact" and p[0] != ts):
            return Resp(200, self.encoder.timed_value(tag, ts, {"Name": "No Data", "Value": 248, "IsSystem": True},
                                                      quality=(False, False, False)))
        return Resp(200, self.encoder.point_bytes(tag, p, shared=False))

    def stream_end(self, req: Req) -> Resp:
        stream = self.lookup(req.match["webId"])
        return Resp(200, self.encoder.point_bytes(stream.tag, self.archive.current(stream.tag)))

    def _streamset_single(self, req: Req, end: bool) -> Resp:
        streams = self.streams_of(req)
        wt = self.webid_type(req)
        # the 2018 SP1 spec answers the ad-hoc streamsets/end with Items[StreamValues] (an Items
        # array of one value); every other streamset value/end with Items[StreamValue]
        as_items = end and "webId" not in req.match
        parts = []
        for s in streams:
            v = (self.encoder.point_bytes(s.tag, self.archive.current(s.tag)) if end
                 else self._value_at(req, s))
            if as_items:
                parts.append(self.encoder.stream_prefix(s, wt) + b',"Items":[' + v + b"]}")
            else:
                parts.append(self.encoder.stream_prefix(s, wt, units=False) + b',"Value":' + v + b"}")
        return Resp(200, b'{"Links":{},"Items":[' + b",".join(parts) + b"]}")

    def streamset_value(self, req: Req) -> Resp:
        return self._streamset_single(req, end=False)

    def streamset_end(self, req: Req) -> Resp:
        return self._streamset_single(req, end=True)

    def channel_instances(self, req: Req) -> Resp:
        items = []
        for ch in self.sim.hub.channels.values():
            items.append({"Id": f"{ch.id:032x}", "StartTime": format_ts(int(ch.opened_at * 1e6)),
                          "LastMessageSentTime": format_ts(self.archive.now()), "SentMessageCount": ch.messages})
        return json_resp({"Links": {}, "Items": items})

    # ---- batch ---------------------------------------------------------------------------------
    def batch(self, req: Req) -> Resp:
        try:
            spec = orjson.loads(req.body or b"{}")
        except orjson.JSONDecodeError as exc:
            raise PIError(400, f"The batch request body is not valid JSON: {exc}.") from None
        if not isinstance(spec, dict) or not all(isinstance(v, dict) for v in spec.values()):
            raise PIError(400, "A batch request is an object of named requests.")
        done: Dict[str, Dict[str, Any]] = {}
        pending = dict(spec)
        while pending:
            progressed = False
            for key, item in list(pending.items()):
                parents = item.get("ParentIds") or []
                if any(p not in done for p in parents):
                    if any(p not in spec for p in parents):
                        done[key] = {"Status": 400, "Headers": {},
                                     "Content": {"Errors": [f"Unknown parent request in ParentIds of '{key}'."]}}
                        del pending[key]
                        progressed = True
                    continue
                del pending[key]
                progressed = True
                if any(done[p]["Status"] >= 400 for p in parents):
                    done[key] = {"Status": 409, "Headers": {},
                                 "Content": {"Errors": ["A parent request failed; this request was not run."]}}
                    continue
                done[key] = self._batch_item(req, item, done)
            if not progressed:                          # a cycle in ParentIds
                for key in pending:
                    done[key] = {"Status": 400, "Headers": {},
                                 "Content": {"Errors": ["Circular reference in ParentIds."]}}
                break
        return json_resp({k: done[k] for k in spec}, status=207)

    def _batch_item(self, req: Req, item: Dict[str, Any], done: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
        method = (item.get("Method") or "GET").upper()
        params = [_jsonpath(done, p) for p in item.get("Parameters") or []]
        template = item.get("RequestTemplate")
        if template:
            resource = template.get("Resource", "")
            lists = [p if isinstance(p, list) else [p] for p in params]
            n = max((len(x) for x in lists), default=0)
            subs = [self._sub_request(req, method, resource.format(*[x[i] if i < len(x) else "" for x in lists]),
                                      item) for i in range(n)]
            return {"Status": 207, "Headers": {}, "Content": {"Items": subs}}
        resource = item.get("Resource", "")
        if params:
            resource = resource.format(*[p[0] if isinstance(p, list) and p else p for p in params])
        return self._sub_request(req, method, resource, item)

    def _sub_request(self, req: Req, method: str, resource: str, item: Dict[str, Any]) -> Dict[str, Any]:
        if method != "GET":
            return {"Status": 405, "Headers": {},
                    "Content": {"Errors": ["The simulator's batch runs GET requests only."]}}
        parts = urlsplit(resource)
        path = parts.path
        base_path = urlsplit(req.base_url).path.rstrip("/")
        if path.lower().startswith(base_path.lower()):
            path = path[len(base_path):]
        sub = Req.build("GET", path, parse_qsl(parts.query, keep_blank_values=True), req.base_url)
        resp = self.dispatch(sub)
        content = orjson.loads(resp.body) if resp.body else None
        return {"Status": resp.status, "Headers": {"Content-Type": "application/json; charset=utf-8"},
                "Content": content}

    # ---- control (simulator only) --------------------------------------------------------------
    def sim_stats(self, req: Req) -> Resp:
        return json_resp({**self.sim.stats, "channels_open": len(self.sim.hub.channels)})

    def control(self, req: Req) -> Resp:
        try:
            args = orjson.loads(req.body) if req.body else {}
        except orjson.JSONDecodeError:
            raise PIError(400, "The body must be a JSON object of arguments.") from None
        if not isinstance(args, dict):
            raise PIError(400, "The body must be a JSON object of arguments.")
        try:
            result = self.sim.fault(req.match["fault"], **args)
        except (TypeError, KeyError) as exc:
            raise PIError(400, f"Bad arguments for fault '{req.match['fault']}': {exc}") from None
        return json_resp({"Fault": req.match["fault"], "Result": result})


def _jsonpath(done: Dict[str, Any], expr: str) -> Any:
    """The subset of JSONPath PI batch requests use: ``$.Id.Content.Field.Items[*].WebId``, ``[n]``."""
    if not isinstance(expr, str) or not expr.startswith("$."):
        return expr
    cur: List[Any] = [done]
    multi = False
    for token in re.findall(r"[^.\[\]]+|\[\*\]|\[\d+\]", expr[2:]):
        nxt: List[Any] = []
        for node in cur:
            if token == "[*]":
                multi = True
                nxt.extend(node if isinstance(node, list) else [])
            elif token.startswith("["):
                i = int(token[1:-1])
                if isinstance(node, list) and i < len(node):
                    nxt.append(node[i])
            elif isinstance(node, dict) and token in node:
                nxt.append(node[token])
        cur = nxt
    if multi:
        return cur
    return cur[0] if cur else None


def select_fields(doc: Any, fields: str) -> Any:
    """PI's ``selectedFields``: keep only the ``;``-separated dotted paths (arrays are transparent),
    e.g. ``Items.Timestamp;Items.Value``."""
    def walk(node: Any, paths: List[List[str]]) -> Any:
        if isinstance(node, list):
            return [walk(x, paths) for x in node]
        if not isinstance(node, dict):
            return node
        out = {}
        for key, value in node.items():
            rest = [p[1:] for p in paths if p and p[0].lower() == key.lower()]
            if rest:
                out[key] = value if any(not r for r in rest) else walk(value, rest)
        return out
    return walk(doc, [f.strip().split(".") for f in fields.split(";") if f.strip()])
