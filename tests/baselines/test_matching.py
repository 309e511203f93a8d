"""Parameter matching: the analytic count equals the real one, and matched configs land within 5%."""

import pytest
import torch

from xlram.baselines import (
    LSTMLM,
    LSTMLMConfig,
    TransformerConfig,
    TransformerLM,
    TransformerLMConfig,
    count_params,
    matched_config,
)
from xlram.models import create_model

CONFIGS = [
    TransformerLMConfig(vocab_size=64, transformer=TransformerConfig(dim=32, num_layers=2, num_heads=4)),
    TransformerLMConfig(vocab_size=100, tie_weights=True, transformer=TransformerConfig(
        dim=96, num_layers=3, num_heads=6, num_kv_heads=2, positions="learned", max_len=40,
        ffn_proj_factor=4, ffn_round_to=32)),
    LSTMLMConfig(vocab_size=64, dim=32),
    LSTMLMConfig(vocab_size=70, dim=20, hidden_dim=36, num_layers=3),
    LSTMLMConfig(vocab_size=70, dim=24, num_layers=1, tie_weights=True),
]


def _build(config):
    return (TransformerLM if isinstance(config, TransformerLMConfig) else LSTMLM)(config)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_count_params_equals_the_built_model(config):
    assert count_params(config) == _build(config).num_params()


def test_count_params_of_a_large_config_on_the_meta_device():
    config = matched_config(125_000_000, "transformer", 50304)
    with torch.device("meta"):
        model = _build(config)
    assert count_params(config) == model.num_params()


XLSTM_DEMO = create_model("lm-xlstm[7:1]-demo").num_params()


@pytest.mark.parametrize("kind", ["transformer", "lstm"])
@pytest.mark.parametrize("target,vocab", [(XLSTM_DEMO, 256), (125_000_000, 50304), (350_000_000, 50304),
                                          (1_300_000_000, 50304), (20_000, 16)])
def test_matched_config_lands_within_five_percent(kind, target, vocab):
    config = matched_config(target, kind, vocab)
    assert abs(count_params(config) - target) / target <= 0.05
    assert config.vocab_size == vocab


def test_matched_transformer_prefers_the_aspect_ratio_and_respects_fixed_sizes():
    config = matched_config(125_000_000, "transformer", 50304)
    t = config.transformer
    assert 32 <= t.dim / t.num_layers <= 128 and t.dim % 64 == 0 and t.head_dim == 64
    fixed = matched_config(125_000_000, "transformer", 50304, num_layers=24, tie_weights=True)
    assert fixed.transformer.num_layers == 24 and fixed.tie_weights
    assert abs(count_params(fixed) / 125e6 - 1) <= 0.05
    wide = matched_config(125_000_000, "transformer", 50304, dim=1024)
    assert wide.transformer.dim == 1024
    gqa = matched_config(2_000_000, "transformer", 256, head_dim=32, num_kv_heads=2)
    assert gqa.transformer.num_heads % 2 == 0 and abs(count_params(gqa) / 2e6 - 1) <= 0.05


def test_matched_lstm_keeps_two_layers_unless_the_width_is_fixed():
    assert matched_config(5_000_000, "lstm", 256).num_layers == 2
    deep = matched_config(6_500_000, "lstm", 256, dim=512)
    assert deep.dim == 512 and deep.num_layers == 3 and abs(count_params(deep) / 6.5e6 - 1) <= 0.05
    tied = matched_config(5_000_000, "lstm", 256, tie_weights=True, num_layers=3)
    assert tied.tie_weights and tied.num_layers == 3 and tied.hidden_dim == tied.dim


def test_the_registered_demos_match_the_xlstm_demo():
    for name in ("lm-transformer-demo", "lm-lstm-demo"):
        assert abs(create_model(name).num_params() / XLSTM_DEMO - 1) <= 0.05, name


def test_impossible_targets_name_the_closest_size():
    # dim 128 with an FFN of 1024: one layer has 524672 parameters (-25%), two 983680 (+41%).
    with pytest.raises(ValueError, match=r"no transformer within 5% of 700000 parameters; the closest is "
                                         r"dim=128, num_layers=1 with 524672 \(-25.0%\)"):
        matched_config(700_000, "transformer", 256, dim=128, ffn_round_to=1024)
    with pytest.raises(ValueError, match="dim=100 is not a multiple of head_dim=64"):
        matched_config(700_000, "transformer", 256, dim=100)
    with pytest.raises(ValueError, match="kind must be one of"):
        matched_config(10_000, "gru", 10)
    with pytest.raises(ValueError, match="target_params must be a positive int"):
        matched_config(0, "lstm", 10)
    with pytest.raises(ValueError, match="give head_dim, not num_heads"):
        matched_config(10_000_000, "transformer", 10, num_heads=4)
