"""Run records on disk: atomic writes, one folder per run, suite tables with pandas.

Layout: ``<results>/<suite>/<run-id>/`` with ``config.json`` (resolved spec),
``environment.json``, ``metrics.jsonl`` (one line per epoch), ``checkpoint.pt`` (latest
epoch) and ``record.json`` (the final record, written last: its presence means finished).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

SUMMARY_COLUMNS = ["method", "label", "seed", "status", "knn_top1", "linear_top1", "wall_s"]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and ``os.replace``: never a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def git_commit() -> str | None:
    """The commit of the code that ran (None outside a git checkout)."""
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """Package versions, device and git commit: every number travels with where it came from."""
    from importlib import metadata

    versions = {}
    for pkg in ("sslbench", "torch", "torchvision", "numpy", "scikit-learn", "pandas", "fvcore", "ray", "submitit"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    dev = {"type": device.type}
    if device.type == "cuda":
        dev["name"] = torch.cuda.get_device_name(device)
    else:
        dev["name"] = platform.processor() or platform.machine()
        dev["threads"] = torch.get_num_threads()
    return {"python": platform.python_version(), "platform": platform.platform(), "versions": versions,
            "device": dev, "git_commit": git_commit(), "hostname": platform.node()}


class RunDir:
    """Paths and readers/writers of one run's folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    config = property(lambda self: self.root / "config.json")
    env = property(lambda self: self.root / "environment.json")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    checkpoint = property(lambda self: self.root / "checkpoint.pt")
    record = property(lambda self: self.root / "record.json")

    features = property(lambda self: self.root / "features.pt")

    def is_finished(self) -> bool:
        """A run is done when its record says ok or diverged; failed runs are retried."""
        if not self.record.exists():
            return False
        try:
            return read_json(self.record).get("status") in ("ok", "diverged")
        except (OSError, json.JSONDecodeError):
            return False

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Rewrite the metrics file atomically with one more line (kept small: one line per epoch)."""
        lines = self.metrics.read_text() if self.metrics.exists() else ""
        atomic_write_bytes(self.metrics, (lines + json.dumps(row, default=str) + "\n").encode())

    def truncate_metrics(self, epochs_done: int) -> None:
        """Drop metric lines past the checkpointed epoch (a run killed mid-epoch resumes cleanly)."""
        if not self.metrics.exists():
            return
        rows = [json.loads(x) for x in self.metrics.read_text().splitlines() if x.strip()]
        kept = [r for r in rows if r.get("epoch", 0) <= epochs_done]
        atomic_write_bytes(self.metrics, "".join(json.dumps(r) + "\n" for r in kept).encode())

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.exists():
            return []
        return [json.loads(x) for x in self.metrics.read_text().splitlines() if x.strip()]


def suite_records(suite_dir: Path) -> list[dict[str, Any]]:
    """Final records of every finished run of a suite folder."""
    records = []
    for rec in sorted(Path(suite_dir).glob("*/record.json")):
        try:
            records.append(read_json(rec))
        except (OSError, json.JSONDecodeError):
            continue
    return records


def summary_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per run: method, seed, status, headline metrics, costs."""
    rows = []
    for r in records:
        row = {"method": r.get("method"), "label": r.get("label"), "seed": r.get("seed"),
               "status": r.get("status"), "wall_s": r.get("wall_s"), "run_id": r.get("run_id"),
               "reason": r.get("reason")}
        row.update({k: v for k, v in r.get("metrics", {}).items() if isinstance(v, (int, float)) or v is None})
        row.update({k: r.get("costs", {}).get(k) for k in ("train_flops", "params_encoder", "inference_gmacs", "images_per_s",
                                                            "peak_mem_mb")})
        rows.append(row)
    df = pd.DataFrame(rows)
    for col in SUMMARY_COLUMNS:
        if col not in df.columns:
            df[col] = None
    lead = SUMMARY_COLUMNS + [c for c in df.columns if c not in SUMMARY_COLUMNS]
    return df[lead]


def write_summary(suite_dir: Path) -> pd.DataFrame:
    """(Re)write ``summary.csv`` of a suite folder atomically from its run records."""
    df = summary_frame(suite_records(suite_dir))
    atomic_write_bytes(Path(suite_dir) / "summary.csv", df.to_csv(index=False).encode())
    return df
