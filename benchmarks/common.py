"""Shared benchmark plumbing: machine description, timing, tables and atomic JSON results."""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def machine_info() -> dict:
    """What the figures were measured on: CPU, cores, torch version, device, date."""
    import torch

    info = {
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    from xlram.ops import cpu_blas

    blas = cpu_blas.info()
    # Which BLAS ran xlram's CPU products at this thread count, and the race that chose it.
    info["cpu_blas"] = {"route": cpu_blas.route(), "chosen": blas["route"], "core": blas["core"],
                        "measured_gflops": blas.get("measured_gflops")}
    commit = _git_commit()
    if commit:
        info["commit"] = commit
    return info


def _git_commit() -> str | None:
    """The checkout's commit (with "+changes" when the tree differs from it), or None outside git."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+changes" if dirty else "") if head else None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def time_call(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1,
              sync: Callable[[], None] | None = None) -> float:
    """Median wall time of `fn()` in milliseconds over `repeats` runs after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
        if sync:
            sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_results(suite: str, rows: list[dict], out_dir: str | Path) -> Path:
    """Write `{"suite", "machine", "rows"}` to `out_dir/suite.json` atomically; return the path."""
    for i, row in enumerate(rows):
        if "metric" not in row or "value" not in row:
            raise ValueError(f"row {i} of suite {suite!r} needs 'metric' and 'value' keys, got {sorted(row)}")
    path = Path(out_dir) / f"{suite}.json"
    atomic_write_text(path, json.dumps({"suite": suite, "machine": machine_info(), "rows": rows}, indent=1))
    return path


def format_table(rows: list[dict]) -> str:
    """Rows as a plain-text table, columns in order of first appearance."""
    if not rows:
        return "(no rows)"
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols]
    cells = [[_fmt(row.get(c, "")) for c in cols] for row in rows]
    widths = [max(len(c), *(len(r[j]) for r in cells)) for j, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
