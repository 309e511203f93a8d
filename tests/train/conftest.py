import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    # The cores are shared with other jobs; one intra-op thread keeps these small steps fast and steady.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
