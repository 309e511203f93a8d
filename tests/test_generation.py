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


@pytest.mark.parametrize("top_k", [None, 1, 40, 299, 300])
def test_cpu_sampling_kernel_draws_what_the_torch_form_draws(monkeypatch, top_k):
    """The numba inverse-CDF lookup (CPU, temperature and top-k, no nucleus) gives the torch form's
    tokens from the same generator state, for one generator and for one generator per row."""
    pytest.importorskip("numba")
    import xlram.generation as gen

    logits = torch.randn(64, 300, generator=torch.Generator().manual_seed(0)) * 3
    logits[:, 7] = float("-inf")  # a masked token is never drawn
    rows = list(range(0, 64, 2))

    def draw(temperature, per_row):
        gens = ([torch.Generator().manual_seed(i) for i in range(64)] if per_row
                else torch.Generator().manual_seed(1))
        return gen.sample_tokens(logits, rows, temperature, top_k, None, gens)

    assert gen._SAMPLING.get() is not None
    fast = {(t, p): draw(t, p) for t in (0.5, 1.0, 2.0) for p in (False, True)}
    monkeypatch.setattr(gen._SAMPLING, "get", lambda: None)
    allowed = logits.topk(top_k or 300, dim=-1).indices if top_k and top_k < 300 else None
    for key, tokens in fast.items():
        torch.testing.assert_close(tokens[rows], draw(*key)[rows], rtol=0, atol=0)
        assert not (tokens[rows] == 7).any()
        if allowed is not None:  # only the k most likely tokens are drawn
            assert all(int(t) in allowed[r].tolist() for r, t in zip(rows, tokens[rows], strict=True))


@pytest.mark.parametrize("stops", [(), "found"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_equal_length_prompts_decode_as_the_general_loop(stops, temperature):
    """Prompts of one length take a shorter loop; it gives the general loop's tokens, stop handling
    and padding (the general loop forced by one more, unused, column of padding)."""
    from xlram.generation import decode
    from xlram.models import create_model

    torch.manual_seed(0)
    model = create_model("lm-xlstm[1:1]-tiny").double().eval()
    prompts = torch.randint(0, 64, (3, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        free = model.generate(prompts, 12, temperature=0)
        stop_list = [int(free[0, 4]), int(free[2, 1])] if stops == "found" else []

        def run(p):
            gens = [torch.Generator().manual_seed(10 + i) for i in range(3)]
            return decode(model._prefill, model._step, p, [5, 5, 5], 12, temperature=temperature,
                          stops=stop_list, pad_id=63, generators=gens)

        fast = run(prompts)
        general = run(torch.cat([prompts, torch.zeros(3, 1, dtype=torch.long)], 1))
    torch.testing.assert_close(fast, general, rtol=0, atol=0)
    if stops and temperature == 0:
        assert (fast == 63).any()  # some row stopped and was padded
