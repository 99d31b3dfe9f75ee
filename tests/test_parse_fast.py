"""The fast path (msgspec's typed decoding) must give exactly the general parser's rows, or decline.

``fast_batch`` takes plain numeric channel messages; anything else is left to ``parse_message``.
Here both run on the same messages (generated, and the published samples) with their own repeat
state, and wherever the fast path answers, its rows and dropped repeats equal the general path's."""
from __future__ import annotations

from pathlib import Path

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from pi_stream_source.parse import Columns, ParseStats, fast_batch, parse_message
from pi_stream_source.pitime import format_ts

SAMPLES = Path(__file__).resolve().parent / "data" / "pi_samples"
KNOWN = {f"F1DPw{i:03d}": (f"Tag{i}", f"\\\\SRV\\Tag{i}") for i in range(6)}
BASE = 1_795_850_000_000_000


def general(data, last_seen):
    cols, stats = Columns(), ParseStats()
    parse_message(data, cols, stats, "live", 99, KNOWN, last_seen)
    return (cols.to_arrow() if len(cols) else None), stats


flag = st.one_of(st.none(), st.booleans(), st.sampled_from(["true", "False", "yes"]))
value = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-2**63, 2**63 - 1), st.none(),
                  st.booleans(), st.sampled_from(["NaN", "Shutdown", ""]),
                  st.fixed_dictionaries({"Name": st.text(max_size=5), "Value": st.integers(0, 300)}))
item = st.fixed_dictionaries(
    {"Timestamp": st.one_of(st.integers(0, 30).map(lambda k: format_ts(BASE + k * 500_000)),
                            st.sampled_from(["not a time", "2026-13-01T00:00:00Z"]), st.none())},
    optional={"Value": value, "Good": flag, "Questionable": flag, "Substituted": flag, "Annotated": flag,
              "UnitsAbbreviation": st.sampled_from(["", "degC", None]), "Errors": st.just([{"Message": ["x"]}])})
stream = st.fixed_dictionaries(
    {"WebId": st.one_of(st.sampled_from(sorted(KNOWN)), st.just("F1DPunknown")),
     "Items": st.lists(item, max_size=3)},
    optional={"Name": st.one_of(st.none(), st.text(max_size=4)), "Path": st.none(),
              "UnitsAbbreviation": st.sampled_from(["m", ""]), "Links": st.just({})})
message = st.fixed_dictionaries({"Items": st.lists(stream, max_size=5)}, optional={"Links": st.just({})})


@settings(max_examples=400, deadline=None)
@given(st.lists(message, min_size=1, max_size=4))
def test_fast_path_equals_the_general_path_or_declines(messages):
    seen_fast, seen_general = {}, {}
    for msg in messages:
        data = orjson.dumps(msg)
        want, stats = general(data, seen_general)
        got = fast_batch(data, "live", 99, KNOWN, seen_fast)
        if got is None:
            # declined: the general path's repeat state is the truth from here on
            seen_fast = dict(seen_general)
            continue
        batch, dropped = got
        assert dropped == stats.repeats_dropped
        assert stats.value_errors == 0 and stats.malformed_frames == 0 and stats.unknown_webids == 0
        if want is None:
            assert batch.num_rows == 0
        else:
            assert batch.equals(want), (batch.to_pylist()[:2], want.to_pylist()[:2])


def test_plain_numeric_message_takes_the_fast_path():
    msg = {"Links": {}, "Items": [{"WebId": w, "Name": None, "Links": {}, "UnitsAbbreviation": "m",
                                   "Items": [{"Timestamp": format_ts(BASE + k), "Value": k * 1.5, "Good": True,
                                              "Questionable": False, "Substituted": False, "Annotated": False}
                                             for k in (1, 2)]} for w in KNOWN]}
    got = fast_batch(orjson.dumps(msg), "live", 99, KNOWN, {})
    assert got is not None
    batch, dropped = got
    want, _ = general(orjson.dumps(msg), {})
    assert dropped == 0 and batch.num_rows == 12 and batch.equals(want)
    assert batch.column(1).to_pylist()[0] == "Tag0"                    # name from the subscription


def test_published_samples_are_parsed_the_same_or_declined():
    for path in sorted(SAMPLES.glob("*.json")):
        data = path.read_bytes()
        known = dict(KNOWN)
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        for s in (doc.get("Items") or []) if isinstance(doc, dict) else []:
            if isinstance(s, dict) and isinstance(s.get("WebId"), str):
                known[s["WebId"]] = (None, None)
        cols, stats = Columns(), ParseStats()
        parse_message(data, cols, stats, "live", 99, known, {})
        got = fast_batch(data, "live", 99, known, {})
        if got is not None:
            assert got[0].equals(cols.to_arrow()), path.name


def test_invalid_utf8_inside_a_string_is_declined_not_raised():
    # found by bench/fuzz_parse.py: msgspec raised UnicodeDecodeError, which would end the channel thread
    data = (b'{"Links":{},"Items":[{"WebId":"F\x9emp","Items":[{"Timestamp":"2024-05-01T12:00:00Z","Value":1.5}]}]}')
    assert fast_batch(data, "live", 99, KNOWN, {}) is None
    want, stats = general(data, {})
    assert stats.malformed_frames + stats.values >= 1          # the general path still accounts for it
