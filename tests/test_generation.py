"""xlram.generation: what the shared GenerationMixin asks of a model. The decode loop itself is
exercised through every language model's generate tests (tests/models, tests/baselines)."""

import pytest
import torch
from torch import nn

from xlram.generation import GenerationMixin


def test_a_model_without_prefill_says_what_it_misses():
    class NoPrefill(GenerationMixin, nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))
            self.config = type("C", (), {"vocab_size": 4})()

    with pytest.raises(NotImplementedError, match=r"NoPrefill must define _prefill\(ids, total_len\)"):
        NoPrefill().generate([[1]], 2)
