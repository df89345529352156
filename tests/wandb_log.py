"""Read an offline W&B run's ``.wandb`` file: a block log of wandb's own protobuf ``Record`` messages.

The file starts with a 7-byte header (``:W&B``, magic ``0xBEE1``, version 0) and is cut into 32 KiB
blocks; each chunk has a 7-byte header (checksum, length, type) and a record may span several chunks
(types FULL=1, FIRST=2, MIDDLE=3, LAST=4). A block tail too short for a chunk header is zero padding.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

BLOCK = 32 * 1024
HEADER = struct.Struct("<4sHB")
CHUNK = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_payloads(path: Path) -> Iterator[bytes]:
    """Yield each record's serialised bytes, in order."""
    data = path.read_bytes()
    ident, magic, version = HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1 or version != 0:
        raise ValueError(f"{path} is not a W&B transaction log")
    pos, pending = HEADER.size, b""
    while pos + CHUNK.size <= len(data):
        room = BLOCK - pos % BLOCK
        if room < CHUNK.size:
            pos += room
            continue
        _, length, kind = CHUNK.unpack_from(data, pos)
        if kind == 0 and length == 0:
            pos += room
            continue
        body = data[pos + CHUNK.size : pos + CHUNK.size + length]
        pos += CHUNK.size + length
        if kind == FULL:
            yield body
        elif kind == FIRST:
            pending = body
        elif kind == MIDDLE:
            pending += body
        elif kind == LAST:
            yield pending + body
            pending = b""


def read_run(path: Path) -> dict:
    """Config, history rows, summary, artifacts and saved file names logged in an offline run.

    Args:
        path: The ``run-<id>.wandb`` file, or the ``offline-run-*`` folder holding it.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    if path.is_dir():
        path = next(path.glob("run-*.wandb"))
    out: dict = {
        "config": {},
        "history": [],
        "summary": {},
        "files": [],
        "artifacts": [],
        "run_id": None,
    }
    for payload in iter_payloads(path):
        rec = pb.Record()
        rec.ParseFromString(payload)
        kind = rec.WhichOneof("record_type")
        if kind in ("run", "config"):
            if kind == "run":
                out["run_id"] = rec.run.run_id
            for item in (rec.run.config if kind == "run" else rec.config).update:
                key = item.key or "/".join(item.nested_key)
                out["config"][key] = json.loads(item.value_json)
        elif kind == "history":
            row = {}
            for item in rec.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            out["history"].append(row)
        elif kind == "summary":
            for item in rec.summary.update:
                key = item.key or "/".join(item.nested_key)
                out["summary"][key] = json.loads(item.value_json)
        elif kind == "artifact":
            art = rec.artifact
            paths = [entry.path for entry in art.manifest.contents]
            # Where `wandb sync` reads each file from (wandb's staging copy).
            local = [entry.local_path for entry in art.manifest.contents]
            out["artifacts"].append(
                {"name": art.name, "type": art.type, "paths": paths, "local_paths": local}
            )
        elif kind == "files":
            out["files"] += [f.path for f in rec.files.files]
    return out
