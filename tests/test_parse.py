"""The message parser against the published PI Web API samples and odd values."""
import math
from pathlib import Path

import orjson
import pytest

from pi_stream_source.parse import Columns, ParseStats, parse_message, parse_streams
from pi_stream_source.schema import BUFFER_SCHEMA

SAMPLES = Path(__file__).resolve().parent / "data" / "pi_samples"   # copied from shared/pi-web-api/samples (see SOURCES.md)


def parse(payload, **kw):
    cols, stats = Columns(), ParseStats()
    parse_message(payload, cols, stats, "live", 123, **kw)
    return cols, stats


def test_channels_topic_sample_with_string_flags():
    cols, stats = parse((SAMPLES / "channel_message__docs_channels_topic.json").read_bytes())
    assert stats.values == 2 and stats.value_errors == 0
    assert cols.value == [2.3, 2.5]
    assert cols.good == [True, True] and cols.questionable == [False, False] and cols.substituted == [False, False]
    assert cols.uom == ["m", "m"]                      # stream-level UnitsAbbreviation
    assert cols.tag_name == ["Water", "Water"]
    assert cols.timestamp == [14060376000000000, 14060412000000000]       # ticks (100 ns)


def test_single_value_shape_and_items_shape():
    adhoc = orjson.loads((SAMPLES / "channel_streamset_getchanneladhoc_item__docs_reference_excerpt.json").read_bytes())
    items = orjson.loads((SAMPLES / "channel_stream_getchannel_item__docs_reference_excerpt.json").read_bytes())
    cols, stats = parse(orjson.dumps({"Links": {}, "Items": [adhoc, items]}))
    assert stats.values == 3
    assert cols.value == [12.3, 12.3, 12.3]
    assert cols.tag_path[0] == "\\\\MyAssetServer\\MyDatabase\\MyElement|Water"


def test_exact_repeats_dropped_with_last_seen():
    items = orjson.loads((SAMPLES / "channel_stream_getchannel_item__docs_reference_excerpt.json").read_bytes())
    seen = {}
    cols, stats = parse(orjson.dumps({"Items": [items]}), last_seen=seen)
    assert stats.values == 1 and stats.repeats_dropped == 1
    cols, stats = parse(orjson.dumps({"Items": [items]}), last_seen=seen)   # the server repeats the current value
    assert stats.values == 0 and stats.repeats_dropped == 2


def test_value_level_errors_are_rows_with_error_text():
    value = orjson.loads((SAMPLES / "value_level_errors_pi_point_not_found__docs_error_handling_via_piwebasync.json").read_bytes())
    cols, stats = parse(orjson.dumps({"Items": [{"WebId": "W1", "Items": [value]}]}))
    assert stats.values == 1 and stats.value_errors == 1
    assert cols.value == [None]
    assert "PI Point not found." in cols.error[0]


@pytest.mark.parametrize("name", ["recorded_items_digital_state_Off__piwebasync_docs.invalid-json.txt",
                                  "recorded_items_mixed_number_and_state__piwebasync_docs.invalid-json.txt"])
def test_invalid_json_samples_are_counted_not_crashing(name):
    cols, stats = parse((SAMPLES / name).read_bytes())
    assert stats.malformed_frames == 1 and len(cols) == 0
    assert "malformed frame" in stats.last_error


def test_digital_system_states_and_odd_values():
    values = [
        {"Timestamp": "2024-01-01T00:00:00Z", "Value": {"Name": "Shutdown", "Value": 254, "IsSystem": True}},
        {"Timestamp": "2024-01-01T00:00:01Z", "Value": {"Name": "Off", "Value": 0}},
        {"Timestamp": "2024-01-01T00:00:02Z", "Value": "NaN"},
        {"Timestamp": "2024-01-01T00:00:03Z", "Value": True},
        {"Timestamp": "2024-01-01T00:00:04Z", "Value": 7},
        {"Timestamp": "2024-01-01T00:00:05Z", "Value": [1, 2]},
        {"Timestamp": "not a time", "Value": 1.5},
        {"Timestamp": "2024-01-01T00:00:07Z", "Value": 1.5, "Good": "maybe"},
    ]
    cols, stats = parse(orjson.dumps({"Items": [{"WebId": "W1", "Items": values}]}))
    assert stats.values == 8                       # nothing dropped
    assert (cols.value_string[0], cols.digital_state_code[0], cols.is_system_state[0]) == ("Shutdown", 254, True)
    assert (cols.value_string[1], cols.digital_state_code[1], cols.is_system_state[1]) == ("Off", 0, False)
    assert math.isnan(cols.value[2]) and cols.value_string[2] == "NaN"
    assert (cols.value[3], cols.value_string[3]) == (1.0, "True")
    assert cols.value[4] == 7.0
    assert cols.value[5] is None and "unsupported Value type" in cols.error[5]
    assert cols.timestamp[6] is None and "bad Timestamp" in cols.error[6]
    assert cols.good[7] is None and "Good is not a boolean" in cols.error[7]
    assert stats.value_errors == 3
    batch = cols.to_arrow()
    assert batch.schema == BUFFER_SCHEMA and batch.num_rows == 8


def test_heartbeats_and_error_frames():
    for beat in (b"", b"  ", b'{"Links":{},"Items":[]}', b"{}"):
        cols, stats = parse(beat)
        assert stats.heartbeats == 1 and len(cols) == 0 and stats.malformed_frames == 0
    cols, stats = parse((SAMPLES / "error_response_webexception__docs_error_handling.json").read_bytes())
    assert stats.malformed_frames == 1 and "Error occurred during writing" in stats.last_error
    cols, stats = parse((SAMPLES / "error_response_errors_array__docs_error_handling.json").read_bytes())
    assert stats.malformed_frames == 1 and "SecurityIdentity" in stats.last_error


def test_unknown_webid_is_kept_and_counted():
    cols, stats = ParseStats(), None
    cols = Columns()
    stats = ParseStats()
    parse_streams([{"WebId": "X", "Items": [{"Timestamp": "2024-01-01T00:00:00Z", "Value": 1}]}], cols, stats,
                  "live", 0, known={"Y": ("y", None)})
    assert stats.unknown_webids == 1 and cols.tag_webid == ["X"]
