import pytest

from pi_stream_source.pitime import format_ts, parse_duration, parse_pi_time, parse_ts

NOW = parse_ts("2024-03-31T10:20:30.5Z")


@pytest.mark.parametrize("text,expected", [
    ("2014-07-22T14:00:00Z", 1406037600000000),
    ("2014-07-22T14:00:00.1234567Z", 1406037600123456),     # .NET 7-digit fraction, truncated
    ("2014-07-22T16:00:00+02:00", 1406037600000000),
    ("2014-07-22T14:00:00.5", 1406037600500000),
])
def test_parse_ts(text, expected):
    assert parse_ts(text) == expected


@pytest.mark.parametrize("bad", ["2014-07-22", "2014-13-22T14:00:00Z", "2014-07-22T14:00:00Q", "yesterday", "2014-07-22T14:00:00."])
def test_parse_ts_rejects(bad):
    with pytest.raises(ValueError):
        parse_ts(bad)


def test_format_round_trip():
    for micros in (0, 1406037600123456, 1406037600000000, 1406037600500000):
        assert parse_ts(format_ts(micros)) == micros
    assert format_ts(1406037600500000) == "2014-07-22T14:00:00.5Z"


@pytest.mark.parametrize("text,expected", [
    ("*", "2024-03-31T10:20:30.5Z"),
    ("", "2024-03-31T10:20:30.5Z"),
    ("*-2h", "2024-03-31T08:20:30.5Z"),
    ("-30m", "2024-03-31T09:50:30.5Z"),
    ("*-1d+2h", "2024-03-30T12:20:30.5Z"),
    ("T", "2024-03-31T00:00:00Z"),
    ("Today+8h", "2024-03-31T08:00:00Z"),
    ("y", "2024-03-30T00:00:00Z"),
    ("*-1mo", "2024-02-29T10:20:30.5Z"),
    ("2024-01-01", "2024-01-01T00:00:00Z"),
    ("2024-01-01T06:00:00Z", "2024-01-01T06:00:00Z"),
])
def test_pi_time_strings(text, expected):
    assert format_ts(parse_pi_time(text, NOW)) == expected


@pytest.mark.parametrize("bad", ["*-2x", "soon", "*--1h", "2024-99-01"])
def test_pi_time_rejects(bad):
    with pytest.raises(ValueError):
        parse_pi_time(bad, NOW)


def test_durations():
    assert parse_duration("30s") == 30_000_000
    assert parse_duration("2h") == 7_200_000_000
    assert parse_duration("1.5") == 1_500_000
    with pytest.raises(ValueError):
        parse_duration("5 parsecs")
