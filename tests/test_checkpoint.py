"""save_pretrained / from_pretrained and the generic checkpoint helpers: round trips and clear errors."""

import json
import os

import pytest
import torch
from safetensors import safe_open

from xlram.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    atomic_write_text,
    load_state_dict,
    save_state_dict,
)
from xlram.models import XLSTMLM, create_model


def _model(name="lm-xlstm[1:1]-tiny", dtype=torch.float32, **kw):
    torch.manual_seed(0)
    model = create_model(name, **kw).to(dtype).eval()
    with torch.no_grad():  # move every parameter off its init so that a lost tensor would show
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


def _logits(model, seed=1):
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(ids)[0]


@pytest.mark.parametrize("name,dtype,kw", [
    ("lm-xlstm[1:1]-tiny", torch.float32, {}),
    ("lm-xlstm[1:1]-tiny", torch.float64, {"tie_weights": True}),
    ("lm-large-tiny", torch.float64, {}),
])
def test_round_trip_gives_identical_logits(tmp_path, name, dtype, kw):
    model = _model(name, dtype, **kw)
    path = model.save_pretrained(tmp_path / "ckpt")
    assert sorted(os.listdir(path)) == [CONFIG_NAME, WEIGHTS_NAME]  # no temporary files left behind
    loaded = XLSTMLM.from_pretrained(path)
    assert loaded.config == model.config
    assert not loaded.training
    assert loaded.embedding.weight.dtype == dtype
    torch.testing.assert_close(_logits(loaded), _logits(model), rtol=0, atol=0)
    if kw.get("tie_weights"):
        assert loaded.lm_head.weight is loaded.embedding.weight
        with safe_open(str(path / WEIGHTS_NAME), framework="pt") as f:
            assert "lm_head.weight" not in f.keys() and "embedding.weight" in f.keys()  # stored once


def test_from_pretrained_dtype_override(tmp_path):
    model = _model(dtype=torch.float64)
    loaded = XLSTMLM.from_pretrained(model.save_pretrained(tmp_path), dtype=torch.float32)
    assert loaded.embedding.weight.dtype == torch.float32
    torch.testing.assert_close(_logits(loaded).double(), _logits(model), rtol=1e-5, atol=1e-5)


def test_config_json_is_readable(tmp_path):
    model = _model()
    record = json.loads((model.save_pretrained(tmp_path) / CONFIG_NAME).read_text())
    assert record["model_type"] == "xlstm_lm" and record["dtype"] == "float32"
    assert record["config"] == model.config.to_dict()


# --------------------------------------------------------------------------------------------------
# Errors


@pytest.fixture
def saved(tmp_path):
    model = _model()
    return model.save_pretrained(tmp_path / "ckpt")


def _edit_config(path, fn):
    record = json.loads((path / CONFIG_NAME).read_text())
    fn(record)
    (path / CONFIG_NAME).write_text(json.dumps(record))


def test_missing_directory_and_files(tmp_path, saved):
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        XLSTMLM.from_pretrained(tmp_path / "nowhere")
    (saved / WEIGHTS_NAME).unlink()
    with pytest.raises(CheckpointError, match=f"{WEIGHTS_NAME} not found"):
        XLSTMLM.from_pretrained(saved)
    (saved / CONFIG_NAME).unlink()
    with pytest.raises(CheckpointError, match=f"{CONFIG_NAME} not found"):
        XLSTMLM.from_pretrained(saved)


def test_truncated_weights(saved):
    data = (saved / WEIGHTS_NAME).read_bytes()
    (saved / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    match = rf"{WEIGHTS_NAME} has \d+ bytes, {CONFIG_NAME} records \d+ \(truncated"
    with pytest.raises(CheckpointError, match=match):
        XLSTMLM.from_pretrained(saved)
    # The safetensors reader itself also refuses it, naming the file.
    with pytest.raises(CheckpointError, match=rf"{WEIGHTS_NAME} is not a readable safetensors file"):
        load_state_dict(saved / WEIGHTS_NAME)


def test_corrupted_weights(saved):
    data = bytearray((saved / WEIGHTS_NAME).read_bytes())
    data[-5] ^= 0xFF  # one flipped byte in the tensor data: the header still parses
    (saved / WEIGHTS_NAME).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is corrupt or from another save: its SHA-256 is"):
        XLSTMLM.from_pretrained(saved)


def test_weights_that_are_not_safetensors_are_never_unpickled(saved, tmp_path):
    # A pickle under the weights name: refused as unreadable safetensors, never executed.
    torch.save({"embedding.weight": torch.zeros(3)}, saved / WEIGHTS_NAME)
    _edit_config(saved, lambda r: r.update(weights_bytes=None, weights_sha256=None))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        XLSTMLM.from_pretrained(saved)


def test_config_with_other_shapes_names_key_and_shapes(saved):
    _edit_config(saved, lambda r: r["config"]["xlstm"].update(embedding_dim=64))
    match = (r"does not match the model config:(.|\n)*tensor 'embedding.weight': "
             r"the config expects shape \(64, 64\), the file has \(64, 32\)")
    with pytest.raises(CheckpointError, match=match):
        XLSTMLM.from_pretrained(saved)


def test_config_with_other_blocks_lists_missing_and_unexpected_keys(saved):
    _edit_config(saved, lambda r: r["config"]["xlstm"].update(num_blocks=3, slstm_at=[1, 2]))
    with pytest.raises(CheckpointError, match=r"missing keys .*'stack\.blocks\.2\."):
        XLSTMLM.from_pretrained(saved)
    _edit_config(saved, lambda r: r["config"]["xlstm"].update(num_blocks=1, slstm_at=[]))
    with pytest.raises(CheckpointError, match=r"unexpected keys .*'stack\.blocks\.1\."):
        XLSTMLM.from_pretrained(saved)


def test_bad_config_files(saved):
    (saved / CONFIG_NAME).write_text("{not json")
    with pytest.raises(CheckpointError, match=f"{CONFIG_NAME} is not valid JSON"):
        XLSTMLM.from_pretrained(saved)
    (saved / CONFIG_NAME).write_text(json.dumps({"xlram_format": 1, "model_type": "vil", "config": {}}))
    with pytest.raises(CheckpointError, match="model_type is 'vil', expected 'xlstm_lm'"):
        XLSTMLM.from_pretrained(saved)
    (saved / CONFIG_NAME).write_text(json.dumps({"xlram_format": 99, "model_type": "xlstm_lm", "config": {}}))
    with pytest.raises(CheckpointError, match="xlram_format is 99"):
        XLSTMLM.from_pretrained(saved)
    (saved / CONFIG_NAME).write_text(json.dumps({"xlram_format": 1, "model_type": "xlstm_lm",
                                                 "config": {"vocab_size": 64, "xlstm": {}, "colour": 1}}))
    with pytest.raises(CheckpointError, match=rf"{CONFIG_NAME}: invalid config: .*unknown keys \['colour'\]"):
        XLSTMLM.from_pretrained(saved)


# --------------------------------------------------------------------------------------------------
# Generic helpers


def test_state_dict_aliases_and_overlapping_views(tmp_path):
    base = torch.arange(12.0)
    sd = {"a": base, "b": base, "c": base[:6], "d": torch.ones(2, 3).t()}  # alias, overlap, non-contiguous
    path = save_state_dict(sd, tmp_path / "w.safetensors")
    loaded = load_state_dict(path)
    assert loaded.keys() == sd.keys()
    for k in sd:
        torch.testing.assert_close(loaded[k], sd[k])


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]
