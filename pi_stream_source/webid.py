"""WebID 2.0 encoding and decoding (PI Web API "WebID encoding" topic).

Layout: type char (``F`` Full, ``I`` IDOnly, ``P`` PathOnly, ``L`` LocalIDOnly, ``D`` DefaultIDOnly),
version char ``1``, a two-char object marker (``DP`` PI Point, ``DS`` data server, ``Em`` element,
``Ab`` attribute, …), an optional owner marker, then the encoded fields: GUIDs in
``Guid.ToByteArray()`` byte order (22 chars), Int32 little-endian (6 chars), names upper-cased as
UTF-8, each base64url without padding.
"""
from __future__ import annotations

import base64
import struct
import uuid
from dataclasses import dataclass
from typing import Optional

MARKER_POINT = "DP"
MARKER_DATASERVER = "DS"
MARKER_ASSETSERVER = "RS"
MARKER_DATABASE = "RD"
MARKER_ELEMENT = "Em"
MARKER_ATTRIBUTE = "Ab"

#: marker -> owner marker used by PathOnly/Full WebIDs of that object type.
OWNER_FOR_MARKER = {MARKER_ATTRIBUTE: "E", MARKER_ELEMENT: "", MARKER_POINT: "", MARKER_DATASERVER: ""}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode_guid(guid: uuid.UUID) -> str:
    return _b64(guid.bytes_le)


def encode_int32(value: int) -> str:
    return _b64(struct.pack("<i", value))


def encode_name(text: str) -> str:
    return _b64(text.upper().encode("utf-8"))


def _strip_path(path: str) -> str:
    return path[2:] if path.startswith("\\\\") else path


def path_only(path: str, marker: str = MARKER_POINT, owner_marker: Optional[str] = None) -> str:
    """PathOnly WebID of ``path`` (``\\\\SERVER\\TAG`` for a point, ``\\\\AF\\DB\\EL|ATTR`` for an
    attribute). ``path_only(r"\\\\PISRV1\\SINUSOID") == "P1DPUElTUlYxXFNJTlVTT0lE"``."""
    owner = OWNER_FOR_MARKER.get(marker, "") if owner_marker is None else owner_marker
    return "P1" + marker + owner + encode_name(_strip_path(path))


def full_point(server_guid: uuid.UUID, point_id: int, path: str) -> str:
    """Full WebID of a PI Point: ``F1DP`` + server GUID + point ID + ``SERVER\\TAG``."""
    return "F1DP" + encode_guid(server_guid) + encode_int32(point_id) + encode_name(_strip_path(path))


def full_dataserver(server_guid: uuid.UUID, name: str) -> str:
    return "F1DS" + encode_guid(server_guid) + encode_name(name)


def full_element(server_guid: uuid.UUID, element_guid: uuid.UUID, path: str) -> str:
    return "F1Em" + encode_guid(server_guid) + encode_guid(element_guid) + encode_name(_strip_path(path))


def full_attribute(server_guid: uuid.UUID, element_guid: uuid.UUID, attribute_guid: uuid.UUID, path: str) -> str:
    return ("F1AbE" + encode_guid(server_guid) + encode_guid(element_guid) + encode_guid(attribute_guid)
            + encode_name(_strip_path(path)))


@dataclass(frozen=True)
class WebIdInfo:
    type: str
    version: str
    marker: str
    server_guid: Optional[uuid.UUID] = None
    point_id: Optional[int] = None
    path: Optional[str] = None


_TYPES = {"F": "Full", "I": "IDOnly", "P": "PathOnly", "L": "LocalIDOnly", "D": "DefaultIDOnly"}


def decode(webid: str) -> WebIdInfo:
    """Decode a WebID 2.0 of a PI Point or data server (``F1DP``, ``P1DP``, ``I1DP``, ``F1DS``…).
    Other object types decode their type, version and marker only. Raises ``ValueError`` on a string
    that is not a WebID 2.0."""
    if len(webid) < 4 or webid[0] not in _TYPES or webid[1] != "1":
        raise ValueError(f"not a WebID 2.0: {webid[:12]!r}")
    kind, marker, rest = _TYPES[webid[0]], webid[2:4], webid[4:]
    try:
        if marker == MARKER_POINT:
            if kind == "PathOnly":
                return WebIdInfo(kind, "2.0", marker, path="\\\\" + _unb64(rest).decode("utf-8"))
            guid = uuid.UUID(bytes_le=_unb64(rest[:22]))
            point_id = struct.unpack("<i", _unb64(rest[22:28]))[0]
            path = "\\\\" + _unb64(rest[28:]).decode("utf-8") if kind == "Full" and rest[28:] else None
            return WebIdInfo(kind, "2.0", marker, guid, point_id, path)
        if marker == MARKER_DATASERVER:
            if kind == "PathOnly":
                return WebIdInfo(kind, "2.0", marker, path="\\\\" + _unb64(rest).decode("utf-8"))
            guid = uuid.UUID(bytes_le=_unb64(rest[:22]))
            name = _unb64(rest[22:]).decode("utf-8") if kind == "Full" and rest[22:] else None
            return WebIdInfo(kind, "2.0", marker, guid, path=("\\\\" + name) if name else None)
    except (ValueError, struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed WebID 2.0 {webid[:12]!r}…: {exc}") from None
    return WebIdInfo(kind, "2.0", marker)


def id_only_point(server_guid: uuid.UUID, point_id: int) -> str:
    """IDOnly WebID of a PI Point: ``I1DP`` + server GUID + point ID (no name)."""
    return "I1DP" + encode_guid(server_guid) + encode_int32(point_id)


def id_only_element(server_guid: uuid.UUID, element_guid: uuid.UUID) -> str:
    """IDOnly WebID of an AF element: ``I1Em`` + AF server GUID + element GUID (no path)."""
    return "I1Em" + encode_guid(server_guid) + encode_guid(element_guid)


def id_only_attribute(server_guid: uuid.UUID, element_guid: uuid.UUID, attribute_guid: uuid.UUID) -> str:
    """IDOnly WebID of an element attribute: ``I1AbE`` + the three GUIDs (server, element,
    attribute), as in the Full form without the path."""
    return "I1AbE" + encode_guid(server_guid) + encode_guid(element_guid) + encode_guid(attribute_guid)


def full_assetserver(server_guid: uuid.UUID, name: str) -> str:
    """Full WebID of an AF (asset) server: ``F1RS`` + server GUID + name."""
    return "F1RS" + encode_guid(server_guid) + encode_name(name)


def full_database(server_guid: uuid.UUID, database_guid: uuid.UUID, path: str) -> str:
    """Full WebID of an AF database: ``F1RD`` + server GUID + database GUID + ``SERVER\\DB``."""
    return "F1RD" + encode_guid(server_guid) + encode_guid(database_guid) + encode_name(_strip_path(path))


def stream_key(webid: str) -> str:
    """The identity of a stream whatever form its WebID is written in: ``<server GUID>:<point ID>``
    for a PI point (its Full and IDOnly WebIDs agree), else the WebID itself."""
    if len(webid) > 4 and webid[2:4] == MARKER_POINT and webid[0] in "FI":
        try:
            info = decode(webid)
        except ValueError:
            return webid
        if info.server_guid is not None and info.point_id is not None:
            return f"{info.server_guid}:{info.point_id}"
    return webid


def url_webid(webid: str) -> str:
    """The shortest form of a stream's WebID to put in a URL: a PI point's IDOnly WebID (its data
    server GUID and point ID, about half the length of the Full form), else the WebID as it is.
    Answers come back in the form asked for with ``webIdType``, so this only shortens URLs (more
    streams fit in one channel under ``maxUrlLength``)."""
    if len(webid) >= 32 and webid[:4] in ("F1DP", "I1DP"):
        return "I1DP" + webid[4:32]
    return webid


# ---- every WebID 2.0 type of the stream objects (points, elements, attributes) ------------------
# LocalIDOnly (``L``) and DefaultIDOnly (``D``) are "similar to IDOnly" with the (local/default)
# server's ID and the path left out (WebID Type topic); no public sample shows their bytes, so the
# layout below (IDOnly without the server GUID) is this package's reading of that sentence.
WEBID_TYPES = ("Full", "IDOnly", "PathOnly", "LocalIDOnly", "DefaultIDOnly")
_LETTER = {"Full": "F", "IDOnly": "I", "PathOnly": "P", "LocalIDOnly": "L", "DefaultIDOnly": "D"}


def server_relative_point(webid_type: str, point_id: int) -> str:
    """LocalIDOnly or DefaultIDOnly WebID of a PI Point: ``L1DP``/``D1DP`` + point ID."""
    return _LETTER[webid_type] + "1DP" + encode_int32(point_id)


def server_relative_element(webid_type: str, element_guid: uuid.UUID) -> str:
    """LocalIDOnly or DefaultIDOnly WebID of an AF element: ``L1Em``/``D1Em`` + element GUID."""
    return _LETTER[webid_type] + "1Em" + encode_guid(element_guid)


def server_relative_attribute(webid_type: str, element_guid: uuid.UUID, attribute_guid: uuid.UUID) -> str:
    """LocalIDOnly or DefaultIDOnly WebID of an element attribute: ``L1AbE``/``D1AbE`` + element
    and attribute GUIDs."""
    return _LETTER[webid_type] + "1AbE" + encode_guid(element_guid) + encode_guid(attribute_guid)


@dataclass(frozen=True)
class WebIdParts:
    """What a WebID 2.0 of a point (``DP``), element (``Em``) or attribute (``Ab``) encodes; fields a
    type leaves out are None. ``server_guid`` is the data server's (points) or AF server's."""
    type: str
    marker: str
    server_guid: Optional[uuid.UUID] = None
    point_id: Optional[int] = None
    element_guid: Optional[uuid.UUID] = None
    attribute_guid: Optional[uuid.UUID] = None
    path: Optional[str] = None            # upper-cased, with the leading ``\\``


def decode_parts(webid: str) -> WebIdParts:
    """Decode a point, element or attribute WebID 2.0 of any of the five types. Raises
    ``ValueError`` for anything else or a malformed one."""
    if len(webid) < 4 or webid[0] not in _TYPES or webid[1] != "1":
        raise ValueError(f"not a WebID 2.0: {webid[:12]!r}")
    kind, marker, rest = _TYPES[webid[0]], webid[2:4], webid[4:]
    if marker not in (MARKER_POINT, MARKER_ELEMENT, MARKER_ATTRIBUTE):
        raise ValueError(f"not a point, element or attribute WebID: {webid[:12]!r}")
    if marker == MARKER_ATTRIBUTE:
        if rest[:1] != "E":
            raise ValueError(f"not an element attribute WebID: {webid[:12]!r}")
        rest = rest[1:]
    try:
        fields: dict = {}
        if kind in ("Full", "IDOnly"):
            fields["server_guid"], rest = uuid.UUID(bytes_le=_unb64(rest[:22])), rest[22:]
        if kind != "PathOnly":
            if marker == MARKER_POINT:
                fields["point_id"] = struct.unpack("<i", _unb64(rest[:6]))[0]
                rest = rest[6:]
            else:
                fields["element_guid"], rest = uuid.UUID(bytes_le=_unb64(rest[:22])), rest[22:]
                if marker == MARKER_ATTRIBUTE:
                    fields["attribute_guid"], rest = uuid.UUID(bytes_le=_unb64(rest[:22])), rest[22:]
        if kind in ("Full", "PathOnly"):
            if not rest:
                raise ValueError("no path")
            fields["path"] = "\\\\" + _unb64(rest).decode("utf-8").upper()
        elif rest:
            raise ValueError("trailing characters")
    except (ValueError, struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed WebID 2.0 {webid[:12]!r}…: {exc}") from None
    return WebIdParts(kind, marker, **fields)


def point_in_form(webid: str, form: str) -> str:
    """A PI point's Full WebID written as ``form`` (Full, IDOnly or PathOnly): what a user may give."""
    if form == "Full":
        return webid
    info = decode(webid)
    if form == "IDOnly" and info.server_guid is not None and info.point_id is not None:
        return id_only_point(info.server_guid, info.point_id)
    if form == "PathOnly" and info.path:
        return path_only(info.path)
    raise ValueError(f"cannot write {webid[:12]}… as {form}")
