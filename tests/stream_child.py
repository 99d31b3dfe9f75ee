"""A streaming query in its own process, for tests that kill the driver for real (SIGKILL).

usage: stream_child.py URL WEBIDS TABLE CHECKPOINT SECONDS [SLOW_BATCH]
Runs simulator → pi_websocket → writer helper (merge) for SECONDS, then stops cleanly. With
SLOW_BATCH=n, batch n sleeps before it writes anything (a batch planned but not committed), so the
parent can kill the process at that moment; the process prints "SLOW <n>" when it gets there.
PI_TEST_SESSION_ZONE sets the Spark session's zone (TZ sets the process's)."""
import os
import sys
import time

from pi_stream_source import register
from pi_stream_source.delta import write_batch, create_table
from pi_stream_source.local_spark import get_spark


def main() -> int:
    url, webids, table, checkpoint, seconds = sys.argv[1:6]
    slow = int(sys.argv[6]) if len(sys.argv) > 6 else -1
    spark = get_spark("stream-child")
    if os.environ.get("PI_TEST_SESSION_ZONE"):     # a session zone other than the process's TZ
        spark.conf.set("spark.sql.session.timeZone", os.environ["PI_TEST_SESSION_ZONE"])
    register(spark)
    create_table(spark, table)
    df = (spark.readStream.format("pi_websocket").option("url", url).option("webIds", webids)
          .option("reconnectBackoff", "0.2s").load())

    def land(batch, batch_id):
        if batch_id == slow:
            print(f"SLOW {batch_id}", flush=True)
            time.sleep(600)
        write_batch(batch, batch_id, table, f"pi_stream_source:{checkpoint}")
        sources = sorted(r.source for r in batch.select("source").distinct().collect())
        print(f"BATCH {batch_id} {','.join(sources)}", flush=True)

    q = (df.writeStream.option("checkpointLocation", checkpoint).trigger(processingTime="500 milliseconds")
         .foreachBatch(land).start())
    deadline = time.time() + float(seconds)
    while time.time() < deadline and q.exception() is None:
        time.sleep(0.2)
    q.stop()
    if q.exception() is not None:
        print(f"FAILED {q.exception()}", flush=True)
        return 1
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
