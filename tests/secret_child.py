"""Streaming runs with credentials in their own process, for tests/test_no_secrets.py.

Reads a JSON job from stdin (never argv, never a file: the secrets stay out of what is scanned):
``{"out": DIR, "runs": [{"name", "url", "webids", "options", "expect": "rows" | "fail"}]}``.
The parent sets PI_STREAM_LOG_FILE / PI_STREAM_LOG_LEVEL in this process' environment, so the
package log of the driver and of every Spark Python worker (inherited through the JVM) goes to
one file. For each run it writes what a user could see to DIR/<name>.json: ``df.explain(True)``,
``query.explain(True)``, ``lastProgress``/``recentProgress`` and the exception text; the
checkpoint and the Delta table are left in DIR for the parent to search."""
import contextlib
import io
import json
import os
import sys
import time

from pi_stream_source import register
from pi_stream_source.local_spark import get_spark


def explain(fn) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        fn()
    return buf.getvalue()


def progress_json(progress) -> str:
    """What a user dumps of a StreamingQueryProgress (its ``json``), or plain JSON of a dict."""
    text = getattr(progress, "json", None)
    return text if isinstance(text, str) else json.dumps(progress, default=str)


def main() -> int:
    t0 = time.monotonic()
    job = json.loads(sys.stdin.read())
    out = job["out"]
    spark = get_spark("secret-child", extra_conf={"spark.local.dir": os.path.join(out, "spark-local")},
                      warehouse=os.path.join(out, "warehouse"))
    register(spark)
    for run in job["runs"]:
        name = run["name"]
        report = {"name": name}
        reader = (spark.readStream.format("pi_websocket").option("url", run["url"])
                  .option("webIds", ",".join(run["webids"])).option("reconnectBackoff", "0.2s")
                  .option("maxReconnectAttempts", "2"))
        for key, value in run["options"].items():
            reader = reader.option(key, value)
        try:
            df = reader.load()
            report["df_explain"] = explain(lambda: df.explain(True))
            q = (df.writeStream.format("delta").option("checkpointLocation", os.path.join(out, f"{name}_ck"))
                 .trigger(processingTime="300 milliseconds").start(os.path.join(out, f"{name}_table")))
        except Exception as exc:          # a failure at load/start: its text is what the user sees
            report["exception"] = f"{type(exc).__name__}: {exc}"
            report["exception_repr"] = repr(exc)
        else:
            deadline = time.monotonic() + 180       # bounded; a loaded machine makes the first batch slow
            while time.monotonic() < deadline and q.exception() is None:
                if run["expect"] == "rows" and sum(p["numInputRows"] for p in q.recentProgress) >= run.get("rows", 10):
                    break
                time.sleep(0.2)
            report["query_explain"] = explain(lambda: q.explain(True))
            report["last_progress"] = progress_json(q.lastProgress)
            report["recent_progress"] = "\n".join(progress_json(p) for p in q.recentProgress)
            report["status"] = json.dumps(q.status, default=str)
            report["rows"] = sum(p["numInputRows"] for p in q.recentProgress)
            exc = q.exception()
            if exc is not None:
                report["exception"] = f"{type(exc).__name__}: {exc}"
                report["exception_repr"] = repr(exc)
                report["exception_desc"] = getattr(exc, "desc", "") or ""
                report["exception_trace"] = getattr(exc, "stackTrace", "") or ""
            q.stop()
        with open(os.path.join(out, f"{name}.json"), "w", encoding="utf-8") as fh:
            json.dump(report, fh)
        print(f"RUN {name} rows={report.get('rows')} failed={'exception' in report} at {time.monotonic() - t0:.1f}s", flush=True)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
