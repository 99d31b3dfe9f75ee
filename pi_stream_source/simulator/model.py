"""What the simulated PI System holds: PI points on one data server, and a small AF database whose
element attributes are PI Point data references to those points. WebIDs come from
``pi_stream_source.webid``, the module the client uses too."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .. import webid as W
from .generators import NUMERIC_KINDS, Generator, kinds_for, tag_seed

WEBID_TYPES = ("Full", "IDOnly", "PathOnly")


class WebIdForms:
    """The WebID of an object in the form a request asks for (``webIdType``)."""
    webid: str
    path_webid: str
    id_webid: str

    def webid_for(self, webid_type: str) -> str:
        return {"PathOnly": self.path_webid, "IDOnly": self.id_webid}.get(webid_type, self.webid)


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
    prefix: bytes = b""                  # pre-encoded stream header (Full WebID) for channel messages
    _prefixes: Dict[Any, bytes] = field(default_factory=dict, repr=False)

    @property
    def tag(self) -> "SimTag":
        return self

    @property
    def point_id(self) -> int:
        return self.index + 1



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



@dataclass(eq=False)
class SimElement(WebIdForms):
    name: str
    path: str
    webid: str
    path_webid: str
    id_webid: str
    guid: uuid.UUID
    attributes: List[SimAttribute] = field(default_factory=list)



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
        kind_list = kinds_for(tags, kinds)
        every = list(tag_every or [1])
        self.tags: List[SimTag] = []
        for i in range(tags):
            name = f"{tag_prefix}{i:06d}"
            path = f"\\\\{server_name}\\{name}"
            kind = kind_list[i]
            tag = SimTag(i, name, path, W.full_point(self.server_guid, i + 1, path), W.path_only(path),
                         Generator(kind, tag_seed(seed, i), rate), uom if kind in NUMERIC_KINDS else "",
                         every=max(1, int(every[i % len(every)])), id_webid=W.id_only_point(self.server_guid, i + 1))
            self.tags.append(tag)
        self.by_path: Dict[str, object] = {t.path.upper(): t for t in self.tags}
        self.by_webid: Dict[str, object] = {}
        for t in self.tags:
            self.by_webid[t.webid] = self.by_webid[t.path_webid] = self.by_webid[t.id_webid] = t

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
                self.by_path[apath.upper()] = attr
                for w in (attr.webid, attr.path_webid, attr.id_webid):
                    self.by_webid[w] = attr
            self.elements.append(el)
            self.by_path[epath.upper()] = el
            for w in (el.webid, el.path_webid, el.id_webid):
                self.by_webid[w] = el
