"""TransformerLM specifics: rotary positions, the KV cache (growth, in-place writes, gradients), learned
positions and their limit, config validation."""

import json

import pytest
import torch

from xlram.baselines import KVCache, TransformerConfig, TransformerLM, TransformerLMConfig
from xlram.baselines.transformer import apply_rope, rope_angles
from xlram.models import create_model


def _model(name="lm-transformer-tiny", seed=0, **overrides):
    torch.manual_seed(seed)
    return create_model(name, **overrides).double().eval()


def test_rope_scores_depend_only_on_the_offset():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16, generator=g, dtype=torch.float64), torch.randn(1, 1, 1, 16, generator=g,
                                                                                    dtype=torch.float64)

    def score(m, n):
        cq, sq = rope_angles(torch.tensor([m]), 16, 10000.0, torch.float64)
        ck, sk = rope_angles(torch.tensor([n]), 16, 10000.0, torch.float64)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    torch.testing.assert_close(score(7, 3), score(107, 103), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(score(0, 0), (q * k).sum(), rtol=1e-12, atol=1e-12)  # position 0: no rotation
    assert not torch.allclose(score(7, 3), score(7, 4))
    # A rotation keeps the norm.
    c, s = rope_angles(torch.tensor([5]), 16, 10000.0, torch.float64)
    torch.testing.assert_close(apply_rope(q, c, s).norm(), q.norm())


def test_the_cache_grows_by_doubling_and_keeps_its_buffers_when_presized():
    model = _model()
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        state, capacities = model.init_state(2), []
        for t in range(9):
            _, state = model.step(ids[:, t], state)
            capacities.append(state.capacity)
        assert capacities == [1, 2, 4, 4, 8, 8, 8, 8, 16]
        assert state.length == 9

        presized = model.init_state(2, max_len=9)
        pointers = {k.data_ptr() for k in presized.keys}
        for t in range(9):
            _, presized = model.step(ids[:, t], presized)
        # Written in place: the same buffers throughout.
        assert presized.capacity == 9 and {k.data_ptr() for k in presized.keys} == pointers
    torch.testing.assert_close(presized.trimmed().keys[1], state.trimmed().keys[1], rtol=0, atol=0)


def test_a_cloned_cache_is_independent():
    model = _model()
    ids = torch.randint(0, 64, (1, 6))
    with torch.no_grad():
        _, state = model(ids[:, :3], model.init_state(1, max_len=6))
        copy = state.clone()
        a, _ = model(ids[:, 3:], state)  # writes into state's spare slots
        b, _ = model(ids[:, 3:], copy)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert copy.keys[0].data_ptr() != state.keys[0].data_ptr()


def test_gradients_flow_through_chunked_calls_and_match_the_full_forward():
    model = _model()
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(4))
    target = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(5))
    loss = lambda logits: torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())

    full, _ = model(ids)
    loss(full).backward()
    full_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    presized = model.init_state(2, max_len=12)  # with autograd the cache is rebuilt, never written in place
    first, state = model(ids[:, :5], presized)
    second, state = model(ids[:, 5:], state)
    loss(torch.cat([first, second], 1)).backward()
    assert presized.keys[0].abs().sum() == 0
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, full_grads[n], rtol=1e-9, atol=1e-12, msg=n)


def test_learned_positions_stop_at_max_len_with_a_clear_error():
    model = _model("lm-transformer-learnedpos-tiny", max_len=8)
    with torch.no_grad():
        model(torch.zeros(1, 8, dtype=torch.long))  # exactly max_len is fine
        with pytest.raises(ValueError, match=r"positions 0..8 exceed max_len=8"):
            model(torch.zeros(1, 9, dtype=torch.long))
        _, state = model(torch.zeros(1, 6, dtype=torch.long))
        with pytest.raises(ValueError, match=r"positions 6..8 exceed max_len=8 \(6 cached \+ 3 new tokens\)"):
            model(torch.zeros(1, 3, dtype=torch.long), state)
        _, state = model(torch.zeros(1, 2, dtype=torch.long), state)
        with pytest.raises(ValueError, match="positions 8..8 exceed max_len=8"):
            model.step(torch.zeros(1, dtype=torch.long), state)
    # generate feeds the longest prompt plus max_new_tokens - 1 tokens.
    assert model.generate([[1, 2, 3], [4]], 6, temperature=0).shape == (2, 6)
    with pytest.raises(ValueError, match=r"needs 9 positions, more than max_len=8"):
        model.generate([[1, 2, 3], [4]], 7, temperature=0)
    with pytest.raises(ValueError, match="exceeds the model's max_len=8"):
        model.init_state(1, max_len=9)


def test_rope_with_a_max_len_enforces_it_too():
    model = _model(max_len=4)
    with pytest.raises(ValueError, match="exceed max_len=4"):
        model(torch.zeros(1, 5, dtype=torch.long))


def test_kv_cache_with_the_wrong_layout_is_rejected():
    model = _model()
    with torch.no_grad():
        _, state = model(torch.zeros(2, 3, dtype=torch.long))
        with pytest.raises(ValueError, match="the KVCache has 1 layers, the model 2"):
            model(torch.zeros(2, 1, dtype=torch.long), KVCache(state.keys[:1], state.values[:1], 3))
        with pytest.raises(ValueError, match=r"C>=5"):
            model(torch.zeros(2, 1, dtype=torch.long), state._replace(length=5))


def test_tied_weights_and_parameter_count():
    tied, untied = create_model("lm-transformer-tiny", tie_weights=True), create_model("lm-transformer-tiny")
    assert tied.lm_head.weight is tied.embedding.weight
    assert tied.num_params() == untied.num_params() - untied.lm_head.weight.numel()
    assert tied.num_params(non_embedding=True) == tied.num_params() - 64 * 32


def test_swiglu_has_no_biases_and_the_llama_hidden_size():
    model = create_model("lm-transformer-tiny", dim=96, num_heads=3)
    assert not any(name.endswith("bias") for name, _ in model.named_parameters())
    ffn = model.stack.blocks[0].ffn
    assert ffn.act_name == "swish" and ffn.hidden_dim == 256  # 8/3 * 96 = 256


# --------------------------------------------------------------------------------------------------
# Config


def test_config_round_trips_through_json():
    cfg = TransformerLMConfig(vocab_size=100, transformer=TransformerConfig(
        dim=64, num_layers=3, num_heads=4, num_kv_heads=2, positions="learned", max_len=128, dropout=0.1),
        tie_weights=True)
    again = TransformerLMConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


@pytest.mark.parametrize("kwargs,match", [
    (dict(dim=30, num_heads=4), r"dim \(30\) must be divisible by num_heads \(4\)"),
    (dict(num_kv_heads=3), r"num_kv_heads \(3\) must divide num_heads \(4\)"),
    (dict(positions="alibi"), "positions must be 'rope' or 'learned'"),
    (dict(positions="learned"), "max_len is required with positions='learned'"),
    (dict(dim=12, num_heads=4), "RoPE needs an even head size"),
    (dict(num_layers=0), "num_layers must be a positive int"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
    (dict(rope_base=-1), "rope_base must be a positive number"),
])
def test_config_validation_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TransformerConfig(**(dict(dim=32, num_layers=2, num_heads=4) | kwargs))


def test_lm_config_validation():
    stack = TransformerConfig(dim=32, num_layers=1, num_heads=4)
    with pytest.raises(ValueError, match="vocab_size must be a positive int"):
        TransformerLMConfig(vocab_size=0, transformer=stack)
    with pytest.raises(ValueError, match=r"unknown keys \['heads'\]"):
        TransformerConfig.from_dict(stack.to_dict() | {"heads": 2})
    with pytest.raises(ValueError, match=r"missing required keys \['transformer'\]"):
        TransformerLMConfig.from_dict({"vocab_size": 10})
    with pytest.raises(TypeError, match="TransformerLMConfig"):
        TransformerLM(stack)
