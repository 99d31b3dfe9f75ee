"""Local Spark with Delta Lake for the demo, tests, benchmarks and edge mode.

The Delta JVM jars for the installed Spark line (``delta-spark_4.2_2.13`` for pyspark 4.2.x, and
``delta-storage``) are downloaded once from Maven Central (or the mirror set in
``~/.m2/settings.xml``), checked against their ``.sha1``, and cached in
``~/.cache/pi_stream_source/jars`` (``PI_STREAM_JARS_DIR`` overrides), so later runs fetch nothing.
Only the two Delta jars go on the classpath: Spark already has the rest.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional

log = logging.getLogger(__name__)

SCALA = "2.13"
#: Delta versions to try, newest first. 4.4.1 is the Python package's version; Maven Central served
#: only 4.4.0 of the JVM artifacts when this was written, and the two are API-compatible.
DELTA_VERSIONS = ("4.4.1", "4.4.0")
#: Spark lines Delta 4.4 publishes ``delta-spark_<line>_2.13`` for (none yet for Spark 4.3).
DELTA_SPARK_LINES = ("4.0", "4.1", "4.2")
CENTRAL = ("https://repo1.maven.org/maven2", "https://repo.maven.apache.org/maven2")


def spark_line() -> str:
    """The installed pyspark's major.minor, e.g. ``4.2``."""
    import pyspark

    return ".".join(pyspark.__version__.split(".")[:2])


def has_delta(line: Optional[str] = None) -> bool:
    """Whether Delta Lake publishes jars for this Spark line."""
    return (line or spark_line()) in DELTA_SPARK_LINES


def jars_dir() -> Path:
    return Path(os.environ.get("PI_STREAM_JARS_DIR", Path.home() / ".cache" / "pi_stream_source" / "jars"))


def _mirrors() -> List[str]:
    settings = Path.home() / ".m2" / "settings.xml"
    if not settings.is_file():
        return []
    text = settings.read_text(errors="replace")
    return re.findall(r"<mirror>.*?<url>\s*([^<\s]+)\s*</url>.*?</mirror>", text, re.S)


def _fetch(url: str, timeout: float = 120) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


def _download(repo: str, group: str, artifact: str, version: str, dest: Path) -> bool:
    path = f"{group.replace('.', '/')}/{artifact}/{version}/{artifact}-{version}.jar"
    try:
        data = _fetch(f"{repo.rstrip('/')}/{path}")
        expected = _fetch(f"{repo.rstrip('/')}/{path}.sha1").decode().split()[0].strip()
    except (urllib.error.URLError, OSError) as exc:
        log.debug("not at %s: %s (%s)", repo, path, exc)
        return False
    if hashlib.sha1(data).hexdigest() != expected:
        raise RuntimeError(f"checksum mismatch for {path} from {repo}")
    tmp = dest.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(dest)
    return True


def delta_jars(line: Optional[str] = None) -> List[str]:
    """Paths of the Delta jars for Spark ``line`` (default: the installed pyspark's), downloading
    them on first use."""
    line = line or spark_line()
    if not has_delta(line):
        raise RuntimeError(f"Delta Lake {DELTA_VERSIONS[-1]} has no jars for Spark {line} (it has them for Spark "
                           f"{', '.join(DELTA_SPARK_LINES)}): use one of those, or get_spark(delta=False) and "
                           "another sink such as Parquet")
    directory = jars_dir()
    directory.mkdir(parents=True, exist_ok=True)
    for version in DELTA_VERSIONS:
        wanted = [("io.delta", f"delta-spark_{line}_{SCALA}", version), ("io.delta", "delta-storage", version)]
        paths = [directory / f"{a}-{v}.jar" for _, a, v in wanted]
        if all(p.is_file() for p in paths):
            return [str(p) for p in paths]
    repos = _mirrors() + list(CENTRAL)
    for version in DELTA_VERSIONS:
        wanted = [("io.delta", f"delta-spark_{line}_{SCALA}", version), ("io.delta", "delta-storage", version)]
        paths = [directory / f"{a}-{v}.jar" for _, a, v in wanted]
        ok = True
        for (g, a, v), p in zip(wanted, paths):
            if p.is_file():
                continue
            if not any(_download(repo, g, a, v, p) for repo in repos):
                ok = False
                break
        if ok:
            print(f"pi_stream_source: Delta {version} jars cached in {directory}", file=sys.stderr)
            return [str(p) for p in paths]
    raise RuntimeError(f"could not download Delta jars {DELTA_VERSIONS} from {repos}; "
                       f"put delta-spark_{line}_{SCALA}-<v>.jar and delta-storage-<v>.jar in {directory}")


def get_spark(app_name: str = "pi_stream_source", master: str = "local[2]",
              extra_conf: Optional[Dict[str, Any]] = None, warehouse: Optional[str] = None,
              delta: Optional[bool] = None):
    """A local SparkSession with Delta Lake, workers on this interpreter, quiet logs, no UI
    (``extra_conf={"spark.ui.enabled": "true"}`` turns it on). ``delta``: True needs Delta, False
    leaves it out, None (default) takes it where Delta supports the installed Spark line and
    otherwise warns and leaves it out."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark import SparkConf, SparkContext
    from pyspark.sql import SparkSession

    log4j = Path(__file__).with_name("resources") / "log4j2.properties"
    java_opts = f"-Dlog4j.configurationFile=file:{log4j} -Dlog4j2.configurationFile=file:{log4j}"
    if delta is None:
        delta = has_delta()
        if not delta:
            log.warning("Delta Lake has no jars for Spark %s: this session has no Delta", spark_line())
    conf: Dict[str, Any] = {
        "spark.app.name": app_name, "spark.master": master,
        "spark.driver.extraJavaOptions": java_opts,
        "spark.sql.shuffle.partitions": "2",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.driver.memory": os.environ.get("PI_STREAM_DRIVER_MEMORY", "2g"),
        "spark.databricks.delta.snapshotPartitions": "2",
        "spark.sql.streaming.pollingDelay": "50ms",
    }
    if delta:
        conf.update({"spark.jars": ",".join(delta_jars()),
                     "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
                     "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog"})
    if warehouse:
        conf["spark.sql.warehouse.dir"] = warehouse
    conf.update(extra_conf or {})
    spark_conf = SparkConf(loadDefaults=False).setAll([(k, str(v)) for k, v in conf.items()])
    if SparkContext._active_spark_context is None and "PYSPARK_GATEWAY_PORT" not in os.environ:
        _start_detached_context(spark_conf)
    spark = SparkSession.builder.config(conf=spark_conf).getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("PI_STREAM_SPARK_LOG_LEVEL", "ERROR"))
    return spark


def _start_detached_context(conf: Any) -> None:
    """Start Spark's JVM in a session of its own. A terminal's Ctrl-C goes to the whole foreground
    process group: pyspark ignores SIGINT in the JVM, but the Python workers and the streaming
    source runner the JVM starts restore it and die mid-batch (a 1,400-line log). Outside the
    group only the driver's Python gets the signal and can stop the query cleanly. The JVM still
    exits with its parent: it watches the stdin pipe pyspark gives it."""
    import subprocess
    import threading

    from pyspark import SparkContext
    from pyspark.java_gateway import launch_gateway

    gateway = launch_gateway(conf, popen_kwargs={"start_new_session": True, "stderr": subprocess.PIPE})
    threading.Thread(target=forward_stderr, args=(gateway.proc.stderr, _write_stderr), name="spark-stderr",
                     daemon=True).start()
    SparkContext(conf=conf, gateway=gateway)


#: last lines of the traceback pyspark's streaming source runner prints each time a query stops
#: (its loop only ends when the JVM closes the socket): noise, not an error
_RUNNER_SHUTDOWN = ("BrokenPipeError", "ConnectionResetError", "EOFError")


def _write_stderr(text: str) -> None:
    """To file descriptor 2 itself: ``sys.stderr`` may be swapped (pytest's capture) or closed,
    and the JVM blocks once a pipe nobody reads is full."""
    try:
        os.write(2, text.encode("utf-8", "replace"))
    except OSError:   # stderr closed: the lines are dropped, the pipe is still drained
        pass


_TRACEBACK = "Traceback (most recent call last):"
_CHAIN = ("During handling of the above exception", "The above exception was the direct cause")


def forward_stderr(source: Any, write: Any) -> None:
    """Copy the JVM's stderr (and its Python children's) with ``write``, line by line, leaving out
    the streaming source runner's traceback (chained ones included) at query stop. Every other
    line, traceback or not, is kept."""
    block: List[str] = []
    last = ""                      # the block's exception line, once its frames are over

    def flush() -> None:
        text = "".join(block)
        if "python_streaming_source_runner.py" in text and last.startswith(_RUNNER_SHUTDOWN):
            log.debug("streaming source runner exited at query stop: %s", last.strip())
        else:
            write(text)

    for raw in iter(source.readline, b""):
        line = raw.decode("utf-8", "replace")
        if block and not last:                 # frames, or a chained traceback's start
            block.append(line)
            if line.strip() and not line[:1].isspace() and not line.startswith((_TRACEBACK,) + _CHAIN):
                last = line
            continue
        if block:                              # after the exception line: a chain, or the end
            if not line.strip() or line.startswith(_CHAIN):
                block.append(line)
                last = "" if line.startswith(_CHAIN) else last
                continue
            flush()
            block, last = [], ""
        if line.startswith(_TRACEBACK):
            block = [line]
        else:
            write(line)
    if block:
        flush()
