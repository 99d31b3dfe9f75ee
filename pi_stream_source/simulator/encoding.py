"""JSON bytes for values and streams, built from cached templates.

At 100k values/s a dict plus ``orjson.dumps`` per value costs more than the rest of the server, so a
value is ``head + value + b"}"`` where the head (timestamp, units, flags) is cached per step,
sub-µs offset and unit, and each stream header is encoded once per WebID type. Odd values (errors, flags other than
good, edits, late values) take the general path through a dict.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import orjson

from .archive import Archive, Point
from .generators import GOOD
from .ticks import format_ticks

_INF = math.inf


def json_value(v: Any) -> bytes:
    """A PI value as JSON. NaN and the infinities are written as the strings ``"NaN"``,
    ``"Infinity"``, ``"-Infinity"`` (what .NET's JSON writer produces; JSON has no literal)."""
    if type(v) is float and (v != v or v == _INF or v == -_INF):
        return b'"NaN"' if v != v else (b'"Infinity"' if v > 0 else b'"-Infinity"')
    return orjson.dumps(v)


class Encoder:
    def __init__(self, archive: Archive, bool_strings: bool = False) -> None:
        self.archive = archive
        self.bool_strings = bool_strings
        self._heads: Dict[Tuple[int, int, str, bool], bytes] = {}
        self._tables: Dict[Tuple[Any, ...], List[Optional[bytes]]] = {}

    def _flag(self, b: bool) -> Any:
        if self.bool_strings:
            return "true" if b else "false"
        return b

    def head(self, tag: Any, k: int) -> bytes:
        """``{"Timestamp":…,"UnitsAbbreviation":…,<good flags>,"Value":`` of ``tag`` at step ``k``
        (shared by the tags with the same unit and sub-µs offset there)."""
        uom = tag.uom
        off = self.archive.offset(tag, k)
        key = (k, off, uom, self.bool_strings)
        h = self._heads.get(key)
        if h is None:
            if len(self._heads) > 20_000:
                self._heads.clear()
            f = self._flag
            ts = self.archive.stamp(tag, k)
            h = orjson.dumps({"Timestamp": format_ticks(ts), "UnitsAbbreviation": uom,
                              "Good": f(True), "Questionable": f(False), "Substituted": f(False),
                              "Annotated": f(False)})[:-1] + b',"Value":'
            self._heads[key] = h
        return h

    def table(self, k: int, tag: Any, suffix: bytes = b"") -> List[Optional[bytes]]:
        """Encoded values of step ``k`` for every tag of ``tag``'s family (same kind, period, unit
        and sub-µs offset), indexed by position in the cycle and filled on first use; each ends
        with ``suffix``."""
        g = tag.gen
        key = (k, g.kind, g.period, tag.uom, self.archive.offset(tag, k), self.bool_strings, suffix)
        tab = self._tables.get(key)
        if tab is None:
            if len(self._tables) > 256:
                newest = max(t[0] for t in self._tables)
                for old in [t for t in self._tables if t[0] < newest - 2]:
                    del self._tables[old]
            tab = self._tables[key] = [None] * g.period
        return tab

    def cycle_value(self, tag: Any, k: int, n: int, suffix: bytes = b"") -> bytes:
        """The encoding of position ``n`` of the cycle at tick ``k`` (not cached)."""
        g = tag.gen
        if g.plain:
            return self.head(tag, k) + json_value(g.canonical(n)) + b"}" + suffix
        return self.timed_value(tag, self.archive.stamp(tag, k), g.canonical(n), False,
                                g.canonical_quality(n), g.canonical_errors(n)) + suffix

    def value_bytes(self, tag: Any, k: int, suffix: bytes = b"", shared: bool = True) -> bytes:
        """TimedValue JSON of ``tag`` at tick ``k`` (edits applied, flagged ``Substituted``).
        ``shared``: go through the per-tick family tables (recent ticks that many tags share);
        archive reads over long ranges encode directly instead."""
        g = tag.gen
        if (tag.index, k) in self.archive.edits:
            return self.timed_value(tag, self.archive.stamp(tag, k), self.archive.edits[(tag.index, k)],
                                    (tag.index, k) not in self.archive.unflagged, g.quality(k), None) + suffix
        if g.period and not shared:
            return self.cycle_value(tag, k, (k + g.phase) % g.period, suffix)
        if g.period:
            tab = self.table(k, tag, suffix)
            n = (k + g.phase) % g.period
            v = tab[n]
            if v is None:
                v = tab[n] = self.cycle_value(tag, k, n, suffix)
            return v
        return self.head(tag, k) + json_value(g.value(k)) + b"}" + suffix

    def point_bytes(self, tag: Any, p: Point, shared: bool = True) -> bytes:
        ts, k, _ = p
        if k is not None:
            return self.value_bytes(tag, k, shared=shared)
        value, substituted = self.archive.late[tag.index][ts]
        # a system state written into the archive (e.g. "Pt Created") is not a good value
        bad = isinstance(value, dict) and value.get("IsSystem") is True
        return self.timed_value(tag, ts, value, substituted, (False, False, False) if bad else GOOD)

    def timed_value(self, tag: Any, ts: int, value: Any, substituted: bool = False,
                    quality: Tuple[bool, bool, bool] = GOOD, errors: Optional[list] = None) -> bytes:
        f = self._flag
        good, questionable, annotated = quality
        """A TimedValue at stamp ``ts`` (100-ns ticks)."""
        d = {"Timestamp": format_ticks(ts), "UnitsAbbreviation": tag.uom, "Good": f(good),
             "Questionable": f(questionable), "Substituted": f(substituted), "Annotated": f(annotated)}
        if errors:
            d["Errors"] = errors
        return orjson.dumps(d)[:-1] + b',"Value":' + json_value(value) + b"}"

    @staticmethod
    def stream_prefix(stream: Any, webid_type: str = "Full", units: bool = True, items: bool = False) -> bytes:
        """``{"WebId":…,"Name":…,"Path":…,"Links":{}[,"UnitsAbbreviation":…]`` (no closing brace),
        followed by ``,"Items":[`` when ``items``. StreamValues (``Items[]``) carry the units at
        stream level, StreamValue (one ``Value``) not. Cached on the stream."""
        key = (webid_type, units, items)
        p = stream._prefixes.get(key)
        if p is None:
            d = {"WebId": stream.webid_for(webid_type), "Name": stream.name, "Path": stream.path, "Links": {}}
            if units:
                d["UnitsAbbreviation"] = stream.uom
            p = orjson.dumps(d)[:-1] + (b',"Items":[' if items else b"")
            stream._prefixes[key] = p
        return p

    @staticmethod
    def stream_items(prefix: bytes, values: List[bytes]) -> bytes:
        return prefix + b',"Items":[' + b",".join(values) + b"]}"

    @staticmethod
    def stream_value(prefix: bytes, value: bytes) -> bytes:
        return prefix + b',"Value":' + value + b"}"
