"""benchmarks.common.machine_info: results say which BLAS ran xlram's CPU products, and at which commit."""

import re
import shutil
from pathlib import Path

from benchmarks.common import machine_info


def test_machine_info_names_the_blas_and_the_commit():
    info = machine_info()
    blas = info["cpu_blas"]
    assert blas["route"] in ("openblas", "torch") and blas["chosen"] in ("openblas", "torch")
    assert blas["route"] == "torch" or blas["chosen"] == "openblas"
    commit = info.get("commit")
    if commit is None:  # only where there is no git or no checkout
        root = Path(__file__).resolve().parent.parent
        assert shutil.which("git") is None or not (root / ".git").exists()
    else:
        assert re.fullmatch(r"[0-9a-f]{7,40}(\+changes)?", commit), commit
