"""What the simulated PI System holds: PI points on one data server, and a small AF database whose
element attributes are PI Point data references to those points. WebIDs come from
``pi_stream_source.webid``, the module the client uses too."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .. import webid as W
from .generators import NUMERIC_KINDS, Generator, kinds_for, tag_seed

WEBID_TYPES = W.WEBID_TYPES


class WebIdForms:
    """The WebID of an object in the form a request asks for (``webIdType``)."""
    webid: str
    path_webid: str
    id_webid: str

    def webid_for(self, webid_type: str) -> str:
        if webid_type == "PathOnly":
            return self.path_webid
        if webid_type == "IDOnly":
            return self.id_webid
        if webid_type in ("LocalIDOnly", "DefaultIDOnly"):
            return self.relative_webid(webid_type)
        return self.webid

    def relative_webid(self, webid_type: str) -> str:
        raise NotImplementedError

    def forms(self) -> List[str]:
        """The object's WebID in every type."""
        return [self.webid_for(t) for t in WEBID_TYPES]


@dataclass(eq=False)
class SimTag(WebIdForms):
    """A PI point. ``every``: the point gets a value on every ``every``-th tick (rate / every)."""
    index: int
    name: str
    path: str
    webid: str
    path_webid: str
    gen: Generator
    uom: str
    every: int = 1
    id_webid: str = ""
    off_phase: int = 0                   # 0, 3 or 6: where its stamps' sub-µs offsets start (archive.offset)
    since: int = 0                       # first step with a value (a point added at run time)
    until: Optional[int] = None          # last step with a value (a point deleted at run time)
    prefix: bytes = b""                  # pre-encoded stream header (Full WebID) for channel messages
    _prefixes: Dict[Any, bytes] = field(default_factory=dict, repr=False)

    @property
    def tag(self) -> "SimTag":
        return self

    @property
    def point_id(self) -> int:
        return self.index + 1

    def relative_webid(self, webid_type: str) -> str:
        return W.server_relative_point(webid_type, self.point_id)


@dataclass(eq=False)
class SimAttribute(WebIdForms):
    """An AF attribute whose data reference is a PI point: same values, its own WebID/name/path."""
    name: str
    path: str
    webid: str
    path_webid: str
    id_webid: str
    guid: uuid.UUID
    element: "SimElement"
    tag: SimTag
    _prefixes: Dict[Any, bytes] = field(default_factory=dict, repr=False)

    @property
    def uom(self) -> str:
        return self.tag.uom

    def relative_webid(self, webid_type: str) -> str:
        return W.server_relative_attribute(webid_type, self.element.guid, self.guid)


@dataclass(eq=False)
class SimElement(WebIdForms):
    name: str
    path: str
    webid: str
    path_webid: str
    id_webid: str
    guid: uuid.UUID
    attributes: List[SimAttribute] = field(default_factory=list)

    def relative_webid(self, webid_type: str) -> str:
        return W.server_relative_element(webid_type, self.guid)



ATTRIBUTE_NAMES = ("Temperature", "Pressure", "Flow", "Level", "Speed", "State", "Batch", "Running",
                   "Status", "Diagnostics")


class PIModel:
    """Points, the data server and the AF database, with every WebID form indexed for lookups."""

    def __init__(self, *, tags: int, seed: int, kinds: str, rate: float, server_name: str, tag_prefix: str,
                 uom: str, tag_every: Optional[List[int]] = None, af_server: str = "SIMAF",
                 af_database: str = "SimDB", af_elements: int = 10, attributes_per_element: int = 10) -> None:
        self.server_name = server_name
        self.server_guid = uuid.uuid5(uuid.NAMESPACE_DNS, f"{server_name}.{seed}.pi-simulator")
        self.dataserver_webid = W.full_dataserver(self.server_guid, server_name)
        self.dataserver_path = f"\\\\PIServers[{server_name}]"
        self.seed, self.rate, self.uom = seed, rate, uom
        kind_list = kinds_for(tags, kinds)
        every = list(tag_every or [1])
        self.tags: List[SimTag] = [self.new_tag(i, f"{tag_prefix}{i:06d}", kind_list[i], every[i % len(every)])
                                   for i in range(tags)]
        self.by_path: Dict[str, object] = {}
        self.by_webid: Dict[str, object] = {}
        self.by_point_id: Dict[int, SimTag] = {}
        self.by_guid: Dict[uuid.UUID, object] = {}          # elements and attributes
        self.retired: Dict[str, SimTag] = {}                # every WebID form of a deleted point → it
        self.next_index = tags                              # point IDs are never reused
        for t in self.tags:
            self.index(t)

        # AF: \\SIMAF\SimDB\Unit1 … with attributes Temperature, Pressure, … → points 0, 1, …
        self.af_server, self.af_database = af_server, af_database
        self.af_guid = uuid.uuid5(uuid.NAMESPACE_DNS, f"{af_server}.{seed}.pi-simulator-af")
        self.db_guid = uuid.uuid5(self.af_guid, af_database)
        self.assetserver_webid = W.full_assetserver(self.af_guid, af_server)
        self.database_path = f"\\\\{af_server}\\{af_database}"
        self.database_webid = W.full_database(self.af_guid, self.db_guid, self.database_path)
        self.elements: List[SimElement] = []
        per = max(1, attributes_per_element)
        count = min(af_elements, -(-tags // per))
        for e in range(count):
            ename = f"Unit{e + 1}"
            epath = f"{self.database_path}\\{ename}"
            eguid = uuid.uuid5(self.db_guid, ename)
            el = SimElement(ename, epath, W.full_element(self.af_guid, eguid, epath),
                            W.path_only(epath, W.MARKER_ELEMENT), W.id_only_element(self.af_guid, eguid), eguid)
            for a in range(per):
                idx = e * per + a
                if idx >= tags:
                    break
                aname = ATTRIBUTE_NAMES[a] if a < len(ATTRIBUTE_NAMES) else f"Attribute{a + 1}"
                apath = f"{epath}|{aname}"
                aguid = uuid.uuid5(eguid, aname)
                attr = SimAttribute(aname, apath, W.full_attribute(self.af_guid, eguid, aguid, apath),
                                    W.path_only(apath, W.MARKER_ATTRIBUTE),
                                    W.id_only_attribute(self.af_guid, eguid, aguid), aguid, el, self.tags[idx])
                el.attributes.append(attr)
                self.index(attr)
            self.elements.append(el)
            self.index(el)

    def new_tag(self, index: int, name: str, kind: str, every: int = 1) -> SimTag:
        """Point ``index`` (point ID ``index + 1``) on the data server; not yet indexed."""
        path = f"\\\\{self.server_name}\\{name}"
        return SimTag(index, name, path, W.full_point(self.server_guid, index + 1, path), W.path_only(path),
                      Generator(kind, tag_seed(self.seed, index), self.rate),
                      self.uom if kind in NUMERIC_KINDS else "", every=max(1, int(every)),
                      id_webid=W.id_only_point(self.server_guid, index + 1), off_phase=3 * (index % 3))

    def find_point(self, name_or_webid: str) -> SimTag:
        """A current point by name, path or any WebID form; KeyError when there is none."""
        key = name_or_webid.upper()
        obj = self.resolve(name_or_webid) or self.by_path.get(key) or next(
            (t for t in self.tags if t.name.upper() == key), None)
        if not isinstance(obj, SimTag):
            raise KeyError(f"no PI point named {name_or_webid!r} (a name, a path or a WebID)")
        return obj

    def add_tag(self, name: str, kind: str, every: int, since: int) -> SimTag:
        """A new point with the next point ID, values from step ``since``; indexed."""
        if not name or any(c in name for c in "\\*?|"):
            raise ValueError(f"a point name must be non-empty, without \\ * ? |: {name!r}")
        if any(t.name.upper() == name.upper() for t in self.tags):
            raise ValueError(f"a point named {name!r} exists already")
        tag = self.new_tag(self.next_index, name, kind, every)
        tag.since = since
        self.next_index += 1
        self.tags.append(tag)
        self.index(tag)
        return tag

    def delete_tag(self, tag: SimTag, until: int) -> None:
        """``tag`` is deleted: its last value is at step ``until``; no lookup finds it any more
        (``retired`` keeps it for the oracle)."""
        tag.until = until
        self.tags.remove(tag)
        self.unindex(tag)
        for w in tag.forms():
            self.retired[w] = tag

    def index(self, obj: Any) -> None:
        """Make ``obj`` findable by path and by every WebID form."""
        self.by_path[obj.path.upper()] = obj
        for w in obj.forms():
            self.by_webid[w] = obj
        if isinstance(obj, SimTag):
            self.by_point_id[obj.point_id] = obj
        else:
            self.by_guid[obj.guid] = obj

    def unindex(self, obj: Any) -> None:
        """``obj`` is gone (deleted): no path or WebID finds it any more."""
        self.by_path.pop(obj.path.upper(), None)
        for w in obj.forms():
            self.by_webid.pop(w, None)
        if isinstance(obj, SimTag):
            self.by_point_id.pop(obj.point_id, None)
        else:
            self.by_guid.pop(obj.guid, None)

    def resolve(self, webid: str) -> Optional[Any]:
        """The point, element or attribute behind a WebID 2.0 of any type, as PI Web API finds it:
        by the IDs it encodes, else (Full, PathOnly) by its path; None when nothing matches. A
        Full WebID whose name part is stale (a renamed point) still finds the point by its IDs."""
        obj = self.by_webid.get(webid)
        if obj is not None:
            return obj
        try:
            parts = W.decode_parts(webid)
        except ValueError:
            return None
        own_server = self.server_guid if parts.marker == W.MARKER_POINT else self.af_guid
        if parts.server_guid is None or parts.server_guid == own_server:
            if parts.point_id is not None:
                obj = self.by_point_id.get(parts.point_id)
            elif parts.attribute_guid is not None:
                obj = self.by_guid.get(parts.attribute_guid)
            elif parts.element_guid is not None:
                obj = self.by_guid.get(parts.element_guid)
        if obj is None and parts.path is not None:
            obj = self.by_path.get(parts.path)
        want = {W.MARKER_POINT: SimTag, W.MARKER_ELEMENT: SimElement, W.MARKER_ATTRIBUTE: SimAttribute}[parts.marker]
        return obj if isinstance(obj, want) else None
