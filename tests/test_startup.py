"""A first start that cannot reach PI Web API fails within seconds naming option 'url' and the
cause; a base path where PI Web API is not says so (instead of blaming valid WebIDs); the retry
windows are options; ``spark.read`` says the source is streaming-only; misspelled options get a
suggestion; the per-batch progress line tolerates missing metrics."""
from __future__ import annotations

import re
import socket
import time

import pytest

from pi_stream_source.errors import PIOptionError
from pi_stream_source.options import parse_options


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _failure(spark, tmp_path, url: str, webids: str, **options: str) -> tuple:
    """Start a stream, wait for it to end; (seconds from start() to the end, its error's text)."""
    df = spark.readStream.format("pi_websocket").option("url", url).option("webIds", webids).options(**options).load()
    started = time.monotonic()
    query = df.writeStream.format("memory").queryName(f"q{int(started * 1000)}") \
        .option("checkpointLocation", str(tmp_path / "ck")).start()
    try:
        query.awaitTermination(150)
    except Exception:     # awaitTermination raises the query's failure; query.exception() has it too
        pass
    took = time.monotonic() - started
    if query.isActive:
        query.stop()
        pytest.fail(f"the query was still running after {took:.0f} s")
    text = str(query.exception())
    ours = re.findall(r"(PI\w*Error: .*)", text)          # the source's error in the Python traceback
    return took, ours[-1] if ours else text


def test_unreachable_url_fails_fast_naming_url_and_cause(spark, tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/piwebapi"
    took, line = _failure(spark, tmp_path, url, "F1DPAAAA", startupTimeout="3s")
    assert "option 'url'" in line and url in line and "connection refused" in line and "startupTimeout" in line, line
    assert took < 30, f"{took:.1f} s"


def test_wrong_base_path_says_there_is_no_pi_web_api_there(spark, simulator, tmp_path):
    sim = simulator(tags=2, rate=1, seed=2)
    wrong = sim.url.rsplit("/", 1)[0] + "/wrong"
    took, line = _failure(spark, tmp_path, wrong, sim.tags[0].webid)
    assert f"no PI Web API at option 'url' {wrong}" in line and "HTTP 404" in line, line
    assert sim.tags[0].webid not in line                   # a valid WebID is not blamed


def test_retry_windows_are_options():
    opts = parse_options({"url": "http://pi/piwebapi", "webIds": "F1DPA", "startupTimeout": "3s",
                          "restRetryTimeout": "5m"})
    assert (opts.startup_timeout, opts.rest_retry_timeout) == (3.0, 300.0)
    defaults = parse_options({"url": "http://pi/piwebapi", "webIds": "F1DPA"})
    assert (defaults.startup_timeout, defaults.rest_retry_timeout) == (10.0, 120.0)
    with pytest.raises(PIOptionError, match="option 'restRetryTimeout'"):
        parse_options({"url": "http://pi/piwebapi", "webIds": "F1DPA", "restRetryTimeout": "forever"})


@pytest.mark.parametrize("key,suggestion", [("startingPositon", "startingPosition"),
                                            ("tagsperchanel", "tagsPerChannel"), ("webid", "webIds")])
def test_misspelled_option_suggests_the_right_one_in_the_users_spelling(key, suggestion):
    with pytest.raises(PIOptionError) as err:
        parse_options({"url": "http://pi/piwebapi", "webIds": "F1DPA", key: "x"})
    assert str(err.value).startswith(f"unknown option '{key}' (did you mean {suggestion}?)"), str(err.value)


def test_batch_read_says_the_source_is_streaming_only(spark):
    with pytest.raises(Exception) as err:
        spark.read.format("pi_websocket").option("url", "http://pi/piwebapi").option("webIds", "F1DPA").load().collect()
    assert "streaming source" in str(err.value) and "readStream" in str(err.value), str(err.value)[:2000]


def test_progress_line_tolerates_missing_metrics():
    from pi_stream_source.runner import progress_line

    report = '{"totals": {"maxLagSeconds": 0.8, "channelsOpen": 2, "channels": 3, "reconnects": 4, "gapFills": 1}}'
    line = progress_line({"batchId": 7, "numInputRows": 1200, "durationMs": {"triggerExecution": 450},
                          "sources": [{"latestOffset": report}]},
                         {"totals": {"reconnects": 3, "gapFills": 1}})
    assert line == "batch 7: 1,200 rows in 0.5 s, lag 0.8 s, channels 2/3 open, reconnects 4 (+1), gap fills 1"
    assert progress_line({"batchId": 0}) == "batch 0: 0 rows"
    assert progress_line({"batchId": 1, "numInputRows": 3, "sources": [{"latestOffset": None}]}) == "batch 1: 3 rows"
