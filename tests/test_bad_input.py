"""Bad input, property-based (hypothesis): the channel message parser, the options, PI time strings
and durations, and WebIDs. Arbitrary and mutated-real input never raises anything but the
documented error; a message with bad items still yields every good item; every reject is counted.

Each ``@example`` below is a bug these properties found (kept as a regression case)."""
from __future__ import annotations

import copy
import math
import pickle
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pi_stream_source import webid
from pi_stream_source.errors import PIOptionError
from pi_stream_source.options import OPTIONS, parse_options
from pi_stream_source.parse import Columns, ParseStats, parse_message, parse_streams
from pi_stream_source.pitime import (MAX_MICROS, MICROS, MIN_MICROS, format_ts, parse_duration, parse_pi_time,
                                     parse_ticks, parse_ts)
from pi_stream_source.source import to_contract

SAMPLES = Path(__file__).resolve().parent / "data" / "pi_samples"
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SOME = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---- real payloads to mutate ----------------------------------------------------------------------


def _samples():
    """Whole channel messages built from the published samples (tests/data/pi_samples)."""
    load = lambda n: orjson.loads((SAMPLES / n).read_bytes())   # noqa: E731
    topic = load("channel_message__docs_channels_topic.json")
    adhoc = load("channel_streamset_getchanneladhoc_item__docs_reference_excerpt.json")
    item = load("channel_stream_getchannel_item__docs_reference_excerpt.json")
    updates = load("stream_updates_retrieve_item__docs_reference_excerpt.json")
    value_err = load("value_level_errors_pi_point_not_found__docs_error_handling_via_piwebasync.json")
    return [
        topic,
        {"Links": {}, "Items": [adhoc, item]},
        {"Links": {}, "Items": [updates]},
        {"Items": [{"WebId": "F1DPw", "Name": "W", "Items": [value_err, item["Items"][0]]}]},
        item,                                                  # a single-stream message
        {"Links": {}, "Items": []},                            # heartbeat
        load("error_response_webexception__docs_error_handling.json"),
        load("error_response_errors_array__docs_error_handling.json"),
    ]


SAMPLE_DOCS = _samples()
RAW_SAMPLES = [p.read_bytes() for p in sorted(SAMPLES.iterdir()) if p.suffix in (".json", ".txt")]

PI_KEYS = ["WebId", "Name", "Path", "Items", "Value", "Timestamp", "Good", "Questionable", "Substituted",
           "Annotated", "UnitsAbbreviation", "Errors", "WebException", "IsSystem", "Links", "Message",
           "FieldName", "Exception", "StatusCode"]
scalars = (st.none() | st.booleans() | st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
           | st.sampled_from(["NaN", "INF", "true", "False", "2024-01-01T00:00:00Z", "2024-02-30T00:00:00Z",
                              "", " ", "F1DPabc"]))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.sampled_from(PI_KEYS) | st.text(max_size=8), inner, max_size=6), max_leaves=25)


def _paths(doc, prefix=()):
    """Every (container path, key) of a JSON document, to mutate one spot."""
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append(prefix + (k,))
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.append(prefix + (i,))
            out += _paths(v, prefix + (i,))
    return out


@st.composite
def mutated_samples(draw):
    """A real sample with a few spots replaced by arbitrary JSON, deleted or duplicated."""
    doc = copy.deepcopy(draw(st.sampled_from(SAMPLE_DOCS)))
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "delete", "duplicate"]))
        if action == "replace":
            parent[path[-1]] = draw(json_values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, list):
            parent.append(copy.deepcopy(parent[path[-1]]))
    return orjson.dumps(doc)


@st.composite
def mutated_bytes(draw):
    """A real sample file with bytes flipped, cut, or inserted."""
    data = bytearray(draw(st.sampled_from(RAW_SAMPLES)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip":
            data[i] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[i:i + draw(st.integers(1, 20))]
        else:
            data[i:i] = draw(st.binary(min_size=1, max_size=8) | st.sampled_from([b"{", b"}", b"[", b",", b'"', b"null"]))
    return bytes(data)


def parse_checked(payload, **kw):
    """Parse one message; assert the invariants every message must keep, whatever it holds."""
    cols, stats = Columns(), ParseStats()
    parse_message(payload, cols, stats, "live", 1_700_000_000_000_000, **kw)   # never raises
    batch = cols.to_arrow()                                                      # rows always fit the schema
    to_contract(batch, 1_700_000_000_000_000)                                    # … and the contract
    assert stats.messages == 1
    assert batch.num_rows == stats.values == len(cols)
    assert all(isinstance(w, str) for w in cols.tag_webid)
    with_error = sum(e is not None for e in cols.error)
    assert with_error <= stats.value_errors                     # every row with an error is counted
    if stats.malformed_frames or stats.value_errors or stats.unknown_webids:
        assert stats.last_error                                 # … and the last one is visible
    data = payload.encode() if isinstance(payload, str) else payload
    if data.strip():
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            assert stats.malformed_frames == 1 and batch.num_rows == 0
        else:
            if not isinstance(doc, dict):
                assert stats.malformed_frames == 1
    else:
        assert stats.heartbeats == 1
    return cols, stats


# ---- the message parser ------------------------------------------------------------------------


@FAST
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data):
    parse_checked(data)


@FAST
@given(json_values)
@example({"Items": [{"WebId": 5, "Items": [{"Timestamp": "2024-01-01T00:00:00Z", "Value": 1}]}]})
@example({"Items": [{"WebId": ["x"], "Value": {"Timestamp": "2024-01-01T00:00:00Z", "Value": 1}}]})
@example({"Items": [{"WebId": "W", "Name": 7, "Path": [], "Value": {"Timestamp": "2024-01-01T00:00:00Z"}}]})
@example({"Items": [{"WebId": "W", "Items": [{"Timestamp": "0844-07-22T14:00:00Z", "Value": 2.3}]}]})  # atheris
@example({"WebException": "boom"})
@example({"WebException": ["x"], "Items": []})
@example({"Items": [{"WebId": "W", "Items": [{"Timestamp": "2024-01-01T00:00:00Z",
                                               "Value": {"Name": "Big", "Value": 2 ** 40}}]}]})
@example({"Items": [{"WebId": "W", "Items": [{"Timestamp": "2024-01-01T00:00:00Z", "Value": 1,
                                               "UnitsAbbreviation": 5, "Errors": {"Message": 3}}]}]})
def test_arbitrary_json_never_raises(doc):
    parse_checked(orjson.dumps(doc))
    known = {"W": ("n", "p")}
    parse_checked(orjson.dumps(doc), known=known, last_seen={})


@FAST
@given(mutated_samples())
@example(b'{"Items":[{"WebId":"F1DPw","Items":[{"Timestamp":"2014-07-22T14:00:00Z","Value":1,"Errors":{"WebId":null}}]}]}')
def test_mutated_real_payloads_never_raise(data):
    parse_checked(data, known={"F1DPw": (None, None)}, last_seen={})


@FAST
@given(mutated_bytes())
def test_byte_mutated_real_payloads_never_raise(data):
    parse_checked(data)
    parse_checked(data.decode("utf-8", "replace"))


timestamps = st.integers(MIN_MICROS, MAX_MICROS)             # years 1 … 9999
good_values = st.fixed_dictionaries({
    "Timestamp": timestamps.map(format_ts),
    "Value": st.floats(allow_nan=False, allow_infinity=False, width=64) | st.integers(-2 ** 53, 2 ** 53),
    "Good": st.booleans(), "Questionable": st.sampled_from([False, "false", "False"]),
    "Substituted": st.booleans(), "Annotated": st.booleans()})
bad_values = st.one_of(
    scalars | st.lists(scalars, max_size=3),                                        # not an object
    good_values.flatmap(lambda g: st.sampled_from([
        {**g, "Timestamp": "yesterday-ish"}, {**g, "Timestamp": 20240101}, {k: v for k, v in g.items() if k != "Timestamp"},
        {**g, "Good": "maybe"}, {**g, "Questionable": 1}, {**g, "Value": {"Name": "On", "Value": "x"}},
        {**g, "Value": {"Name": "Big", "Value": 2 ** 40}}, {**g, "Value": [1, 2]},
        {**g, "Errors": [{"FieldName": "Value", "Message": ["PI Point not found."]}]},
        {**g, "Timestamp": "2024-02-30T00:00:00Z"}])))


@FAST
@given(st.lists(st.tuples(st.booleans(), good_values, bad_values), min_size=1, max_size=12),
       st.integers(0, 3), st.sampled_from(["items", "value"]))
def test_bad_items_never_cost_a_good_one(entries, bad_streams, shape):
    """Streams mixing good and bad values (and some stream entries that are not objects): every good
    value lands as a row with no error; every bad one is a row with its error, or counted."""
    streams, good, bad = [], [], 0
    for i, (is_good, g, b) in enumerate(entries):
        item = g if is_good else b
        wid = f"W{i % 3}"
        if shape == "items":
            streams.append({"WebId": wid, "Name": f"T{i % 3}", "Items": [item]})
        else:
            streams.append({"WebId": wid, "Name": f"T{i % 3}", "Value": item})
        if is_good:
            good.append((wid, parse_ticks(g["Timestamp"]), float(g["Value"])))     # rows hold PI's ticks
        else:
            bad += 1
    for j in range(bad_streams):
        streams.insert(j * 2 % (len(streams) + 1), [f"not a stream {j}"])
    cols, stats = parse_checked(orjson.dumps({"Links": {}, "Items": streams}))
    rows_ok = [(w, t, v) for w, t, v, e in zip(cols.tag_webid, cols.timestamp, cols.value, cols.error) if e is None]
    assert sorted(rows_ok) == sorted(good)
    assert sum(e is not None for e in cols.error) == bad
    assert stats.value_errors == bad + bad_streams
    assert stats.values == len(good) + bad


def test_stats_counters_all_reach_the_metrics():
    """Every reject counter of ParseStats is reported in the reader's per-channel metrics (and so in
    ``lastProgress``), with the last error text."""
    from pi_stream_source.channel import ChannelReceiver, ShardBuffer
    from pi_stream_source.rest import PIRestClient

    opts = parse_options({"url": "http://127.0.0.1:9/piwebapi", "webIds": "W"})
    rec = ChannelReceiver(0, ["W"], opts, ShardBuffer(), PIRestClient(opts.url, opts.credentials))
    parse_message(b"{not json", Columns(), rec.stats, "live", 1, rec.known)
    parse_message(orjson.dumps({"Items": [{"WebId": "X", "Items": [{"Timestamp": "bad"}]}, 7]}),
                  Columns(), rec.stats, "live", 1, rec.known)
    m = rec.metrics()
    assert (m["malformedFrames"], m["valueErrors"], m["unknownWebIds"]) == (1, 2, 1)
    assert m["lastError"] and "not an object" in m["lastError"]


def test_recorded_pages_with_bad_items_are_parsed_not_raised():
    """The archive path (``streamsets/recorded`` pages) goes through ``parse_streams`` too."""
    cols, stats = Columns(), ParseStats()
    parse_streams([{"WebId": "W", "Items": [{"Timestamp": "2024-01-01T00:00:00Z", "Value": 1}, "junk", None]},
                   None, {"WebId": None, "Items": 3}], cols, stats, "backfill", 1, {"W": ("n", "p")})
    assert cols.value[0] == 1.0 and cols.error[0] is None
    assert stats.value_errors == 4 and len(cols) == 4
    cols.to_arrow()


# ---- options --------------------------------------------------------------------------------------

SECRET = "Zq9-SeCrEt-xyzzy"
option_values = st.text(max_size=25) | st.sampled_from(
    ["", " ", "0", "-1", "1e9", "9" * 400, "30s", "*-2h", "latest", "basic", "bearer", "http://[::1",
     "https://h:99999/piwebapi", "https://h:x/piwebapi", "\x00", "true", "nan", "inf"])
#: url values; only the url may carry the secret (other options echo their own bad value, by design)
url_values = option_values | st.sampled_from(
    ["ftp://u:" + SECRET + "@h/p", "http://u:" + SECRET + "@[::1", "u:" + SECRET + "@h/piwebapi",
     "https://u:" + SECRET + "@h:x/p", "https://:" + SECRET + "@h/piwebapi"])
plain_options = sorted(set(OPTIONS) - {"url", "password", "token", "secretScope", "usernameKey", "passwordKey", "tokenKey"})


@FAST
@given(st.dictionaries(st.sampled_from(plain_options), option_values, max_size=8)
       .flatmap(lambda d: st.one_of(st.just(d), url_values.map(lambda u: {**d, "url": u}))),
       st.booleans())
@example({"url": "http://[::1"}, True)
@example({"url": "ftp://u:" + SECRET + "@h/p"}, False)
@example({"url": "https://h:x/piwebapi"}, True)
@example({"stallTimeout": "9" * 400}, True)
@example({"startingPosition": "*-" + "9" * 400 + "s"}, True)
@example({"startingPosition": "*+9999999999d+1mo"}, True)
def test_options_parse_or_name_the_option(raw, with_base):
    raw = dict(raw)
    if with_base:
        raw = {"url": "https://pi.example.com/piwebapi", "webIds": "A", **raw}
    raw.update(password=SECRET, token=SECRET)
    try:
        opts = parse_options(raw)
    except PIOptionError as exc:
        text = str(exc)
        assert "option" in text or "authType" in text
        assert SECRET not in text and SECRET.lower() not in text.lower()
        return
    assert SECRET not in repr(opts) and SECRET not in str(opts)
    assert SECRET not in repr(opts.credentials) and SECRET not in repr(pickle.loads(pickle.dumps(opts)))
    assert opts.url.startswith(("http://", "https://")) and opts.ws_url.startswith(("ws://", "wss://"))


@FAST
@given(st.text(max_size=20).filter(lambda k: k.lower() not in {o.lower() for o in OPTIONS} | {"path"}))
def test_unknown_option_named(key):
    with pytest.raises(PIOptionError) as info:
        parse_options({"url": "https://h/piwebapi", "webIds": "A", key: SECRET})
    assert repr(key)[1:-1] in str(info.value) or key in str(info.value)
    assert SECRET not in str(info.value)


# ---- PI time -------------------------------------------------------------------------------------

NOW = parse_ts("2024-03-31T10:20:30.5Z")
all_micros = st.integers(parse_ts("0001-01-01T00:00:00Z"), parse_ts("9999-12-31T23:59:59.999999Z"))


@FAST
@given(all_micros)
@example(parse_ts("0005-01-01T00:00:00Z"))
def test_iso_round_trip(m):
    text = format_ts(m)
    assert parse_ts(text) == m
    assert parse_pi_time(text, NOW) == m


@FAST
@given(st.integers(0, 4_102_444_800 * MICROS), st.integers(0, 10_000), st.sampled_from(
    [("s", 1), ("m", 60), ("h", 3600), ("d", 86400), ("w", 604800), ("sec", 1), ("min", 60), ("hours", 3600), ("days", 86400)]),
    st.sampled_from(["*", "", "now", "NOW"]), st.sampled_from(["+", "-"]))
def test_relative_times(now, qty, unit, base, sign):
    text = f"{base}{sign}{qty}{unit[0]}"
    delta = qty * unit[1] * MICROS * (1 if sign == "+" else -1)
    assert parse_pi_time(text, now) == now + delta
    midnight = now - now % (86400 * MICROS)
    assert parse_pi_time(f"t{sign}{qty}{unit[0]}", now) == midnight + delta
    assert parse_pi_time(f"Yesterday{sign}{qty}{unit[0]}", now) == midnight - 86400 * MICROS + delta
    if qty * unit[1] <= 100 * 365 * 86400:
        assert parse_duration(f"{qty}{unit[0]}") == qty * unit[1] * MICROS


@FAST
@given(st.text(max_size=30) | st.from_regex(r"\A[*tTyY]?([+-]\d{1,30}(\.\d+)?[a-z]{1,6}){1,3}\Z")
       | st.from_regex(r"\A\d{4}-\d\d-\d\d([T ]\d\d:\d\d:\d\d(\.\d{1,9})?([Zz]|[+-]\d\d:\d\d)?)?\Z"))
@example("*-" + "9" * 400 + "s")
@example("*+9999999999d+1mo")
@example("*+300000y")
@example("9999-12-31T23:59:59Z+1d")
def test_pi_time_strings_only_value_error(text):
    try:
        got = parse_pi_time(text, NOW)
    except ValueError:
        return
    assert parse_ts("0001-01-01T00:00:00Z") <= got <= parse_ts("9999-12-31T23:59:59.999999Z")
    format_ts(got)


@FAST
@given(st.text(max_size=30) | st.from_regex(r"\A\d{1,30}(\.\d{1,5})?\s*[a-z]{0,7}\Z"))
@example("9" * 400)
@example("1e400")
def test_durations_only_value_error(text):
    try:
        got = parse_duration(text)
    except ValueError:
        return
    assert isinstance(got, int) and 0 <= got


@FAST
@given(st.text(max_size=40))
def test_parse_ts_only_value_error(text):
    try:
        parse_ts(text)
    except ValueError:
        pass


# ---- WebIDs --------------------------------------------------------------------------------------

guids = st.uuids()
names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).filter(lambda s: s.upper() != "")


@FAST
@given(guids, st.integers(-(2 ** 31), 2 ** 31 - 1), names)
def test_webid_round_trips(guid, point_id, name):
    path = "\\\\SRV\\" + name
    info = webid.decode(webid.full_point(guid, point_id, path))
    assert (info.type, info.marker, info.server_guid, info.point_id, info.path) == \
        ("Full", "DP", guid, point_id, "\\\\" + ("SRV\\" + name).upper())
    info = webid.decode(webid.id_only_point(guid, point_id))
    assert (info.type, info.server_guid, info.point_id, info.path) == ("IDOnly", guid, point_id, None)
    assert webid.decode(webid.path_only(path)).path == "\\\\" + ("SRV\\" + name).upper()
    info = webid.decode(webid.full_dataserver(guid, name))
    assert (info.marker, info.server_guid, info.path) == ("DS", guid, "\\\\" + name.upper())
    for make in (webid.full_element, webid.full_database):
        assert webid.decode(make(guid, uuid.UUID(int=point_id % 2 ** 32), path)).type == "Full"


@FAST
@given(st.text(max_size=60) | st.from_regex(r"\A[FIPLD]1(DP|DS|Em|Ab)[A-Za-z0-9_\-=+/]{0,60}\Z"))
@example("F1DP" + "A" * 23)
@example("P1DP\u00e9")
def test_webid_decode_only_value_error(text):
    try:
        info = webid.decode(text)
    except ValueError as exc:
        assert "WebID" in str(exc)
        return
    assert info.version == "2.0" and info.type in ("Full", "IDOnly", "PathOnly", "LocalIDOnly", "DefaultIDOnly")


def test_nan_string_value_is_kept():
    cols, _ = parse_checked(orjson.dumps({"Items": [{"WebId": "W", "Value": {"Timestamp": "2024-01-01T00:00:00Z", "Value": "NaN"}}]}))
    assert math.isnan(cols.value[0])


# ---- the archive path: streamsets/recorded pages with junk -----------------------------------------


class _Recorded(BaseHTTPRequestHandler):
    """A PI Web API stand-in on 127.0.0.1 whose ``streamsets/recorded`` pages hold junk: entries that
    are not objects, values with bad timestamps, a full page whose last value has no timestamp."""
    calls: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        query = parse_qs(urlsplit(self.path).query)
        type(self).calls.append(query.get("startTime", [""])[0])
        good = lambda s: {"Timestamp": f"2024-01-01T00:00:0{s}Z", "Value": float(s)}   # noqa: E731
        if len(type(self).calls) == 1:
            items = [{"WebId": "W", "Items": [good(1), "junk", good(2), {"Timestamp": "nope", "Value": 9}]},
                     7, {"WebId": ["odd"], "Items": {"x": 1}}, {"WebId": "V", "Items": [good(1), {"Value": 3}, None]}]
        else:                                                   # W asked again from its last timestamp
            items = [{"WebId": "W", "Items": [good(2), good(3)]}]
        body = orjson.dumps({"Items": items})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_recorded_pages_with_junk_page_on_and_count_rejects():
    from pi_stream_source.auth import Credentials
    from pi_stream_source.rest import PIRestClient

    _Recorded.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorded)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = PIRestClient(f"http://127.0.0.1:{server.server_address[1]}/piwebapi", Credentials(), timeout=5, retry_for=0)
        cols, stats = Columns(), ParseStats()
        for page in client.recorded(["W", "V"], 0, parse_ticks("2024-01-02T00:00:00Z"), page_size=4):
            parse_streams(page, cols, stats, "backfill", 1, {"W": ("w", None), "V": ("v", None)})
        client.close()
    finally:
        server.shutdown()
        server.server_close()
    assert len(_Recorded.calls) == 2 and _Recorded.calls[1] == "2024-01-01T00:00:02Z"   # W paged on from its last good value
    good = sorted((w, t, v) for w, t, v, e in zip(cols.tag_webid, cols.timestamp, cols.value, cols.error) if e is None)
    assert good == [("V", parse_ticks("2024-01-01T00:00:01Z"), 1.0), ("W", parse_ticks("2024-01-01T00:00:01Z"), 1.0),
                    ("W", parse_ticks("2024-01-01T00:00:02Z"), 2.0), ("W", parse_ticks("2024-01-01T00:00:03Z"), 3.0)]
    # junk: "junk", bad Timestamp, entry 7, odd WebId's value, {"Value": 3}, None
    assert stats.value_errors == 6 and stats.unknown_webids == 1 and cols.to_arrow().num_rows == 9
