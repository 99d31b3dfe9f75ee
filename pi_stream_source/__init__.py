"""pi_stream_source: a Spark Structured Streaming source for PI Web API channels.

>>> import pi_stream_source
>>> pi_stream_source.register(spark)          # doctest: +SKIP
>>> spark.readStream.format("pi_websocket").option("url", url).option("webIds", ids).load()  # doctest: +SKIP
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def register(spark: Any) -> None:
    """Register the ``pi_websocket`` (streaming), ``pi`` (batch history) and ``pi_af`` (asset
    context tables) data sources."""
    from .af import PIAFDataSource
    from .batch import PIDataSource
    from .source import PIWebSocketDataSource

    spark.dataSource.register(PIWebSocketDataSource)
    spark.dataSource.register(PIDataSource)
    spark.dataSource.register(PIAFDataSource)


def source_metrics(progress: Any) -> Any:
    """The ``pi_websocket`` source's metrics (reconnects, failed attempts, last error, lag, gap
    fills, data loss…) as a dict, from a query or its ``lastProgress``: see ``metrics.py``."""
    from .metrics import source_metrics as metrics

    return metrics(progress)


__all__ = ["register", "source_metrics", "__version__"]


def _debug_log_from_env() -> None:
    """``PI_STREAM_LOG_FILE=/path`` sends this package's log (every Spark Python process) to a file."""
    import logging
    import os

    path = os.environ.get("PI_STREAM_LOG_FILE")
    if path:
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter(f"%(asctime)s {os.getpid()} %(threadName)s %(name)s %(levelname)s %(message)s"))
        logger = logging.getLogger("pi_stream_source")
        logger.addHandler(handler)
        logger.setLevel(os.environ.get("PI_STREAM_LOG_LEVEL", "INFO"))


_debug_log_from_env()
