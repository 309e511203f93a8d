"""The CUDA kernel benchmark refuses to run without a GPU instead of writing numbers."""

import types

import pytest
import torch


def test_exits_without_cuda(monkeypatch, tmp_path):
    from benchmarks import SUITES, ops_cuda

    assert SUITES["ops_cuda"] == "benchmarks.ops_cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = types.SimpleNamespace(quick=True, out=str(tmp_path), device="cuda")
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        ops_cuda.run(args)
    assert not list(tmp_path.iterdir())
