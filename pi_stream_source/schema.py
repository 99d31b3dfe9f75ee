"""The data contract (DESIGN.md §3): one row per PI value."""
from __future__ import annotations

import pyarrow as pa
from pyspark.sql.types import (BooleanType, DateType, DoubleType, IntegerType, StringType, StructField,
                               StructType, TimestampType)

SOURCES = ("live", "snapshot", "backfill", "replay")

CONTRACT_SCHEMA = StructType([
    StructField("tag_webid", StringType(), False),
    StructField("tag_name", StringType(), True),
    StructField("tag_path", StringType(), True),
    StructField("timestamp", TimestampType(), True),
    StructField("value", DoubleType(), True),
    StructField("value_string", StringType(), True),
    StructField("digital_state_code", IntegerType(), True),
    StructField("is_system_state", BooleanType(), True),
    StructField("good", BooleanType(), True),
    StructField("questionable", BooleanType(), True),
    StructField("substituted", BooleanType(), True),
    StructField("annotated", BooleanType(), True),
    StructField("uom", StringType(), True),
    StructField("error", StringType(), True),
    StructField("source", StringType(), False),
    StructField("received_timestamp", TimestampType(), True),
    StructField("ingestion_timestamp", TimestampType(), True),
    StructField("partition_date", DateType(), True),
])

CONTRACT_DDL = ", ".join(f"{f.name} {f.dataType.simpleString().upper()}" for f in CONTRACT_SCHEMA.fields)

_TS = pa.timestamp("us", tz="UTC")

#: What the reader buffers and ships to executors: the contract minus the two columns computed at
#: read time, with ``timestamp`` as PI's epoch ticks (100 ns: every comparison with a cutoff or a
#: mark, and every time sent back to PI, keeps PI's resolution) and ``received_timestamp`` as epoch
#: microseconds.
BUFFER_SCHEMA = pa.schema([
    ("tag_webid", pa.string()), ("tag_name", pa.string()), ("tag_path", pa.string()),
    ("timestamp", pa.int64()), ("value", pa.float64()), ("value_string", pa.string()),
    ("digital_state_code", pa.int32()), ("is_system_state", pa.bool_()),
    ("good", pa.bool_()), ("questionable", pa.bool_()), ("substituted", pa.bool_()), ("annotated", pa.bool_()),
    ("uom", pa.string()), ("error", pa.string()), ("source", pa.string()), ("received_timestamp", pa.int64()),
])

ARROW_SCHEMA = pa.schema([
    ("tag_webid", pa.string(), False), ("tag_name", pa.string()), ("tag_path", pa.string()),
    ("timestamp", _TS), ("value", pa.float64()), ("value_string", pa.string()),
    ("digital_state_code", pa.int32()), ("is_system_state", pa.bool_()),
    ("good", pa.bool_()), ("questionable", pa.bool_()), ("substituted", pa.bool_()), ("annotated", pa.bool_()),
    ("uom", pa.string()), ("error", pa.string()), ("source", pa.string(), False),
    ("received_timestamp", _TS), ("ingestion_timestamp", _TS), ("partition_date", pa.date32()),
])
