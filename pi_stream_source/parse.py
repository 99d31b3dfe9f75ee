"""PI Web API stream payloads → columns of the data contract.

Accepts both channel message shapes (REFERENCE §1.4): per-stream ``Items[]`` and a single
``Value``; quality flags as JSON booleans or ``"true"``/``"false"`` strings; digital and system
states; per-value ``Errors``. Nothing is dropped silently: an odd value becomes a row with the
problem in ``error``, a frame that is not JSON is counted and reported to the caller.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import orjson
import pyarrow as pa

from .pitime import parse_ts
from .schema import BUFFER_SCHEMA

log = logging.getLogger(__name__)

_COLUMNS = BUFFER_SCHEMA.names
_SPECIAL_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf,
                   "INF": math.inf, "-INF": -math.inf}
_INT32 = (-(2 ** 31), 2 ** 31 - 1)          # digital_state_code is an int32 column


def _json_text(raw: Any, limit: int = 200) -> str:
    """A short JSON rendering of an odd value, for the ``error`` column and ``last_error``."""
    try:
        return orjson.dumps(raw).decode("utf-8", "replace")[:limit]
    except TypeError:
        return repr(raw)[:limit]


@dataclass
class ParseStats:
    messages: int = 0
    heartbeats: int = 0
    values: int = 0
    repeats_dropped: int = 0
    malformed_frames: int = 0
    value_errors: int = 0      # values carrying PI Errors or that could not be parsed
    unknown_webids: int = 0
    last_error: Optional[str] = None

    def add(self, other: "ParseStats") -> None:
        for name in ("messages", "heartbeats", "values", "repeats_dropped", "malformed_frames",
                     "value_errors", "unknown_webids"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        if other.last_error:
            self.last_error = other.last_error


class Columns:
    """Column lists in ``BUFFER_SCHEMA`` order; cheap to append to, turned into Arrow once."""

    __slots__ = tuple(_COLUMNS)

    def __init__(self) -> None:
        for name in _COLUMNS:
            setattr(self, name, [])

    def __len__(self) -> int:
        return len(self.timestamp)

    def to_arrow(self) -> pa.RecordBatch:
        return pa.RecordBatch.from_arrays([pa.array(getattr(self, n), type=BUFFER_SCHEMA.field(n).type)
                                           for n in _COLUMNS], schema=BUFFER_SCHEMA)


def _flag(raw: Any, name: str, problems: List[str]) -> Optional[bool]:
    if raw is True or raw is False or raw is None:
        return raw
    if isinstance(raw, str):
        low = raw.strip().lower()
        if low == "true":
            return True
        if low == "false":
            return False
    problems.append(f"{name} is not a boolean: {raw!r:.40}")
    return None


def _errors_text(errors: Any) -> str:
    parts = []
    for err in errors if isinstance(errors, list) else [errors]:
        if isinstance(err, dict):
            msgs = err.get("Message") or err.get("Errors") or []
            msgs = msgs if isinstance(msgs, list) else [msgs]
            parts.append(f"{err.get('FieldName', '')}: {'; '.join(str(m) for m in msgs)}".lstrip(": "))
        else:
            parts.append(str(err))
    return " | ".join(parts)


def _append_value(cols: Columns, item: Any, webid: str, name: Optional[str], path: Optional[str],
                  stream_uom: Optional[str], source: str, received: int, stats: ParseStats,
                  last_seen: Optional[Dict[str, Tuple]], stream_problems: Tuple[str, ...] = ()) -> None:
    problems: List[str] = list(stream_problems)
    if not isinstance(item, dict):
        item = {"Value": item}
        problems.append("value entry is not an object")
    ts_raw = item.get("Timestamp")
    ts: Optional[int] = None
    if isinstance(ts_raw, str):
        try:
            ts = parse_ts(ts_raw)
        except ValueError:
            problems.append(f"bad Timestamp {ts_raw!r:.40}")
    else:
        problems.append(f"missing Timestamp ({ts_raw!r:.40})")
    raw = item.get("Value")
    value: Optional[float] = None
    vstr: Optional[str] = None
    code: Optional[int] = None
    is_sys: Optional[bool] = None
    if raw is None:
        pass
    elif raw is True or raw is False:
        value, vstr = (1.0 if raw else 0.0), ("True" if raw else "False")
    elif isinstance(raw, (int, float)):
        value = float(raw)
    elif isinstance(raw, str):
        vstr = raw
        special = _SPECIAL_FLOATS.get(raw)
        if special is not None:
            value = special
    elif isinstance(raw, dict) and "Name" in raw:
        vstr = str(raw.get("Name"))
        state = raw.get("Value")
        if isinstance(state, int) and not isinstance(state, bool) and _INT32[0] <= state <= _INT32[1]:
            code = state
        elif state is not None:
            problems.append(f"digital state Value is not a 32-bit integer: {state!r:.40}")
        is_sys = _flag(raw.get("IsSystem", False), "IsSystem", problems)
    else:
        vstr = _json_text(raw, 1000)
        problems.append("unsupported Value type")
    good = _flag(item.get("Good"), "Good", problems)
    questionable = _flag(item.get("Questionable"), "Questionable", problems)
    substituted = _flag(item.get("Substituted"), "Substituted", problems)
    annotated = _flag(item.get("Annotated"), "Annotated", problems)
    errors = item.get("Errors")
    if errors:
        problems.insert(len(stream_problems), _errors_text(errors) or f"Errors: {_json_text(errors, 100)}")
    if last_seen is not None and ts is not None:
        key = (ts, value, vstr, code, good, questionable, substituted, annotated)
        if last_seen.get(webid) == key:
            stats.repeats_dropped += 1
            return
        last_seen[webid] = key
    uom = item.get("UnitsAbbreviation") or stream_uom
    error = "; ".join(problems) if problems else None
    if error:
        stats.value_errors += 1
        stats.last_error = f"{webid}: {error}"[:500]
    cols.tag_webid.append(webid)
    cols.tag_name.append(name)
    cols.tag_path.append(path)
    cols.timestamp.append(ts)
    cols.value.append(value)
    cols.value_string.append(vstr)
    cols.digital_state_code.append(code)
    cols.is_system_state.append(is_sys)
    cols.good.append(good)
    cols.questionable.append(questionable)
    cols.substituted.append(substituted)
    cols.annotated.append(annotated)
    cols.uom.append(uom if isinstance(uom, str) else None)
    cols.error.append(error)
    cols.source.append(source)
    cols.received_timestamp.append(received)
    stats.values += 1


def parse_streams(streams: Any, cols: Columns, stats: ParseStats, source: str, received: int,
                  known: Optional[Dict[str, Tuple[Optional[str], Optional[str]]]] = None,
                  last_seen: Optional[Dict[str, Tuple]] = None) -> None:
    """Append the values of a list of stream objects (``{WebId, Name, Path, Items[] | Value}``).

    ``known`` maps subscribed WebIDs to (name, path); a stream outside it is still kept, and
    counted in ``unknown_webids``. ``last_seen`` (WebID → last value key) drops exact repeats.
    """
    if not isinstance(streams, list):
        stats.malformed_frames += 1
        stats.last_error = f"Items is not a list: {type(streams).__name__}"
        return
    for stream in streams:
        if not isinstance(stream, dict):
            stats.value_errors += 1
            stats.last_error = f"stream entry is not an object: {stream!r:.80}"
            continue
        problems: List[str] = []
        webid = stream.get("WebId")
        if webid is None:
            webid = ""
        elif not isinstance(webid, str):
            problems.append(f"WebId is not a string: {_json_text(webid, 60)}")
            webid = _json_text(webid)
        name, path = stream.get("Name"), stream.get("Path")
        if name is not None and not isinstance(name, str):
            problems.append(f"Name is not a string: {_json_text(name, 60)}")
            name = None
        if path is not None and not isinstance(path, str):
            problems.append(f"Path is not a string: {_json_text(path, 60)}")
            path = None
        if known is not None:
            meta = known.get(webid)
            if meta is None:
                stats.unknown_webids += 1
                stats.last_error = f"value for a WebID not subscribed: {webid[:60]}"
                log.warning("channel sent a value for a WebID that was not subscribed: %s", webid[:60])
            else:
                name, path = name or meta[0], path or meta[1]
        uom = stream.get("UnitsAbbreviation")
        if "Items" in stream:
            values = stream["Items"]
            if not isinstance(values, list):
                values = [values]
        elif "Value" in stream:
            values = [stream["Value"]]
        else:
            values = []
        stream_problems = tuple(problems)
        for item in values:
            _append_value(cols, item, webid, name, path, uom, source, received, stats, last_seen, stream_problems)


def parse_message(data: Any, cols: Columns, stats: ParseStats, source: str, received: int,
                  known: Optional[Dict[str, Tuple[Optional[str], Optional[str]]]] = None,
                  last_seen: Optional[Dict[str, Tuple]] = None) -> None:
    """Parse one channel message (``bytes`` or ``str``) into ``cols``. Heartbeats (empty messages)
    add nothing; a frame that is not a PI message is counted in ``malformed_frames``."""
    stats.messages += 1
    if isinstance(data, str):
        data = data.encode("utf-8", "replace")
    if not data or not data.strip():
        stats.heartbeats += 1
        return
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        stats.malformed_frames += 1
        stats.last_error = f"malformed frame ({len(data)} bytes): {exc}; starts {data[:120]!r}"
        log.warning("malformed channel frame (%d bytes): %s; starts %r", len(data), exc, data[:120])
        return
    if not isinstance(doc, dict):
        stats.malformed_frames += 1
        stats.last_error = f"frame is not a JSON object: {data[:120]!r}"
        log.warning("channel frame is not a JSON object: %r", data[:120])
        return
    if doc.get("WebException"):
        web_exc = doc["WebException"]
        stats.malformed_frames += 1
        stats.last_error = "WebException: " + _errors_text(web_exc.get("Errors", []) if isinstance(web_exc, dict) else web_exc)
        log.warning("channel message carries %s", stats.last_error)
    if doc.get("Errors"):
        stats.malformed_frames += 1
        stats.last_error = "Errors: " + _errors_text(doc["Errors"])
        log.warning("channel message carries %s", stats.last_error)
        return
    if "WebId" in doc:
        streams = [doc]
    else:
        streams = doc.get("Items")
    if streams is None or streams == []:
        stats.heartbeats += 1
        return
    parse_streams(streams, cols, stats, source, received, known, last_seen)
