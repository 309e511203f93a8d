"""The kernel registry: lazy imports, availability checks and error messages."""

import subprocess
import sys

import pytest
import torch


def test_import_does_not_import_triton():
    """``import xlram.kernels`` and the CPU paths of the public ops never import triton."""
    code = (
        "import sys, torch, xlram.kernels\n"
        "from xlram import kernels\n"
        "from xlram.ops.mlstm import mlstm, mlstm_step\n"
        "from xlram.ops.slstm import slstm\n"
        "assert not kernels.usable(torch.zeros(2))\n"
        "q = torch.randn(1, 2, 5, 4)\n"
        "mlstm(q, q, q, q[..., 0], q[..., 0])\n"
        "mlstm_step(q[:, :, 0], q[:, :, 0], q[:, :, 0], q[:, :, 0, 0], q[:, :, 0, 0])\n"
        "slstm(torch.randn(1, 3, 4, 2, 4), torch.randn(2, 4, 4, 4), torch.zeros(4, 2, 4))\n"
        "print('triton' in sys.modules)\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"


def test_registry_names_and_usable(kdevice):
    from xlram import kernels

    assert kernels.triton_available()
    assert set(kernels.KERNELS) == {"mlstm_chunkwise", "mlstm_step", "slstm"}
    for name in kernels.KERNELS:
        assert callable(kernels.get_kernel(name))
    x = torch.zeros(2, device=kdevice)
    assert kernels.usable(x)
    assert not kernels.usable(x.double())
    with pytest.raises(KeyError, match="name: expected one of"):
        kernels.get_kernel("nope")
