"""Read the history logged into an offline W&B run file (``run-<id>.wandb``).

The file is a LevelDB-style log (7-byte W&B header, 32 KiB blocks, records framed by a
4-byte CRC, 2-byte length and 1-byte type) of ``wandb_internal_pb2.Record`` messages,
as written by wandb's own ``datastore``; wandb no longer ships a Python reader for it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

_HEADER, _BLOCK, _FRAME = 7, 32768, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_records(path: Path) -> list:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records, pending, pos = [], b"", _HEADER
    while pos + _FRAME <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _FRAME:  # block trailer padding
            pos += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _FRAME])
        chunk = data[pos + _FRAME : pos + _FRAME + length]
        pos += _FRAME + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (_FULL, _FIRST) else pending + chunk
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def logged_history(path: Path) -> list[dict]:
    """Every ``wandb.log`` call in the run, as ``{key: value}`` dicts (values decoded from JSON)."""
    rows = []
    for record in read_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    return rows


def logged_config(path: Path) -> dict:
    """The run's config (every ``config.update``, later values winning), values decoded from JSON."""
    config = {}
    for record in read_records(path):
        if record.WhichOneof("record_type") == "config":
            for item in record.config.update:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return config
