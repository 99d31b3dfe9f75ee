"""An edge loader in its own process, for the test that kills it while its COPY INTO still runs.

usage: unity_child.py WORKSPACE_URL TOKEN WAREHOUSE_ID CHECKPOINT LOCAL_DIR
Loads batch 2 and then batch 3 of test_unity's rows into test_unity's TABLE (printing "LOADED <id>"
after each); the parent kills it while batch 3's statement runs."""
import datetime as dt
import sys

from databricks.sdk import WorkspaceClient
from databricks.sdk.config import Config

from pi_stream_source import unity
from pi_stream_source.local_spark import get_spark
from test_unity import TABLE, VOLUME, _rows

BATCH_2_START = dt.datetime(2026, 11, 27, 22, 0, tzinfo=dt.timezone.utc)   # an instant, whatever TZ the process has


def main() -> int:
    url, token, warehouse, checkpoint, local_dir = sys.argv[1:6]
    spark = get_spark("unity-child")
    client = WorkspaceClient(config=Config(host=url, token=token, auth_type="pat", retry_timeout_seconds=20))
    loader = unity.UnityBatchLoader(client, TABLE, warehouse, VOLUME, checkpoint, local_dir=local_dir,
                                    retry_backoff_seconds=0.05)
    loader(_rows(spark, start=BATCH_2_START), 2)
    print("LOADED 2", flush=True)
    loader(_rows(spark, value_offset=1000.0), 3)
    print("LOADED 3", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
