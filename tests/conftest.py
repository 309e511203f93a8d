import os

import pytest
import torch


def pytest_configure(config):
    # One torch thread: the setting of the speed benchmarks, and the one under which xlram.ops.cpu_blas
    # sends products to OpenBLAS where its race chose it, so that the default CPU path is the tested
    # one (XLRAM_TEST_THREADS=2 tests torch's products on two threads instead).
    torch.set_num_threads(int(os.environ.get("XLRAM_TEST_THREADS", "1")))


@pytest.fixture
def device():
    """The device tests run on: CUDA when present, else CPU (tests never hard-code 'cuda')."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
