"""The job manifest: one JSON line per listed input (ok or error), partial manifests per block, resume.

Layout under the output URI:
    <out>/_jobs/<job-id>/parts/part-<hash>.jsonl   written atomically by the upload stage as each block finishes
    <out>/_jobs/<job-id>/manifest.jsonl            the merged manifest of this job (same as below)
    <out>/_jobs/<job-id>/summary.json              this job's counts (same as below)
    <out>/manifest.jsonl                           one line per input of the latest job, every line one schema
    <out>/summary.json                             the latest job's counts (inputs, ok, error, skipped, timings)

A rerun with the same job id reads the merged manifest and any parts, and skips inputs whose record is "ok" and
made with the same models (its `provenance`: sha256 of the encoder and of each style's generator), or an error
caused by the input itself (decode/detect), before any stage runs; they are carried over and counted as
`skipped`. Every other error is `transient` (read, stylize, upload: storage or worker failures) and is retried. Records of one key written more than once
(a retried task writes its part again) collapse to one: ok beats error, later beats earlier.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from fstrain.data import storage

OK = "ok"
ERROR = "error"
# Errors caused by the input itself (a rerun gives the same answer) vs transient ones (read, stylize, upload).
INPUT_ERROR_STAGES = ("decode", "detect")
JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_job_id(job_id: str) -> str:
    if not JOB_ID_PATTERN.match(job_id or ""):
        raise ValueError(f"job id {job_id!r}: use 1-128 letters, digits, '.', '_' or '-' (no '/')")
    return job_id


def job_uri(out: str, job_id: str) -> str:
    return storage.join(out, "_jobs", check_job_id(job_id))


def parts_uri(out: str, job_id: str) -> str:
    return storage.join(job_uri(out, job_id), "parts")


def manifest_uri(out: str) -> str:
    return storage.join(out, "manifest.jsonl")


def summary_uri(out: str) -> str:
    return storage.join(out, "summary.json")


@dataclass
class Record:
    """What happened to one input. `stage`/`message`/`action` are set for errors only."""
    key: str
    input: str
    status: str
    stage: str = ""
    message: str = ""
    action: str = ""
    outputs: dict[str, Any] = field(default_factory=dict)
    face: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    worker: dict[str, Any] = field(default_factory=dict)     # where the stylize stage ran (node, GPU ids, device)
    provenance: dict[str, Any] = field(default_factory=dict)  # ok: {"encoder": sha256, "generators": {style: sha256}}
    job_id: str = ""
    finished_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data = {"key": self.key, "input": self.input, "status": self.status}
        if self.status == ERROR:
            data.update(stage=self.stage, message=self.message, action=self.action, transient=self.transient)
        data.update(outputs=self.outputs, face=self.face, timings=self.timings, worker=self.worker, job_id=self.job_id,
                    finished_at=self.finished_at)
        if self.status == OK:
            data["provenance"] = self.provenance
        return data

    @property
    def transient(self) -> bool:
        """An error not caused by the input's content (storage, worker): a rerun retries it."""
        return self.status == ERROR and self.stage not in INPUT_ERROR_STAGES

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Record":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def error_record(key: str, input_uri: str, stage: str, message: str, action: str, job_id: str = "",
                 timings: dict[str, float] | None = None) -> Record:
    return Record(key=key, input=input_uri, status=ERROR, stage=stage, message=f"{input_uri}: {message}",
                  action=action, timings=dict(timings or {}), job_id=job_id, finished_at=time.time())


def to_jsonl(records: Iterable[Record]) -> str:
    return "".join(json.dumps(r.to_json(), sort_keys=False) + "\n" for r in records)


def parse_jsonl(text: str, uri: str) -> list[Record]:
    """Input records of a manifest file; blank lines are skipped, and so is the summary line that versions before
    summary.json appended (a job started by one of them resumes)."""
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{uri}: line {number} is not JSON ({exc}); delete the file to start the job over")
        if data.get("summary") is True:
            continue
        missing = [name for name in ("key", "input", "status") if name not in data]
        if missing:
            raise ValueError(f"{uri}: line {number} lacks {missing}; delete the file to start the job over")
        records.append(Record.from_json(data))
    return records


def prefer(old: Record | None, new: Record) -> Record:
    """Which of two records of one key wins: ok beats error, otherwise the later one."""
    if old is None:
        return new
    if (old.status == OK) != (new.status == OK):
        return old if old.status == OK else new
    return new if new.finished_at >= old.finished_at else old


def merge(records: Iterable[Record]) -> dict[str, Record]:
    merged: dict[str, Record] = {}
    for record in records:
        merged[record.key] = prefer(merged.get(record.key), record)
    return merged


def write_part(out: str, job_id: str, records: list[Record]) -> str | None:
    """Write one block's records as an atomic part file named by its keys (a retry overwrites, not duplicates)."""
    if not records:
        return None
    digest = hashlib.sha256("\n".join(sorted(r.key for r in records)).encode()).hexdigest()[:20]
    uri = storage.join(parts_uri(out, job_id), f"part-{digest}.jsonl")
    storage.write_text(uri, to_jsonl(records))
    return uri


def read_job_records(out: str, job_id: str) -> dict[str, Record]:
    """Everything an earlier run of this job recorded: its merged manifest plus parts not merged yet."""
    records: list[Record] = []
    merged_uri = storage.join(job_uri(out, job_id), "manifest.jsonl")
    if storage.exists(merged_uri):
        records += parse_jsonl(storage.read_text(merged_uri), merged_uri)
    for uri in storage.list_uris(parts_uri(out, job_id), suffixes=".jsonl"):
        records += parse_jsonl(storage.read_text(uri), uri)
    return merge(records)


def summarize(records: list[Record], skipped: int, processed: int, elapsed_s: float, job_id: str,
              stage_seconds: dict[str, float] | None = None) -> dict[str, Any]:
    """Counts of this run: `processed` records whose stages ran now, `skipped` ones carried over from earlier runs;
    inputs = ok + error = processed + skipped (one record per input, or per face with --faces all)."""
    counts: dict[str, int] = {}
    for record in records:
        counts[record.status] = counts.get(record.status, 0) + 1
    errors_by_stage: dict[str, int] = {}
    for record in records:
        if record.status == ERROR:
            errors_by_stage[record.stage] = errors_by_stage.get(record.stage, 0) + 1
    if processed + skipped != len(records):
        raise AssertionError(f"summary of job {job_id}: {processed} processed + {skipped} skipped != "
                             f"{len(records)} records")
    return {"job_id": job_id, "inputs": len(records), "ok": counts.get(OK, 0),
            "error": counts.get(ERROR, 0), "skipped": skipped, "processed": processed,
            "errors_by_stage": errors_by_stage, "elapsed_s": round(elapsed_s, 3),
            "photos_per_s": round(processed / elapsed_s, 3) if elapsed_s > 0 else None,
            "stage_seconds": {k: round(v, 3) for k, v in (stage_seconds or {}).items()}}


def write_manifest(out: str, job_id: str, records: list[Record], summary: dict[str, Any]) -> str:
    """Write the job's merged manifest and `<out>/manifest.jsonl` (one record per line, sorted by key), and the
    summary beside each as `summary.json`; returns the manifest's URI."""
    text = to_jsonl(sorted(records, key=lambda r: r.key))
    for folder in (job_uri(out, job_id), out):
        storage.write_text(storage.join(folder, "manifest.jsonl"), text)
        storage.write_json(storage.join(folder, "summary.json"), summary)
    return manifest_uri(out)


def read_manifest(out: str) -> tuple[list[Record], dict[str, Any] | None]:
    """(records of `<out>/manifest.jsonl`, `<out>/summary.json` or None when there is none)."""
    uri = manifest_uri(out)
    summary = storage.read_json(summary_uri(out)) if storage.exists(summary_uri(out)) else None
    return parse_jsonl(storage.read_text(uri), uri), summary
