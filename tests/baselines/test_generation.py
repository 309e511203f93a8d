"""xlram.generation: the generic decode loop reproduces XLSTMLM.generate token for token, so XLSTMLM can
switch to GenerationMixin without changing its outputs."""

import pytest
import torch
from torch import nn

from xlram.generation import GenerationMixin, sample_tokens
from xlram.models import XLSTMLM, create_model

PROMPTS = [[1, 2, 3, 4, 5], [7], [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 11], [42, 43]]


class MixinXLSTM(GenerationMixin, nn.Module):
    """An XLSTMLM whose generate comes from the mixin (what XLSTMLM would look like after the switch)."""

    def __init__(self, lm: XLSTMLM):
        super().__init__()
        self.lm, self.config = lm, lm.config

    def _prefill(self, ids, total_len):
        h, state = self.lm.stack(self.lm.embedding(ids))
        return self.lm._head(h[:, -1]), state

    def _step(self, ids_t, state):
        return self.lm._step(ids_t, state)


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    lm = create_model("lm-xlstm[1:1]-tiny").double().eval()
    return lm, MixinXLSTM(lm)


@pytest.mark.parametrize("kw", [
    dict(temperature=0),
    dict(temperature=1.0, generator="per-row"),
    dict(temperature=0.8, top_k=5, generator="per-row"),
    dict(temperature=1.2, top_p=0.7, generator="shared"),
    dict(temperature=0, stop_tokens="found", pad_id=0),
], ids=["greedy", "per-row", "top_k", "top_p-shared", "stop"])
def test_mixin_generate_equals_xlstmlm_generate(pair, kw):
    lm, mixin = pair
    if kw.get("stop_tokens") == "found":
        kw = kw | {"stop_tokens": [int(lm.generate(PROMPTS, 8, temperature=0)[1, 2])]}

    def gens():
        if kw.get("generator") == "per-row":
            return [torch.Generator().manual_seed(10 + i) for i in range(len(PROMPTS))]
        if kw.get("generator") == "shared":
            return torch.Generator().manual_seed(10)
        return None

    args = kw | {"generator": gens()}
    expected = lm.generate(PROMPTS, 8, **args)
    args = kw | {"generator": gens()}
    assert torch.equal(mixin.generate(PROMPTS, 8, **args), expected)


def test_sample_tokens_equals_xlstmlm_sample():
    logits = torch.randn(6, 20, generator=torch.Generator().manual_seed(0))
    for top_k, top_p in [(None, None), (4, None), (None, 0.6)]:
        a = sample_tokens(logits, [0, 2, 5], 0.9, top_k, top_p, torch.Generator().manual_seed(1))
        b = XLSTMLM._sample(logits, [0, 2, 5], 0.9, top_k, top_p, torch.Generator().manual_seed(1))
        assert torch.equal(a, b)
    assert GenerationMixin._sample is sample_tokens or GenerationMixin._sample == sample_tokens


def test_a_model_without_prefill_says_what_it_misses():
    class NoPrefill(GenerationMixin, nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))
            self.config = type("C", (), {"vocab_size": 4})()

    with pytest.raises(NotImplementedError, match=r"NoPrefill must define _prefill\(ids, total_len\)"):
        NoPrefill().generate([[1]], 2)
