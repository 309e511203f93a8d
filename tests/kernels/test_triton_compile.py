"""The kernels compile for real GPUs: ``aot_compile.py`` compiles every launch down to a cubin for a
given architecture without needing one (the interpreter checks the math, not the compilation)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
SCRIPT = Path(__file__).with_name("aot_compile.py")


def _compile(arch, dtype):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(SCRIPT), str(arch), dtype], capture_output=True, text=True,
                         env=env, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "compiled 10 kernels" in out.stdout, out.stdout


def test_compiles_for_h100_bf16():
    _compile(90, "bfloat16")


@pytest.mark.slow
@pytest.mark.parametrize("arch,dtype", [(90, "float32"), (90, "float16"), (80, "bfloat16"), (80, "float32")])
def test_compiles_other_targets(arch, dtype):
    _compile(arch, dtype)
