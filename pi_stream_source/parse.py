"""PI Web API stream payloads → columns of the data contract.

Accepts both channel message shapes (REFERENCE §1.4): per-stream ``Items[]`` and a single
``Value``; quality flags as JSON booleans or ``"true"``/``"false"`` strings; digital and system
states; per-value ``Errors``. Nothing is dropped silently: an odd value becomes a row with the
problem in ``error``, a frame that is not JSON is counted and reported to the caller.
"""
from __future__ import annotations

import logging
import math
from itertools import repeat
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import msgspec
import orjson
import pyarrow as pa

from .pitime import parse_ticks
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
            ts = parse_ticks(ts_raw)
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


# ---- fast path: plain numeric channel messages, decoded by msgspec into typed structs ----------
class _FastValue(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    Timestamp: Optional[str] = None
    Value: Optional[float] = None
    UnitsAbbreviation: Optional[str] = None
    Good: Optional[bool] = None
    Questionable: Optional[bool] = None
    Substituted: Optional[bool] = None
    Annotated: Optional[bool] = None


class _FastStream(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    WebId: Optional[str] = None
    Name: Optional[str] = None
    Path: Optional[str] = None
    UnitsAbbreviation: Optional[str] = None
    Links: Optional[Dict[str, str]] = None
    Items: Optional[List[_FastValue]] = None


class _FastMessage(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    Links: Optional[Dict[str, str]] = None
    Items: Optional[List[_FastStream]] = None
    WebId: Optional[str] = None


_FAST_DECODER = msgspec.json.Decoder(_FastMessage)
_TS_CACHE: Dict[str, int] = {}


def fast_batch(data: bytes, source: str, received: int, known: Dict[str, Tuple[Optional[str], Optional[str]]],
               last_seen: Optional[Dict[str, Tuple]] = None) -> Optional[Tuple[pa.RecordBatch, int]]:
    """A channel message of plain numeric values (the common case) → (rows in BUFFER_SCHEMA,
    repeats dropped), decoded straight into typed structs (msgspec). ``known``: the channel's
    streams (WebID → name, path). None when the message holds anything else (strings, digital
    states, errors, odd shapes, unknown WebIDs, bad timestamps…): the caller then takes the general
    path, which gives the same rows for what this path accepts.

    The structs forbid unknown fields, so every string of an accepted frame was decoded, and so
    checked as the general parser checks it (invalid UTF-8, lone surrogate escapes); PI's
    ``Errors`` and ``WebException`` are unknown fields here, which send the frame to the general
    path. No scan of the frame is needed for them."""
    try:
        data.decode("utf-8")             # the general parser refuses invalid UTF-8 anywhere in a frame
        msg = _FAST_DECODER.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError, ValueError):     # incl. invalid UTF-8
        return None
    streams = msg.Items
    if not streams or msg.WebId is not None:
        return None
    webid: List[str] = []
    name: List[Optional[str]] = []
    path: List[Optional[str]] = []
    s_uom: List[Optional[str]] = []
    values: List[_FastValue] = []
    for stream in streams:
        items = stream.Items
        w = stream.WebId
        meta = known.get(w) if w is not None else None
        if items is None or meta is None:            # single-Value shape, no WebId, not subscribed
            return None
        k = len(items)
        if k == 0:
            continue
        values += items
        webid += [w] * k
        name += [stream.Name or meta[0]] * k
        path += [stream.Path or meta[1]] * k
        s_uom += [stream.UnitsAbbreviation] * k
    n = len(values)
    if n == 0:
        return None
    cache = _TS_CACHE
    ts: List[int] = []
    try:
        for v in values:
            text = v.Timestamp
            t = cache.get(text)
            if t is None:
                if text is None:
                    return None
                if len(cache) > 100_000:
                    cache.clear()
                t = cache[text] = parse_ticks(text)
            ts.append(t)
    except ValueError:
        return None
    value = [v.Value for v in values]
    good = [v.Good for v in values]
    questionable = [v.Questionable for v in values]
    substituted = [v.Substituted for v in values]
    annotated = [v.Annotated for v in values]
    keep: Optional[List[int]] = None
    if last_seen is not None:            # drop exact repeats of a stream's last value (general path's keys)
        keep = []
        get = last_seen.get
        for i, key in enumerate(zip(ts, value, repeat(None), repeat(None), good, questionable, substituted, annotated)):
            w = webid[i]
            if get(w) == key:
                continue
            last_seen[w] = key
            keep.append(i)
        if len(keep) == n:
            keep = None
    uom = [v.UnitsAbbreviation or su for v, su in zip(values, s_uom)]
    nulls_str, nulls_int, nulls_bool = pa.nulls(n, pa.string()), pa.nulls(n, pa.int32()), pa.nulls(n, pa.bool_())
    batch = pa.RecordBatch.from_arrays(
        [pa.array(webid, pa.string()), pa.array(name, pa.string()), pa.array(path, pa.string()),
         pa.array(ts, pa.int64()), pa.array(value, pa.float64()), nulls_str, nulls_int, nulls_bool,
         pa.array(good, pa.bool_()), pa.array(questionable, pa.bool_()), pa.array(substituted, pa.bool_()),
         pa.array(annotated, pa.bool_()), pa.array([u if isinstance(u, str) else None for u in uom], pa.string()),
         nulls_str, pa.repeat(pa.scalar(source, pa.string()), n), pa.repeat(pa.scalar(received, pa.int64()), n)],
        schema=BUFFER_SCHEMA)
    dropped = 0
    if keep is not None:
        dropped = n - len(keep)
        batch = batch.take(pa.array(keep, pa.int64()))
    return batch, dropped


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
