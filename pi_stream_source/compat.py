"""What the running Spark offers a Python streaming source, and stand-ins where it offers less.

Python streaming data sources (``pyspark.sql.datasource.DataSourceStreamReader``) exist from
Apache Spark 4.0 (and Databricks Runtime 15.4 LTS, which backports them to Spark 3.5). Admission
control came later, in Apache Spark 4.2 (``pyspark.sql.streaming.datasource``):

==================================  =========  =========
feature                             Spark 4.0  Spark 4.2
                                    and 4.1    and 4.3
==================================  =========  =========
``latestOffset(start, limit)``      no         yes
``getDefaultReadLimit``             no         yes
``SupportsTriggerAvailableNow``     no         yes
``reportLatestOffset`` (metrics)    no         yes
==================================  =========  =========

``source.py`` imports the API from here only. Where admission control is missing, Spark calls
``latestOffset()`` with no arguments, so :func:`admission_control` (a class decorator) gives the
reader what Spark would have passed: the offset the next batch starts from and the reader's own
limit (``maxRecordsPerTrigger``). What the decorated reader must provide:

* ``initialOffset()`` returns the same offset every time it is called in a run (it is memoized),
  because the shim calls it before Spark does (a fresh query's first call is ``latestOffset()``);
* ``latestOffset(start, limit)`` with the 4.2 signature: an offset for the rows after ``start``,
  at most ``limit.max_rows`` of them when ``limit`` is a :class:`ReadMaxRows`;
* ``partitions(start, end)`` returns no partition when ``start == end`` (Spark 4.0 announces the
  checkpoint's last offset after a restart by calling ``partitions(last, last)``);
* ``getDefaultReadLimit()`` returns :class:`ReadMaxRows` for ``maxRecordsPerTrigger``, else
  :class:`ReadAllAvailable`;
* optionally ``awaitStart()``: start reading and wait until the source can say what is available
  (for ``pi_websocket``: every channel open). The shim calls it before the first offset of a run.

``Trigger.AvailableNow`` without ``SupportsTriggerAvailableNow``: Spark wraps the source and asks
``latestOffset()`` once, at the start, then runs one batch up to that offset (the trigger works as
"once"). The first offset of a run is therefore computed after ``awaitStart()`` and without the
row limit, so that batch holds everything available when the query started: the archive up to the
channels opening plus the rows buffered by then (as ``prepareForTriggerAvailableNow`` does on
Spark 4.2). On a processing-time trigger that first batch is the start-up bridge plus the few
rows that arrived while the channels opened; every later batch is capped by the reader.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Type, TypeVar

import pyspark

from .errors import PIStreamError

SPARK_VERSION: str = pyspark.__version__
#: "4.0" for pyspark 4.0.5: the line Delta Lake and Databricks' release notes name.
SPARK_LINE: str = ".".join(SPARK_VERSION.split(".")[:2])


def runtime_name() -> str:
    """The runtime as a person would name it in a bug report."""
    dbr = os.environ.get("DATABRICKS_RUNTIME_VERSION")
    if dbr:
        return f"Databricks Runtime {dbr} (Spark {SPARK_VERSION})"
    return f"Apache Spark {SPARK_VERSION}"


try:
    from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
except ImportError as exc:        # Apache Spark 3.5 and older: no Python data sources at all
    raise PIStreamError(
        f"pi_websocket needs Python streaming data sources, which {runtime_name()} does not have: "
        "use Apache Spark 4.0 or later (pip install 'pyspark>=4.0'), Databricks Runtime 15.4 LTS or "
        "later, or serverless compute") from exc

try:
    from pyspark.sql.streaming.datasource import (ReadAllAvailable, ReadLimit, ReadMaxRows,
                                                  SupportsTriggerAvailableNow)
    HAS_ADMISSION_CONTROL = True
except ImportError:
    HAS_ADMISSION_CONTROL = False

    class ReadLimit:  # type: ignore[no-redef]
        """Stand-in for Spark 4.2's ``ReadLimit``: how much one micro-batch may read."""

    @dataclass
    class ReadAllAvailable(ReadLimit):  # type: ignore[no-redef]
        """Stand-in: no limit."""

    @dataclass
    class ReadMaxRows(ReadLimit):  # type: ignore[no-redef]
        """Stand-in: at most ``max_rows`` rows per micro-batch (applied by the reader itself)."""
        max_rows: int

    class SupportsTriggerAvailableNow:  # type: ignore[no-redef]
        """Stand-in mixin: Spark without it never calls ``prepareForTriggerAvailableNow``."""

        def prepareForTriggerAvailableNow(self) -> None:
            """Not called on this runtime (see the module's notes on AvailableNow)."""

#: Spark asks the reader for the source's metrics (shown in ``lastProgress``' ``latestOffset``).
HAS_REPORT_LATEST_OFFSET: bool = hasattr(DataSourceStreamReader, "reportLatestOffset")
#: Spark calls ``prepareForTriggerAvailableNow``: AvailableNow may run several capped batches.
HAS_AVAILABLE_NOW: bool = HAS_ADMISSION_CONTROL


def default_limit(max_records: Optional[int]) -> ReadLimit:
    """The reader's own limit: ``maxRecordsPerTrigger`` rows (validated by ``options.py``), or
    everything available."""
    return ReadMaxRows(max_records) if max_records else ReadAllAvailable()


def describe() -> Dict[str, Any]:
    """What this runtime offers the source (for logs, bug reports and the test matrix)."""
    return {"runtime": runtime_name(), "admissionControl": HAS_ADMISSION_CONTROL,
            "availableNow": "native" if HAS_AVAILABLE_NOW else "one batch",
            "metricsInProgress": HAS_REPORT_LATEST_OFFSET}


R = TypeVar("R", bound=type)


def admission_control(cls: R) -> R:
    """Class decorator for a ``DataSourceStreamReader`` written against Spark 4.2's
    ``latestOffset(start, limit)``: on a runtime without admission control it returns a subclass
    (same name, module and pickling) whose ``latestOffset()`` supplies ``start`` and the limit;
    elsewhere ``cls`` itself."""
    if HAS_ADMISSION_CONTROL:
        return cls

    base: Type[Any] = cls

    class Legacy(base):  # type: ignore[valid-type,misc]
        # the offset the next batch starts from: the end of the last batch Spark planned or was
        # told about (partitions), else what latestOffset last returned, else initialOffset()
        _compat_last: Optional[Dict[str, Any]] = None
        _compat_first_done: bool = False

        def latestOffset(self, start: Optional[Dict[str, Any]] = None,  # type: ignore[override]
                         limit: Optional[ReadLimit] = None) -> Dict[str, Any]:
            if start is None:
                # a fresh query's first call comes before Spark's own initialOffset()
                start = self._compat_last if self._compat_last is not None else self.initialOffset()
            if limit is None:
                if self._compat_first_done:
                    limit = self.getDefaultReadLimit()
                else:
                    # Spark may be an AvailableNow wrapper that asks only this once: wait until
                    # the source knows what is available, and take all of it (module notes)
                    await_start = getattr(self, "awaitStart", None)
                    if await_start is not None:
                        await_start()
                    limit = ReadAllAvailable()
            end = base.latestOffset(self, start, limit)
            self._compat_first_done = True
            self._compat_last = end
            return end

        def partitions(self, start: Dict[str, Any], end: Dict[str, Any]) -> Any:
            self._compat_last = end
            return base.partitions(self, start, end)

    Legacy.__name__, Legacy.__qualname__ = cls.__name__, cls.__qualname__
    Legacy.__module__, Legacy.__doc__ = cls.__module__, cls.__doc__
    return Legacy  # type: ignore[return-value]


__all__ = ["DataSource", "DataSourceStreamReader", "InputPartition", "ReadLimit", "ReadAllAvailable",
           "ReadMaxRows", "SupportsTriggerAvailableNow", "HAS_ADMISSION_CONTROL", "HAS_AVAILABLE_NOW",
           "HAS_REPORT_LATEST_OFFSET", "SPARK_VERSION", "SPARK_LINE", "runtime_name", "default_limit",
           "describe", "admission_control"]
