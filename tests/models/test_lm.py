"""XLSTMLM: state carrying (forward == chunked prefill + steps == steps), generation, validation, config."""

import json
import math

import pytest
import torch

from xlram.blocks import xlstm_config
from xlram.models import XLSTMLM, XLSTMLMConfig, create_model

VARIANTS = ["lm-xlstm[1:0]-tiny", "lm-xlstm[7:1]-tiny", "lm-xlstm[0:1]-tiny", "lm-large-tiny"]


def _model(name="lm-xlstm[1:1]-tiny", seed=0, **overrides):
    torch.manual_seed(seed)
    return create_model(name, **overrides).double().eval()


@pytest.fixture(scope="module")
def lm():
    """An fp64 model with mLSTM and sLSTM blocks, shared by the generation tests (they do not modify it)."""
    return _model("lm-xlstm[1:1]-tiny")


def _logits_by_steps(model, ids, state=None):
    out = []
    for t in range(ids.shape[1]):
        logits, state = model.step(ids[:, t], state)
        out.append(logits)
    return torch.stack(out, 1), state


def _assert_states_close(a, b, **tol):
    flat_a, flat_b = torch.utils._pytree.tree_leaves(a), torch.utils._pytree.tree_leaves(b)
    assert len(flat_a) == len(flat_b)
    for x, y in zip(flat_a, flat_b, strict=True):
        torch.testing.assert_close(x, y, **tol)


# --------------------------------------------------------------------------------------------------
# State carrying


CHUNKWISE = {"mlstm_form": "chunkwise", "mlstm_chunk_size": 8}


@pytest.mark.parametrize("name,overrides", [(v, {}) for v in VARIANTS] + [
    ("lm-xlstm[1:0]-tiny", CHUNKWISE), ("lm-large-tiny", CHUNKWISE)],
    ids=VARIANTS + ["lm-xlstm[1:0]-tiny-chunkwise", "lm-large-tiny-chunkwise"])
def test_full_forward_equals_chunked_prefill_plus_steps_equals_steps(name, overrides):
    model = _model(name, **overrides)
    ids = torch.randint(0, model.config.vocab_size, (2, 29), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, full_state = model(ids)
        # Several chunks of uneven length with the state passed on, then single steps.
        state, parts = None, []
        for a, b in [(0, 1), (1, 8), (8, 21)]:
            logits, state = model(ids[:, a:b], state)
            parts.append(logits)
        stepped, state = _logits_by_steps(model, ids[:, 21:], state)
        chunked = torch.cat(parts + [stepped], 1)
        steps, step_state = _logits_by_steps(model, ids, model.init_state(2))
    tol = dict(rtol=1e-9, atol=1e-10)
    assert full.shape == (2, 29, model.config.vocab_size) and full.dtype == torch.float64
    torch.testing.assert_close(chunked, full, **tol)
    torch.testing.assert_close(steps, full, **tol)
    _assert_states_close(state, full_state, **tol)
    _assert_states_close(step_state, full_state, **tol)


def test_state_none_is_zero_state(lm):
    ids = torch.randint(0, 64, (3, 7))
    with torch.no_grad():
        a, _ = lm(ids)
        b, _ = lm(ids, lm.init_state(3))
        c, _ = lm.step(ids[:, 0])
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(c, a[:, 0], rtol=1e-12, atol=1e-12)


def test_logit_soft_cap_bounds_logits():
    model = _model("lm-xlstm[1:0]-tiny", logit_soft_cap=0.5)
    with torch.no_grad():
        logits, _ = model(torch.randint(0, 64, (2, 5)))
    assert logits.abs().max() < 0.5


def test_tied_weights_share_the_matrix():
    model = create_model("lm-xlstm[1:0]-tiny", tie_weights=True)
    assert model.lm_head.weight is model.embedding.weight
    untied = create_model("lm-xlstm[1:0]-tiny")
    assert model.num_params() == untied.num_params() - untied.lm_head.weight.numel()


# --------------------------------------------------------------------------------------------------
# Generation

PROMPTS = [[1, 2, 3, 4, 5], [7], [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 11], [42, 43]]


def _alone(model, prompt, generator_seed=None, **kw):
    gens = None if generator_seed is None else [torch.Generator().manual_seed(generator_seed)]
    return model.generate([prompt], generator=gens, **kw)[0]


def test_greedy_batch_of_different_lengths_equals_each_prompt_alone(lm):
    batch = lm.generate(PROMPTS, 12, temperature=0)
    assert batch.shape == (len(PROMPTS), 12) and batch.dtype == torch.long
    for i, p in enumerate(PROMPTS):
        torch.testing.assert_close(batch[i], _alone(lm, p, max_new_tokens=12, temperature=0), rtol=0, atol=0)


@pytest.mark.parametrize("kw", [dict(temperature=1.0), dict(temperature=0.7, top_k=5),
                                dict(temperature=1.3, top_p=0.8)], ids=["plain", "top_k", "top_p"])
def test_seeded_sampling_batch_equals_each_prompt_alone(lm, kw):
    gens = [torch.Generator().manual_seed(100 + i) for i in range(len(PROMPTS))]
    batch = lm.generate(PROMPTS, 15, generator=gens, **kw)
    for i, p in enumerate(PROMPTS):
        alone = _alone(lm, p, 100 + i, max_new_tokens=15, **kw)
        torch.testing.assert_close(batch[i], alone, rtol=0, atol=0)
    # Sampling does sample: rows differ from greedy somewhere.
    assert not torch.equal(batch, lm.generate(PROMPTS, 15, temperature=0))


def test_sampling_is_reproducible_from_the_seed(lm):
    run = lambda seed: lm.generate(PROMPTS[:2], 20, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_generate_matches_teacher_forced_forward(lm):
    prompt = torch.tensor([PROMPTS[2]])
    new = lm.generate(prompt, 10, temperature=0)
    with torch.no_grad():
        logits, _ = lm(torch.cat([prompt, new], 1))
    # Each generated token is the argmax of the forward's logits one position earlier.
    expected = logits[0, prompt.shape[1] - 1: -1].argmax(-1)
    torch.testing.assert_close(new[0], expected, rtol=0, atol=0)


def test_tensor_prompt_equals_list_prompt(lm):
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert torch.equal(lm.generate(ids, 6, temperature=0), lm.generate(ids.tolist(), 6, temperature=0))


def test_stop_tokens_end_rows_and_pad(lm):
    free = lm.generate(PROMPTS, 12, temperature=0)
    # Stop on the first token of row 0 that did not occur earlier in the row (the later, the better).
    row = free[0].tolist()
    k = max(k for k in range(12) if row[k] not in row[:k])
    stop, pad = row[k], 0 if row[k] != 0 else 1
    out = lm.generate(PROMPTS, 12, temperature=0, stop_tokens=[stop], pad_id=pad)
    assert out[0, k] == stop
    for i in range(len(PROMPTS)):
        got, ref = out[i].tolist(), free[i].tolist()
        j = ref.index(stop) if stop in ref else len(ref)
        assert got[: j + 1] == ref[: j + 1]  # identical up to and including the stop token
        assert all(t == pad for t in got[j + 1:])  # padded after it


def test_generation_ends_early_when_every_row_stopped(lm):
    free = lm.generate(PROMPTS, 10, temperature=0)
    stops = sorted({int(r[0]) for r in free})  # every row stops at its first token
    out = lm.generate(PROMPTS, 10, temperature=0, stop_tokens=stops)
    assert out.shape == (len(PROMPTS), 1)
    torch.testing.assert_close(out[:, 0], free[:, 0], rtol=0, atol=0)


def test_rows_are_padded_with_the_first_stop_token_by_default(lm):
    free = lm.generate(PROMPTS, 6, temperature=0)
    first = int(free[0, 0])
    unused = next(t for t in range(64) if t not in free.flatten().tolist())
    # Another row that never produces `first` keeps generating, so row 0 gets padded.
    i = next((i for i in range(1, len(PROMPTS)) if first not in free[i].tolist()), None)
    if i is None:
        pytest.skip("every row produces the same token; no row to keep going")
    out = lm.generate([PROMPTS[0], PROMPTS[i]], 6, temperature=0, stop_tokens=[unused, first])
    assert out.shape == (2, 6)
    assert out[0].tolist() == [first] + [unused] * 5
    assert out[1].tolist() == free[i].tolist()


def test_top_k_one_and_tiny_top_p_are_greedy(lm):
    greedy = lm.generate(PROMPTS, 10, temperature=0)
    gen = lambda: [torch.Generator().manual_seed(i) for i in range(len(PROMPTS))]
    assert torch.equal(lm.generate(PROMPTS, 10, temperature=1.0, top_k=1, generator=gen()), greedy)
    assert torch.equal(lm.generate(PROMPTS, 10, temperature=1.0, top_p=1e-6, generator=gen()), greedy)


@pytest.mark.parametrize("top_k,top_p", [(3, None), (None, 0.5)])
def test_sampled_tokens_stay_inside_top_k_and_nucleus(lm, top_k, top_p):
    prompt = torch.tensor([PROMPTS[0]])
    new = lm.generate(prompt, 25, temperature=2.0, top_k=top_k, top_p=top_p,
                      generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, _ = lm(torch.cat([prompt, new], 1))
    probs = torch.softmax(logits[0, prompt.shape[1] - 1: -1].float() / 2.0, -1)  # (25, V)
    for t, token in enumerate(new[0].tolist()):
        ranked = probs[t].argsort(descending=True).tolist()
        if top_k is not None:
            assert token in ranked[:top_k]
        else:
            mass_before = probs[t][ranked[: ranked.index(token)]].sum()
            assert mass_before < top_p + 1e-5


def test_sample_frequencies_follow_the_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(4000, 4)
    g = torch.Generator().manual_seed(0)
    tokens = XLSTMLM._sample(logits, list(range(4000)), 1.0, None, None, g)
    freq = torch.bincount(tokens, minlength=4).double() / 4000
    torch.testing.assert_close(freq, probs.double(), rtol=0, atol=0.03)
    for top_p, allowed in [(0.75, {0, 1}), (0.85, {0, 1, 2}), (0.4, {0})]:
        tokens = XLSTMLM._sample(logits, list(range(4000)), 1.0, None, top_p, g)
        assert set(tokens.tolist()) == allowed
    tokens = XLSTMLM._sample(logits, list(range(4000)), 1.0, 2, None, g)
    freq = torch.bincount(tokens, minlength=4).double() / 4000
    torch.testing.assert_close(freq, torch.tensor([0.625, 0.375, 0, 0]).double(), rtol=0, atol=0.03)


def test_max_new_tokens_zero_and_lengths(lm):
    assert lm.generate(PROMPTS, 0).shape == (len(PROMPTS), 0)
    assert lm.generate([[5]], 3, temperature=0).shape == (1, 3)


# --------------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize("bad,err,match", [
    (torch.zeros(2, 3), TypeError, "ids must have an integer dtype"),
    (torch.zeros(2, 3, dtype=torch.bool), TypeError, "integer dtype"),
    (torch.zeros(6, dtype=torch.long), ValueError, r"ids must have shape \(B, S\)"),
    (torch.full((2, 3), 64), ValueError, r"\[0, 64\) \(vocab_size\), found values in \[64, 64\]"),
    (torch.full((2, 3), -1), ValueError, "found values in"),
    (torch.zeros(2, 0, dtype=torch.long), ValueError, "empty"),
    ([[1, 2]], TypeError, "torch.Tensor"),
])
def test_forward_rejects_bad_ids(lm, bad, err, match):
    with pytest.raises(err, match=match):
        lm(bad)


def test_step_rejects_bad_ids(lm):
    with pytest.raises(ValueError, match=r"ids_t must have shape \(B,\)"):
        lm.step(torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="ids_t must lie in"):
        lm.step(torch.tensor([0, 99]))


def test_uint8_and_int32_ids_are_accepted(lm):
    ids = torch.randint(0, 64, (2, 4))
    ref, _ = lm(ids)
    torch.testing.assert_close(lm(ids.to(torch.uint8))[0], ref)
    torch.testing.assert_close(lm(ids.int())[0], ref)


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(prompt_ids=[[1], []]), ValueError, r"prompt_ids\[1\] is empty"),
    (dict(prompt_ids=[[1], [70]]), ValueError, r"prompt_ids\[1\] must lie in \[0, 64\)"),
    (dict(prompt_ids=[[1], torch.zeros(2, 2, dtype=torch.long)]), ValueError, r"prompt_ids\[1\] must be 1-D"),
    (dict(prompt_ids=[]), TypeError, "prompt_ids"),
    (dict(prompt_ids="abc"), TypeError, "prompt_ids"),
    (dict(max_new_tokens=-1), ValueError, "max_new_tokens"),
    (dict(temperature=-0.5), ValueError, "temperature"),
    (dict(top_k=0), ValueError, "top_k"),
    (dict(top_p=1.5), ValueError, "top_p"),
    (dict(stop_tokens=[64]), ValueError, "stop_tokens"),
    (dict(generator=[torch.Generator()]), ValueError, "one torch.Generator per row"),
    (dict(generator="seed"), TypeError, "generator"),
])
def test_generate_rejects_bad_arguments(lm, kwargs, err, match):
    args = dict(prompt_ids=[[1, 2], [3]], max_new_tokens=4) | kwargs
    with pytest.raises(err, match=match):
        lm.generate(**args)


def test_init_state_rejects_bad_batch_size(lm):
    with pytest.raises(ValueError, match="batch_size"):
        lm.init_state(0)


# --------------------------------------------------------------------------------------------------
# Config


def test_config_round_trips_through_json():
    cfg = XLSTMLMConfig(vocab_size=100, xlstm=xlstm_config("xlstm[7:1]", 32, 8), tie_weights=True,
                        logit_soft_cap=30)
    again = XLSTMLMConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and isinstance(again.logit_soft_cap, float)


@pytest.mark.parametrize("kwargs,match", [
    (dict(vocab_size=0), "vocab_size must be a positive int"),
    (dict(vocab_size=3.0), "vocab_size"),
    (dict(tie_weights="yes"), "tie_weights must be a bool"),
    (dict(logit_soft_cap=-1.0), "logit_soft_cap"),
    (dict(logit_soft_cap=math.inf), "logit_soft_cap"),
    (dict(xlstm=3), "xlstm must be an XLSTMConfig"),
])
def test_config_validation_names_the_field(kwargs, match):
    args = dict(vocab_size=10, xlstm=xlstm_config("xlstm[1:0]", 32, 1)) | kwargs
    with pytest.raises(ValueError, match=match):
        XLSTMLMConfig(**args)


def test_config_from_dict_rejects_unknown_and_missing_keys():
    d = XLSTMLMConfig(vocab_size=10, xlstm=xlstm_config("xlstm[1:0]", 32, 1)).to_dict()
    with pytest.raises(ValueError, match=r"unknown keys \['vocab'\]"):
        XLSTMLMConfig.from_dict(d | {"vocab": 3})
    with pytest.raises(ValueError, match=r"missing required keys \['vocab_size'\]"):
        XLSTMLMConfig.from_dict({k: v for k, v in d.items() if k != "vocab_size"})


def test_model_rejects_non_config():
    with pytest.raises(TypeError, match="XLSTMLMConfig"):
        XLSTMLM({"vocab_size": 10})


def test_inference_step_runs_module_hooks():
    """The no-grad step skips nn.Module's call machinery only where no hook would run: a forward hook
    on the head (or the embedding) still sees every step and can change the logits."""
    model = _model("lm-xlstm[1:1]-tiny")
    ids = torch.tensor([3, 5])
    with torch.no_grad():
        plain, _ = model.step(ids)
        seen = []
        handle = model.lm_head.register_forward_hook(lambda mod, inp, out: seen.append(1) or out * 2)
        try:
            hooked, _ = model.step(ids)
        finally:
            handle.remove()
        emb_handle = model.embedding.register_forward_pre_hook(lambda mod, inp: (torch.zeros_like(inp[0]),))
        try:
            zero_ids, _ = model.step(ids)
        finally:
            emb_handle.remove()
        ref_zero, _ = model.step(torch.zeros_like(ids))
    assert seen == [1]
    torch.testing.assert_close(hooked, plain * 2)
    torch.testing.assert_close(zero_ids, ref_zero)
