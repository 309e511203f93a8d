"""Generic checks over every registered model: output shape, finite values, a gradient for every parameter."""

import pytest
import torch

from xlram.models import XLSTMLM, create_model, get_model_entry, list_models, register_model

TINY = list_models("-tiny")


def test_every_architecture_has_a_tiny_variant():
    for name in ["lm-xlstm[1:0]-tiny", "lm-xlstm[7:1]-tiny", "lm-xlstm[0:1]-tiny", "lm-xlstm[1:1]-tiny",
                 "lm-large-tiny"]:
        assert name in TINY


def _lm_loss(model, batch=2, seq=12):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq + 1), generator=g)
    logits, state = model(ids[:, :-1])
    assert logits.shape == (batch, seq, model.config.vocab_size)
    assert isinstance(state, tuple)
    assert torch.isfinite(logits).all()
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())


# How to get a scalar loss from a model of each task; a new task adds its entry here.
LOSSES = {"lm": _lm_loss}


@pytest.mark.parametrize("name", TINY)
def test_tiny_model_forward_and_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    entry = get_model_entry(name)
    assert entry.task in LOSSES, f"no generic test input for task {entry.task!r}: add one to LOSSES"
    model = create_model(name).train()
    loss = LOSSES[entry.task](model)
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}: {pname} has an all-zero gradient"


def test_overrides_reach_the_config():
    model = create_model("lm-xlstm[1:0]-tiny", vocab_size=10, embedding_dim=64, tie_weights=True,
                         mlstm_num_heads=2)
    assert isinstance(model, XLSTMLM)
    assert model.config.vocab_size == 10 and model.config.tie_weights
    assert model.config.xlstm.embedding_dim == 64 and model.config.xlstm.mlstm_num_heads == 2


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(KeyError, match=r"unknown model 'lm-nope'.*lm-xlstm\[1:0\]-tiny"):
        create_model("lm-nope")


def test_registering_a_name_twice_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        register_model("lm-xlstm[1:0]-tiny", task="lm")(lambda **kw: None)


def test_list_models_filters_by_substring_and_task():
    assert list_models("xlstm[7:1]") == ["lm-xlstm[7:1]-demo", "lm-xlstm[7:1]-tiny"]
    assert set(list_models(task="lm")) >= set(TINY)
