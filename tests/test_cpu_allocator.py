"""xlram.cpu_allocator: glibc's thresholds, checked by their effect on page faults in a fresh process."""

import os
import platform
import subprocess
import sys

import pytest

from xlram.cpu_allocator import GLIBC_ENV, tune_cpu_allocator

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="glibc only")

# Allocates, writes and frees a 64 MiB and a 16 MiB tensor 12 times; prints the page faults of the
# last 4 rounds. glibc serves blocks this large from fresh mmap'd pages every time (4 KiB per fault);
# a tuned heap reuses them after a few rounds.
PROBE = """
import resource, sys, torch
from xlram.cpu_allocator import tune_cpu_allocator
applied = tune_cpu_allocator() if sys.argv[1] == "tune" else None
faults = []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = torch.ones(16 << 20); b = torch.ones(4 << 20); del a, b
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, sum(faults[-4:]))
"""


def _probe(mode: str, **env) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if k not in GLIBC_ENV and k != "XLRAM_MALLOC"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env={**clean, **env}, check=True,
                         capture_output=True, text=True).stdout.split()
    return out[0], int(out[1])


@glibc
def test_tuned_process_reuses_freed_memory():
    applied, faults = _probe("tune")
    _, untuned = _probe("plain")
    assert applied == "True"
    assert untuned > 4 * 16384  # at least the 64 MiB tensor's pages, every round
    assert faults < 1000


@glibc
def test_user_choices_are_left_alone():
    assert _probe("tune", XLRAM_MALLOC="0")[0] == "False"
    assert _probe("tune", MALLOC_TRIM_THRESHOLD_="1000")[0] == "False"


@pytest.mark.parametrize("bad", [0, -1, 2**31, 1.5, True, "1"])
def test_bad_keep_bytes(bad):
    with pytest.raises(ValueError, match="keep_bytes"):
        tune_cpu_allocator(bad)
