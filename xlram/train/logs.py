"""Where a run's numbers go: CSV files (always), TensorBoard (when installed), a progress bar.

``OUT/train.csv`` has one row per optimizer step and ``OUT/eval.csv`` one per evaluation; floats are
written with ``repr`` so they read back exactly. A resumed run first drops the rows after the step it
resumes from (they are recomputed), so the files of an interrupted and resumed run read like those
of a run that never stopped; TensorBoard's ``purge_step`` does the same for the event files.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from xlram.checkpoint import atomic_write_text

__all__ = ["MetricsLogger", "tensorboard_available"]

TRAIN_CSV = "train.csv"
EVAL_CSV = "eval.csv"
TENSORBOARD_DIR = "tensorboard"


def tensorboard_available() -> bool:
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


class _CsvLog:
    """Rows appended to a CSV file, the header taken from the first row (or the existing file)."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path, self.fields, self.file, self.writer = path, None, None, None
        if resume_step is None or not path.is_file():
            path.unlink(missing_ok=True)
            return
        # Keep the header and the rows up to the resumed step; later rows are recomputed.
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        self.fields = rows[0]
        kept = [r for r in rows[1:] if r and _int_or_none(r[0]) is not None and int(r[0]) <= resume_step]
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([rows[0], *kept])
        atomic_write_text(path, buf.getvalue())

    def write(self, row: dict) -> None:
        if self.writer is None:
            if self.fields is None:
                self.fields = list(row)
            self.file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115 (kept open)
            self.writer = csv.DictWriter(self.file, self.fields, restval="", extrasaction="ignore",
                                         lineterminator="\n")
            if self.file.tell() == 0:
                self.writer.writeheader()
        self.writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file, self.writer = None, None


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


class MetricsLogger:
    """CSV rows, TensorBoard scalars and a tqdm bar; only the first process (``enabled``) writes.

    Args:
        out_dir: the run's directory.
        enabled: False in every process but the first.
        resume_step: the step a resumed run continues from (None: a new run, old files are replaced).
        total_steps: the bar's length.
        progress: show the bar.
        tensorboard: write TensorBoard events (when the package is importable).
    """

    def __init__(self, out_dir: str | Path, *, enabled: bool, resume_step: int | None, total_steps: int,
                 progress: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.train_csv = self.eval_csv = self.tb = self.bar = None
        if not enabled:
            return
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.train_csv = _CsvLog(out_dir / TRAIN_CSV, resume_step)
        self.eval_csv = _CsvLog(out_dir / EVAL_CSV, resume_step)
        if tensorboard and tensorboard_available():
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self.tb = SummaryWriter(log_dir=str(out_dir / TENSORBOARD_DIR), purge_step=purge)
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=resume_step or 0, desc="train", unit="step",
                            dynamic_ncols=True)

    def log_train(self, record: dict) -> None:
        """One optimizer step: ``record`` has ``step``, ``loss``, ``lr``, ``tokens_per_s``, ..."""
        if not self.enabled:
            return
        self.train_csv.write(record)
        step = record["step"]
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float):
                    self.tb.add_scalar(f"train/{key}", value, step)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(f"loss {record['loss']:.4f}, lr {record['lr']:.2e}, "
                                     f"{_human(record.get('tokens_per_s', 0.0))} tok/s")

    def log_eval(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        self.eval_csv.write({"step": step, **metrics})
        if self.tb is not None:
            for key, value in metrics.items():
                self.tb.add_scalar(f"eval/{key}", value, step)
        if self.bar is not None:
            self.bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    def message(self, text: str) -> None:
        """A line for the user, above the bar when there is one."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        for log in (self.train_csv, self.eval_csv):
            log.close()
        if self.tb is not None:
            self.tb.close()
        if self.bar is not None:
            self.bar.close()


def _human(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"
