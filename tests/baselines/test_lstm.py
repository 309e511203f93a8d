"""LSTMLM specifics: the (h, c) state, the forget-gate bias, tied weights, config validation."""

import json

import pytest
import torch

from xlram.baselines import LSTMLM, LSTMLMConfig
from xlram.models import create_model


def test_state_is_h_and_c_of_every_layer_and_is_not_modified():
    torch.manual_seed(0)
    model = create_model("lm-lstm-tiny", num_layers=3, hidden_dim=40).eval()
    with torch.no_grad():
        _, (h, c) = model(torch.randint(0, 64, (5, 4)))
        assert h.shape == c.shape == (3, 5, 40)
        before = h.clone()
        model.step(torch.zeros(5, dtype=torch.long), (h, c))
    assert torch.equal(h, before)


def test_forget_gates_start_open():
    model = LSTMLM(LSTMLMConfig(vocab_size=10, dim=8, hidden_dim=6, num_layers=2, forget_bias=1.5))
    for layer in range(2):
        b = getattr(model.lstm, f"bias_ih_l{layer}") + getattr(model.lstm, f"bias_hh_l{layer}")
        torch.testing.assert_close(b[6:12], torch.full((6,), 1.5))


def test_tied_weights_share_the_matrix():
    tied = create_model("lm-lstm-tiny", tie_weights=True)
    assert tied.lm_head.weight is tied.embedding.weight
    untied = create_model("lm-lstm-tiny")
    assert tied.num_params() == untied.num_params() - untied.lm_head.weight.numel()


def test_dropout_only_while_training():
    torch.manual_seed(0)
    model = create_model("lm-lstm-tiny", dropout=0.5)
    ids = torch.randint(0, 64, (2, 6))
    model.train()
    assert not torch.equal(model(ids)[0], model(ids)[0])
    model.eval()
    assert torch.equal(model(ids)[0], model(ids)[0])


def test_config_round_trips_through_json():
    cfg = LSTMLMConfig(vocab_size=50, dim=16, hidden_dim=24, num_layers=3, dropout=0.2)
    assert LSTMLMConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert LSTMLMConfig(vocab_size=5, dim=16).hidden_dim == 16


@pytest.mark.parametrize("kwargs,match", [
    (dict(vocab_size=0), "vocab_size must be a positive int"),
    (dict(num_layers=0), "num_layers must be a positive int"),
    (dict(hidden_dim=-3), "hidden_dim must be a positive int"),
    (dict(dropout=-0.1), r"dropout must be in \[0, 1\)"),
    (dict(tie_weights=True, hidden_dim=24), "tie_weights needs hidden_dim == dim"),
    (dict(tie_weights=1), "tie_weights must be a bool"),
])
def test_config_validation_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LSTMLMConfig(**(dict(vocab_size=10, dim=16) | kwargs))


def test_from_dict_rejects_unknown_and_missing_keys():
    d = LSTMLMConfig(vocab_size=10).to_dict()
    with pytest.raises(ValueError, match=r"unknown keys \['hidden'\]"):
        LSTMLMConfig.from_dict(d | {"hidden": 3})
    with pytest.raises(ValueError, match=r"missing required keys \['vocab_size'\]"):
        LSTMLMConfig.from_dict({k: v for k, v in d.items() if k != "vocab_size"})
    with pytest.raises(TypeError, match="LSTMLMConfig"):
        LSTMLM({"vocab_size": 10})
