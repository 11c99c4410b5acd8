"""Reading an offline W&B run back from its files, without an account or the W&B server (tests, and users who want
the numbers a run logged)."""

from __future__ import annotations

import json
import struct
from pathlib import Path


def _offline_records(run_dir: str | Path):
    """Every protobuf ``Record`` of the offline W&B run(s) under ``run_dir``, oldest run first.

    W&B writes its records in a LevelDB-style log: a 7-byte file header, then 32 KiB blocks of
    chunks, each chunk with a 7-byte header (checksum, length, type: full / first / middle / last)
    around a serialized protobuf ``Record``.
    """
    from wandb.proto import wandb_internal_pb2

    block = 32 * 1024
    for path in sorted(Path(run_dir).glob("**/offline-run-*/run-*.wandb")):
        data = path.read_bytes()
        if data[:4] != b":W&B":
            raise ValueError(f"{path} is not a W&B run file")
        pos, pending, records = 7, b"", []
        while pos + 7 <= len(data):
            left = block - pos % block
            if left < 7:  # the rest of a block too short for a header is padding
                pos += left
                continue
            _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            if kind == 0 and length == 0:
                pos += left
                continue
            chunk = data[pos + 7:pos + 7 + length]
            pos += 7 + length
            if kind == 1:
                records.append(chunk)
            elif kind == 2:
                pending = chunk
            elif kind == 3:
                pending += chunk
            elif kind == 4:
                records.append(pending + chunk)
        for raw in records:
            record = wandb_internal_pb2.Record()
            record.ParseFromString(raw)
            yield record


def _set_items(target: dict, items) -> dict:
    """Apply W&B's ``{key or nested_key, value_json}`` items to a dict (images etc. arrive as nested keys)."""
    for item in items:
        *parents, leaf = list(item.nested_key) or [item.key]
        node = target
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = json.loads(item.value_json)
    return target


def read_offline_history(run_dir: str | Path) -> list[dict]:
    """The logged rows (``run.log`` calls) of the offline W&B run(s) under ``run_dir``, oldest first. Reading them
    back lets tests and users check what was logged without an account or the W&B server."""
    return [_set_items({}, record.history.item) for record in _offline_records(run_dir)
            if record.WhichOneof("record_type") == "history"]


def read_offline_table(run_dir: str | Path, key: str) -> dict:
    """The last ``wandb.Table`` logged under ``key`` by the offline W&B run(s) under ``run_dir``, as W&B staged it for
    ``wandb sync`` (in the run's table artifact): ``columns``, ``data`` (an image cell is ``{"_type": "image-file",
    "path": ...}``), ...; KeyError when there is none."""
    staged = [entry["local_path"] for artifact in read_offline_run(run_dir)["artifacts"]
              if artifact["type"] == "run_table" for entry in artifact["entries"]
              if entry["path"] == f"{key}.table.json"]
    if not staged:
        raise KeyError(f"no table {key!r} in the W&B runs under {run_dir}")
    return json.loads(Path(staged[-1]).read_text())


def read_offline_run(run_dir: str | Path) -> dict:
    """What the offline W&B run(s) under ``run_dir`` say about themselves: ``group``, ``job_type``, ``config``,
    ``summary`` (the last value of each key), ``artifacts`` (logged: name, type, aliases, metadata, entries, and
    ``used``: an input of the run rather than an output) and ``used_artifacts`` (use_artifact records, online)."""
    run = {"group": None, "job_type": None, "config": {}, "summary": {}, "artifacts": [], "used_artifacts": []}
    for record in _offline_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.update(group=record.run.run_group, job_type=record.run.job_type)
            _set_items(run["config"], record.run.config.update)
        elif kind == "config":
            _set_items(run["config"], record.config.update)
        elif kind == "summary":
            _set_items(run["summary"], record.summary.update)
        elif kind == "artifact":
            a = record.artifact
            run["artifacts"].append({
                "name": a.name, "type": a.type, "aliases": list(a.aliases), "used": a.use_after_commit,
                "metadata": json.loads(a.metadata) if a.metadata else {},
                "entries": [{"path": e.path, "ref": e.ref, "digest": e.digest, "local_path": e.local_path}
                            for e in a.manifest.contents]})
        elif kind == "use_artifact":
            run["used_artifacts"].append({"name": record.use_artifact.name, "type": record.use_artifact.type})
    return run
