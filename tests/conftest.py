import pytest
import torch


def pytest_configure(config):
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture
def device():
    """The device tests run on: CUDA when present, else CPU (tests never hard-code 'cuda')."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
