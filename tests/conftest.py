"""Shared fixtures: one local Spark session with Delta for the whole run, simulators that stop."""
from __future__ import annotations

import os
import sys
import tempfile
import time

import pytest

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
# Nothing may depend on a time zone: the whole suite runs with this process (and so Spark's JVM
# and workers) in one zone and the Spark session in a third, neither UTC.
# PI_STREAM_TEST_TZ / PI_STREAM_TEST_SESSION_TZ change them (e.g. to UTC).
os.environ["TZ"] = os.environ.get("PI_STREAM_TEST_TZ", "Asia/Kolkata")
time.tzset()
SESSION_TZ = os.environ.get("PI_STREAM_TEST_SESSION_TZ", "America/Los_Angeles")
# every process of the run (this one, Spark's Python workers) logs pi_stream_source to one file,
# so tests can search the log for secrets (set before Spark starts: workers inherit it)
if not os.environ.get("PI_STREAM_LOG_FILE"):
    os.environ["PI_STREAM_LOG_FILE"] = os.path.join(tempfile.mkdtemp(prefix="pi-stream-log-"), "pi_stream_source.log")
    os.environ.setdefault("PI_STREAM_LOG_LEVEL", "DEBUG")    # the secret scans read everything


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from pi_stream_source import register
    from pi_stream_source.local_spark import get_spark

    warehouse = tmp_path_factory.mktemp("warehouse")
    session = get_spark("pi_stream_source-tests", warehouse=str(warehouse))
    session.conf.set("spark.sql.session.timeZone", SESSION_TZ)
    register(session)
    yield session
    for q in session.streams.active:
        q.stop()
    session.stop()


@pytest.fixture(params=["America/New_York", "Asia/Kolkata", "Europe/Berlin"])
def session_zone(spark, request):
    """The Spark session in a zone other than the process's (UTC or TZ), reset afterwards."""
    before = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", request.param)
    yield request.param
    spark.conf.set("spark.sql.session.timeZone", before)


@pytest.fixture
def simulator():
    """Factory: ``simulator(tags=…, rate=…)`` starts a PISimulator that is stopped after the test."""
    from pi_stream_source.simulator import PISimulator

    started = []

    def make(**kwargs):
        sim = PISimulator(**kwargs)
        sim.start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture(scope="session")
def pi_log_file():
    """The log file every process of this test run writes pi_stream_source's log to."""
    return os.environ["PI_STREAM_LOG_FILE"]
