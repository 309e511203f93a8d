"""The XLSTMLM interface, checked on every baseline: state carrying, generation, checkpoints, bad input."""

import pytest
import torch

from xlram.baselines import LSTMLM, TransformerLM
from xlram.checkpoint import CheckpointError
from xlram.models import create_model

# (registered name, overrides): each position scheme, grouped-query attention, tied weights, LSTM shapes.
VARIANTS = {
    "transformer-rope": ("lm-transformer-tiny", {}),
    "transformer-learned": ("lm-transformer-learnedpos-tiny", {}),
    "transformer-gqa-tied": ("lm-transformer-tiny", {"num_kv_heads": 2, "tie_weights": True}),
    "lstm": ("lm-lstm-tiny", {}),
    "lstm-3layers-wide": ("lm-lstm-tiny", {"num_layers": 3, "hidden_dim": 48}),
}
PROMPTS = [[1, 2, 3, 4, 5], [7], [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 11], [42, 43]]


def _model(key, seed=0):
    name, overrides = VARIANTS[key]
    torch.manual_seed(seed)
    return create_model(name, **overrides).double().eval()


@pytest.fixture(scope="module", params=list(VARIANTS))
def model(request):
    """An fp64 model per variant, shared by the tests of this module (they do not modify it)."""
    return _model(request.param)


def _logits_by_steps(model, ids, state=None):
    out = []
    for t in range(ids.shape[1]):
        logits, state = model.step(ids[:, t], state)
        out.append(logits)
    return torch.stack(out, 1), state


def _comparable(state):
    """A state's tensors, with a KV cache cut to its length (the slots after it are spare capacity)."""
    state = state.trimmed() if hasattr(state, "trimmed") else state
    return torch.utils._pytree.tree_leaves(state)


def _assert_states_close(a, b, **tol):
    flat_a, flat_b = _comparable(a), _comparable(b)
    assert len(flat_a) == len(flat_b)
    for x, y in zip(flat_a, flat_b, strict=True):
        if isinstance(x, torch.Tensor):
            torch.testing.assert_close(x, y, **tol)
        else:
            assert x == y


# --------------------------------------------------------------------------------------------------
# State carrying


def test_full_forward_equals_chunked_prefill_plus_steps_equals_steps(model):
    ids = torch.randint(0, model.config.vocab_size, (2, 29), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, full_state = model(ids)
        # Chunks of uneven length with the state passed on, then single steps.
        state, parts = None, []
        for a, b in [(0, 1), (1, 8), (8, 21)]:
            logits, state = model(ids[:, a:b], state)
            parts.append(logits)
        stepped, state = _logits_by_steps(model, ids[:, 21:], state)
        chunked = torch.cat(parts + [stepped], 1)
        steps, step_state = _logits_by_steps(model, ids, model.init_state(2))
    tol = dict(rtol=1e-9, atol=1e-10)
    assert full.shape == (2, 29, model.config.vocab_size) and full.dtype == torch.float64
    assert isinstance(full_state, tuple)
    torch.testing.assert_close(chunked, full, **tol)
    torch.testing.assert_close(steps, full, **tol)
    _assert_states_close(state, full_state, **tol)
    _assert_states_close(step_state, full_state, **tol)


def test_state_none_is_the_initial_state(model):
    ids = torch.randint(0, 64, (3, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, _ = model(ids)
        b, _ = model(ids, model.init_state(3))
        c, _ = model.step(ids[:, 0])
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c, a[:, 0], rtol=1e-12, atol=1e-12)


def test_one_state_continues_the_same_way_twice(model):
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _, state = model(ids[:, :5])
        first, _ = model(ids[:, 5:], state)
        second, _ = model(ids[:, 5:], state)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# Generation


def _alone(model, prompt, generator_seed=None, **kw):
    gens = None if generator_seed is None else [torch.Generator().manual_seed(generator_seed)]
    return model.generate([prompt], generator=gens, **kw)[0]


def test_greedy_batch_of_different_lengths_equals_each_prompt_alone(model):
    batch = model.generate(PROMPTS, 12, temperature=0)
    assert batch.shape == (len(PROMPTS), 12) and batch.dtype == torch.long
    for i, p in enumerate(PROMPTS):
        assert torch.equal(batch[i], _alone(model, p, max_new_tokens=12, temperature=0))


@pytest.mark.parametrize("kw", [dict(temperature=1.0), dict(temperature=0.7, top_k=5),
                                dict(temperature=1.3, top_p=0.8)], ids=["plain", "top_k", "top_p"])
def test_seeded_sampling_batch_equals_each_prompt_alone(model, kw):
    gens = [torch.Generator().manual_seed(100 + i) for i in range(len(PROMPTS))]
    batch = model.generate(PROMPTS, 15, generator=gens, **kw)
    for i, p in enumerate(PROMPTS):
        assert torch.equal(batch[i], _alone(model, p, 100 + i, max_new_tokens=15, **kw))
    assert not torch.equal(batch, model.generate(PROMPTS, 15, temperature=0))


def test_generate_matches_teacher_forced_forward(model):
    prompt = torch.tensor([PROMPTS[2]])
    new = model.generate(prompt, 10, temperature=0)
    with torch.no_grad():
        logits, _ = model(torch.cat([prompt, new], 1))
    # Each generated token is the argmax of the forward's logits one position earlier.
    assert torch.equal(new[0], logits[0, prompt.shape[1] - 1: -1].argmax(-1))


def test_stop_tokens_end_rows_and_pad(model):
    free = model.generate(PROMPTS, 10, temperature=0)
    stop = int(free[0, 3])
    pad = 0 if stop != 0 else 1
    out = model.generate(PROMPTS, 10, temperature=0, stop_tokens=[stop], pad_id=pad)
    for i in range(len(PROMPTS)):
        got, ref = out[i].tolist(), free[i].tolist()
        j = ref.index(stop) if stop in ref else len(ref)
        assert got[: j + 1] == ref[: j + 1]
        assert all(t == pad for t in got[j + 1:])


def test_generate_on_the_test_device(device):
    torch.manual_seed(0)
    for name in ("lm-transformer-tiny", "lm-lstm-tiny"):
        model = create_model(name).to(device).eval()
        batch = model.generate(PROMPTS[:3], 6, temperature=0)
        assert batch.device.type == device.type
        for i, p in enumerate(PROMPTS[:3]):
            assert torch.equal(batch[i], model.generate([p], 6, temperature=0)[0])


# --------------------------------------------------------------------------------------------------
# Checkpoints


@pytest.mark.parametrize("key", list(VARIANTS))
def test_save_and_load_round_trip(key, tmp_path):
    model = _model(key, seed=5)
    model.save_pretrained(tmp_path / "ckpt")
    again = type(model).from_pretrained(tmp_path / "ckpt")
    assert again.config == model.config
    assert next(again.parameters()).dtype == torch.float64
    if model.config.tie_weights:
        assert again.lm_head.weight is again.embedding.weight
    ids = torch.randint(0, 64, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(again(ids)[0], model(ids)[0], rtol=0, atol=0)


def test_a_checkpoint_of_one_kind_does_not_load_as_another(tmp_path):
    create_model("lm-transformer-tiny").save_pretrained(tmp_path / "t")
    with pytest.raises(CheckpointError, match="model_type is 'transformer_lm', expected 'lstm_lm'"):
        LSTMLM.from_pretrained(tmp_path / "t")
    with pytest.raises(CheckpointError, match="expected 'transformer_lm'"):
        create_model("lm-lstm-tiny").save_pretrained(tmp_path / "l")
        TransformerLM.from_pretrained(tmp_path / "l")


# --------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("bad,err,match", [
    (torch.zeros(2, 3), TypeError, "ids must have an integer dtype"),
    (torch.zeros(6, dtype=torch.long), ValueError, r"ids must have shape \(B, S\)"),
    (torch.full((2, 3), 64), ValueError, r"\[0, 64\) \(vocab_size\), found values in \[64, 64\]"),
    (torch.full((2, 3), -1), ValueError, "found values in"),
    (torch.zeros(2, 0, dtype=torch.long), ValueError, "empty"),
    ([[1, 2]], TypeError, "torch.Tensor"),
])
def test_forward_rejects_bad_ids(model, bad, err, match):
    with pytest.raises(err, match=match):
        model(bad)


def test_step_rejects_bad_ids(model):
    with pytest.raises(ValueError, match=r"ids_t must have shape \(B,\)"):
        model.step(torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="ids_t must lie in"):
        model.step(torch.tensor([0, 99]))


def test_a_state_for_another_batch_size_is_rejected(model):
    with torch.no_grad():
        _, state = model(torch.zeros(3, 4, dtype=torch.long))
        with pytest.raises(ValueError, match="state|KVCache"):
            model(torch.zeros(2, 4, dtype=torch.long), state)
        with pytest.raises(ValueError, match="state must be"):
            model.step(torch.zeros(3, dtype=torch.long), "not a state")


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(prompt_ids=[[1], []]), ValueError, r"prompt_ids\[1\] is empty"),
    (dict(prompt_ids=[[1], [70]]), ValueError, r"prompt_ids\[1\] must lie in \[0, 64\)"),
    (dict(prompt_ids="abc"), TypeError, "prompt_ids"),
    (dict(max_new_tokens=-1), ValueError, "max_new_tokens"),
    (dict(temperature=-0.5), ValueError, "temperature"),
    (dict(top_k=0), ValueError, "top_k"),
    (dict(top_p=1.5), ValueError, "top_p"),
    (dict(stop_tokens=[64]), ValueError, "stop_tokens"),
    (dict(generator=[torch.Generator()]), ValueError, "one torch.Generator per row"),
])
def test_generate_rejects_bad_arguments(kwargs, err, match):
    for name in ("lm-transformer-tiny", "lm-lstm-tiny"):
        model = create_model(name)
        with pytest.raises(err, match=match):
            model.generate(**(dict(prompt_ids=[[1, 2], [3]], max_new_tokens=4) | kwargs))


def test_init_state_rejects_bad_batch_size():
    for name in ("lm-transformer-tiny", "lm-lstm-tiny"):
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            create_model(name).init_state(0)
