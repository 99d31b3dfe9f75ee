"""Coverage-guided fuzzing (atheris / libFuzzer) of the channel message parser: bytes → rows.

Every input is parsed as a channel message twice (with the subscribed WebIDs and the repeat filter,
as ``ChannelReceiver`` does), turned into Arrow and into the data contract, and checked:

* nothing but the parser's own counting happens: no exception escapes ``parse_message``,
  ``Columns.to_arrow`` or ``to_contract``;
* every row is counted (``stats.values``) and every row with an ``error`` is in ``value_errors``;
  a reject leaves a ``last_error``; a frame that is not JSON is one malformed frame and no rows;
* the same message again: every value is again either a row or a counted repeat.

A second target mode (first byte odd) parses the input as a ``streamsets/recorded`` page through
``parse_streams`` (the archive path).

Usage (needs the ``fuzz`` extra: ``pip install -e '.[fuzz]'``)::

    python bench/fuzz_parse.py -max_total_time=600 -print_final_stats=1 [CORPUS_DIR]

Without CORPUS_DIR a corpus in ``$TMPDIR/pi_fuzz_corpus`` is seeded from ``tests/data/pi_samples``
and typical simulator messages; a dictionary of PI keys is passed to libFuzzer. A finding is
written by libFuzzer as ``crash-<sha1>``; replay it with ``python bench/fuzz_parse.py crash-…``.
"""
from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402  (imported before instrumenting: only our code is instrumented)
import pyarrow  # noqa: E402,F401
import pyspark.sql.types  # noqa: E402,F401

with atheris.instrument_imports(include=["pi_stream_source"]):
    from pi_stream_source import parse, pitime  # noqa: E402

from pi_stream_source.source import to_contract  # noqa: E402

KNOWN = {"F1DPw": ("Water", "\\\\SRV\\Water"), "W": ("w", None), "I1AbE": (None, None)}
PI_KEYS = ["WebId", "Name", "Path", "Items", "Value", "Timestamp", "Good", "Questionable", "Substituted",
           "Annotated", "UnitsAbbreviation", "Errors", "WebException", "IsSystem", "Links", "Message",
           "FieldName", "StatusCode", "NaN", "INF", "true", "false", "2024-01-01T00:00:00Z",
           "2014-07-22T14:00:00.1234567+02:00"]


def seeds() -> list:
    out = [p.read_bytes() for p in sorted((ROOT / "tests" / "data" / "pi_samples").iterdir())
           if p.suffix in (".json", ".txt")]
    ts = "2024-05-01T12:00:00.1234567Z"
    out += [
        b"", b'{"Links":{},"Items":[]}',
        orjson.dumps({"Links": {}, "Items": [{"WebId": "F1DPw", "Name": "Water", "Path": "\\\\SRV\\Water",
                                                "UnitsAbbreviation": "m", "Items": [
                                                    {"Timestamp": ts, "Value": 1.5, "Good": True, "Questionable": False,
                                                     "Substituted": False, "Annotated": False},
                                                    {"Timestamp": ts, "Value": {"Name": "Shutdown", "Value": 254, "IsSystem": True}},
                                                    {"Timestamp": ts, "Value": "NaN", "Good": "true"}]}]}),
        orjson.dumps({"Items": [{"WebId": "W", "Value": {"Timestamp": ts, "Value": "text", "Good": "false",
                                                         "Errors": [{"FieldName": "Value", "Message": ["bad"]}]}}]}),
        orjson.dumps({"WebException": {"StatusCode": 502, "Errors": ["boom"]}, "Items": [{"WebId": "W", "Items": []}]}),
    ]
    return out




def check_message(data: bytes) -> None:
    cols, stats = parse.Columns(), parse.ParseStats()
    last_seen: dict = {}
    parse.parse_message(data, cols, stats, "live", 1_700_000_000_000_000, KNOWN, last_seen)
    batch = cols.to_arrow()
    to_contract(batch, 1_700_000_000_000_000)
    assert batch.num_rows == stats.values == len(cols), (batch.num_rows, stats)
    assert sum(e is not None for e in cols.error) <= stats.value_errors, stats
    if stats.malformed_frames or stats.value_errors or stats.unknown_webids:
        assert stats.last_error, stats
    if data.strip():
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError:
            assert stats.malformed_frames == 1 and stats.values == 0, stats
    else:
        assert stats.heartbeats == 1
    # the reader's fast path (msgspec) either declines or gives exactly the same rows
    fast = parse.fast_batch(data, "live", 1_700_000_000_000_000, KNOWN, {}) if data.strip() else None
    if fast is not None:
        assert fast[0].equals(batch) and fast[1] == stats.repeats_dropped, "fast path differs"
    # the server repeating the message: only exact repeats are dropped, each one counted
    cols2, stats2 = parse.Columns(), parse.ParseStats()
    parse.parse_message(data, cols2, stats2, "live", 1_700_000_000_000_001, KNOWN, last_seen)
    cols2.to_arrow()
    assert stats2.values + stats2.repeats_dropped == stats.values + stats.repeats_dropped, (stats, stats2)


def check_recorded(data: bytes) -> None:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return
    streams = doc.get("Items", doc) if isinstance(doc, dict) else doc
    cols, stats = parse.Columns(), parse.ParseStats()
    parse.parse_streams(streams, cols, stats, "backfill", 1, KNOWN)
    batch = cols.to_arrow()
    to_contract(batch, 1)
    assert batch.num_rows == stats.values
    assert sum(e is not None for e in cols.error) <= stats.value_errors


def check_times(text: str) -> None:
    for fn in (pitime.parse_ts, pitime.parse_pi_time, pitime.parse_duration):
        try:
            got = fn(text)
        except ValueError:
            continue
        if fn is not pitime.parse_duration:
            assert pitime.MIN_MICROS <= got <= pitime.MAX_MICROS, (text, got)
            assert pitime.parse_ts(pitime.format_ts(got)) == got, (text, got)


def TestOneInput(data: bytes) -> None:   # noqa: N802 (atheris' name)
    if not data:
        check_message(data)
        return
    mode, body = data[0], data[1:]
    if mode % 4 == 1:
        check_recorded(body)
    elif mode % 4 == 3 and len(body) < 64:
        check_times(body.decode("utf-8", "replace"))
    else:
        check_message(data)


def main() -> None:
    # the parser logs every reject (as it should); at fuzzing speed that would be the whole run
    logging.getLogger("pi_stream_source").addHandler(logging.NullHandler())
    logging.getLogger("pi_stream_source").propagate = False
    args = list(sys.argv)
    if not any(not a.startswith("-") for a in args[1:]):          # no corpus dir or crash file given
        corpus = Path(tempfile.gettempdir()) / "pi_fuzz_corpus"
        corpus.mkdir(exist_ok=True)
        for i, seed in enumerate(seeds()):
            (corpus / f"seed-{i:02d}").write_bytes(seed)
            (corpus / f"seed-{i:02d}-rec").write_bytes(b"\x01" + seed)
        for i, t in enumerate(["*-2h", "2024-05-01T12:00:00.1234567+02:00", "30s", "T+8h", "*-1mo"]):
            (corpus / f"seed-time-{i}").write_bytes(b"\x03" + t.encode())
        args.append(str(corpus))
    if not any(a.startswith("-dict=") for a in args):
        dict_file = Path(tempfile.gettempdir()) / "pi_fuzz.dict"
        dict_file.write_text("".join(f'"{k}"\n' for k in PI_KEYS))      # no quotes or backslashes in them
        args.append(f"-dict={dict_file}")
    atheris.Setup(args, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
