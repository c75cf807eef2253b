"""Read logged values back from an offline W&B run file (`run-<id>.wandb`), for tests.

The file is a 7-byte header followed by LevelDB-log framing in 32 KiB blocks: each chunk is
crc32c (4 bytes), length (2, little endian), type (1: full, 2: first, 3: middle, 4: last), data.
Assembled records are `wandb_internal_pb2.Record`s; history rows hold items with `key` (or
`nested_key`) and `value_json`. wandb ships no public reader for this, so the test suite has this one.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7


def read_records(path: Path):
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()[HEADER:]
    pending = b""
    offset = 0
    while offset + 7 <= len(data):
        block_left = BLOCK - ((offset + HEADER) % BLOCK)
        if block_left < 7:
            offset += block_left  # the rest of the block is padding
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset:offset + 7])
        chunk = data[offset + 7:offset + 7 + length]
        offset += 7 + length
        if kind == 0 and length == 0:
            continue
        if kind == 1:
            pending = chunk
        elif kind == 2:
            pending = chunk
            continue
        elif kind == 3:
            pending += chunk
            continue
        elif kind == 4:
            pending += chunk
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        yield record
        pending = b""


def history(path: Path) -> list[dict]:
    """Every history row of the run as {key: value}."""
    rows = []
    for record in read_records(path):
        if record.WhichOneof("record_type") != "history":
            continue
        row = {}
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            row[key] = json.loads(item.value_json)
        rows.append(row)
    return rows
