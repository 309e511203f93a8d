"""TrainConfig validation and JSON round trip; AdamW groups; the warm-up + cosine schedule."""

import json
import math

import pytest
import torch

from xlram.models.registry import create_model
from xlram.train import RESUMABLE_FIELDS, TrainConfig, WarmupCosine, build_optimizer, lr_at, param_groups


def test_config_round_trips_through_json():
    config = TrainConfig(max_steps=7, betas=(0.8, 0.99), clip_grad_norm=None, bf16=True, out_dir="x")
    again = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.betas == (0.8, 0.99)


@pytest.mark.parametrize("field, value", [
    ("max_steps", 0), ("batch_size", -1), ("grad_accum_steps", 1.5), ("lr", 0.0), ("lr", float("nan")),
    ("min_lr_ratio", 1.5), ("warmup_steps", -1), ("weight_decay", -0.1), ("betas", (0.9,)),
    ("betas", (0.9, 1.0)), ("clip_grad_norm", 0.0), ("bf16", 1), ("strategy", "deepspeed"), ("seed", -1),
    ("keep_last", -1), ("out_dir", ""),
])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig.{field}"):
        TrainConfig(**{field: value})


def test_config_batch_must_split_into_micro_batches():
    with pytest.raises(ValueError, match="multiple of grad_accum_steps"):
        TrainConfig(batch_size=6, grad_accum_steps=4)


def test_config_unknown_keys_are_named():
    with pytest.raises(ValueError, match="unknown keys \\['learning_rate'\\]"):
        TrainConfig.from_dict({"learning_rate": 1e-3})


def test_differences_ignore_what_may_change_on_resume():
    a = TrainConfig(out_dir="a", keep_last=1, eval_every=5, lr=1e-3)
    b = TrainConfig(out_dir="b", keep_last=9, eval_every=0, lr=2e-3)
    assert a.differences(b) == ["lr: 0.001 != 0.002"]
    assert {"out_dir", "keep_last", "eval_every"} <= RESUMABLE_FIELDS


def test_schedule_warmup_then_cosine_to_the_floor():
    kw = dict(lr=1.0, warmup_steps=4, max_steps=20, min_lr_ratio=0.1)
    lrs = [lr_at(s, **kw) for s in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]  # linear warm-up, the peak at its last step
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:], strict=False))  # then never rising
    assert math.isclose(lrs[-1], 0.1) and math.isclose(lr_at(25, **kw), 0.1)  # floor at the end and after
    mid = 4 + (19 - 4) / 2
    assert math.isclose(lr_at(mid, **kw), 0.55)  # half way down the cosine
    assert lr_at(0, lr=1.0, warmup_steps=0, max_steps=1, min_lr_ratio=0.0) == 1.0


def test_scheduler_state_is_the_step():
    model = torch.nn.Linear(2, 2)
    config = TrainConfig(lr=1.0, warmup_steps=2, max_steps=10)
    sched = WarmupCosine(build_optimizer(model, config), config)
    for _ in range(3):
        sched.apply()
        sched.step()
    other = WarmupCosine(build_optimizer(model, config), config)
    other.load_state_dict(json.loads(json.dumps(sched.state_dict())))
    assert other.apply() == sched.apply() == lr_at(3, lr=1.0, warmup_steps=2, max_steps=10, min_lr_ratio=0.1)
    with pytest.raises(ValueError, match="scheduler state"):
        other.load_state_dict({"step": -1})


def test_weight_decay_only_on_matrices():
    model = create_model("lm-xlstm[1:1]-tiny", vocab_size=256)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    n_params = sum(1 for p in model.parameters() if p.requires_grad)
    assert len(decay["params"]) + len(no_decay["params"]) == n_params
    assert any(p is model.embedding.weight for p in decay["params"])
