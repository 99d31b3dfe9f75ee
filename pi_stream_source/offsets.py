"""Offsets: what Spark's checkpoint keeps so that any planned micro-batch can be rebuilt.

An offset is a small JSON document (pure functions here, no I/O)::

    {"v": 1, "tags": "<fingerprint of the stream list>", "start": <µs the query started reading from>,
     "shards": {"0": {"run": "<reader run id>", "seq": 1234, "since": <µs>, "hwm": <µs> | [<base µs>, "<b64>"]}}}

Per shard: ``run`` names the reader whose buffer numbered the rows, ``seq`` is the end of the batch
in that buffer, ``since`` is when that run's channel opened, and ``hwm`` is each tag's event-time
high-water mark: every value PI archived for the tag up to ``hwm`` is in the batches up to this
offset. A batch (start, end) can therefore always be rebuilt from the archive as, per tag,
``(start.hwm - overlap, end.hwm]``, whichever reader planned it. ``hwm`` is one integer when all
tags agree, else a base plus zlib-compressed int64 deltas in base64 (compact at 10,000 tags).
"""
from __future__ import annotations

import base64
import zlib
from typing import Any, Dict, List, Sequence, Union

import numpy as np

VERSION = 1
INITIAL_RUN = "initial"

HwmJson = Union[int, List[Any]]


def fingerprint(webids: Sequence[str]) -> str:
    """Identifies the ordered stream list, so a checkpoint is never read against other tags."""
    return f"{len(webids)}:{zlib.crc32(chr(31).join(webids).encode('utf-8')) & 0xFFFFFFFF:08x}"


def encode_hwm(hwm: np.ndarray) -> HwmJson:
    if len(hwm) == 0:
        return 0
    base = int(hwm.min())
    if int(hwm.max()) == base:
        return base
    deltas = (hwm - base).astype("<i8").tobytes()
    return [base, base64.b64encode(zlib.compress(deltas, 6)).decode("ascii")]


def decode_hwm(value: HwmJson, size: int) -> np.ndarray:
    if isinstance(value, (int, float)):
        return np.full(size, int(value), dtype=np.int64)
    base, blob = int(value[0]), value[1]
    deltas = np.frombuffer(zlib.decompress(base64.b64decode(blob)), dtype="<i8").astype(np.int64)
    if len(deltas) != size:
        raise ValueError(f"offset holds {len(deltas)} high-water marks for a shard of {size} streams")
    return deltas + base


def shard_state(run: str, seq: int, since: int, hwm: np.ndarray) -> Dict[str, Any]:
    return {"run": run, "seq": int(seq), "since": int(since), "hwm": encode_hwm(hwm)}


def initial(tags_fingerprint: str, shard_sizes: Sequence[int], start: int) -> Dict[str, Any]:
    """The offset before anything was read: every tag's high-water mark is ``start``."""
    return {"v": VERSION, "tags": tags_fingerprint, "start": int(start),
            "shards": {str(i): {"run": INITIAL_RUN, "seq": 0, "since": int(start), "hwm": int(start)}
                       for i in range(len(shard_sizes))}}
