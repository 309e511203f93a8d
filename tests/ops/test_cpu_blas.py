"""xlram.ops.cpu_blas: batched products through OpenBLAS equal torch's, for every layout it takes,
and everything else goes to torch."""

import itertools
import os
import subprocess
import sys

import pytest
import torch

from xlram.ops import cpu_blas

needs_blas = pytest.mark.skipif(not cpu_blas.available(), reason=f"no OpenBLAS: {cpu_blas.info()}")


def _operand(N, rows, cols, transposed, dtype, gen):
    if transposed:
        return torch.randn(N, cols, rows, dtype=dtype, generator=gen).transpose(1, 2)
    return torch.randn(N, rows, cols, dtype=dtype, generator=gen)


@needs_blas
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_torch_for_every_layout(dtype):
    gen = torch.Generator().manual_seed(0)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for N, m, k, n, ta, tb in itertools.product((1, 3), (1, 5), (1, 4), (1, 3, 64), (0, 1), (0, 1)):
        a, b = _operand(N, m, k, ta, dtype, gen), _operand(N, k, n, tb, dtype, gen)
        ref = torch.bmm(a, b)
        torch.testing.assert_close(cpu_blas.bmm(a, b, library="openblas"), ref, rtol=tol, atol=tol)
        c = torch.randn(N, m, n, dtype=dtype, generator=gen)
        want = c + ref
        assert cpu_blas.bmm(a, b, out=c, beta=1.0, library="openblas") is c
        torch.testing.assert_close(c, want, rtol=tol, atol=tol)


@needs_blas
def test_strided_batches_and_padded_rows():
    """Matrices inside a larger buffer (leading dimension > columns, batch stride > a matrix)."""
    gen = torch.Generator().manual_seed(1)
    big = torch.randn(4, 10, 12, generator=gen)
    a, b = big[:, :6, :5], torch.randn(4, 5, 7, generator=gen)
    out = torch.zeros(4, 8, 9)[:, :6, :7]
    cpu_blas.bmm(a, b, out=out, library="openblas")
    torch.testing.assert_close(out, torch.bmm(a, b), rtol=1e-5, atol=1e-5)


def test_other_inputs_go_to_torch():
    gen = torch.Generator().manual_seed(2)
    for dtype in (torch.bfloat16, torch.float16):
        a, b = torch.randn(2, 3, 4, generator=gen).to(dtype), torch.randn(2, 4, 5, generator=gen).to(dtype)
        assert torch.equal(cpu_blas.bmm(a, b, library="openblas"), torch.bmm(a, b))
    a = torch.randn(2, 4, 6, generator=gen)[:, :, ::2]  # no unit stride: torch
    b = torch.randn(2, 3, 5, generator=gen)
    torch.testing.assert_close(cpu_blas.bmm(a, b, library="openblas"), torch.bmm(a, b))
    with pytest.raises(ValueError, match=r"expected \(N, m, k\) and \(N, k, n\)"):
        cpu_blas.bmm(torch.randn(2, 3, 4), torch.randn(2, 5, 6))


@needs_blas
def test_openblas_only_while_torch_runs_on_one_thread():
    """On more threads the products are torch's (two thread pools fought for the cores); asked for
    explicitly, OpenBLAS still runs, on one thread."""
    before = torch.get_num_threads()
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(8, 64, 64, generator=gen), torch.randn(8, 64, 64, generator=gen)
    try:
        torch.set_num_threads(2)
        assert cpu_blas.route() == "torch"
        torch.testing.assert_close(cpu_blas.bmm(a, b, library="openblas"), torch.bmm(a, b),
                                   rtol=1e-5, atol=1e-5)
        assert cpu_blas._state["lib"].scipy_openblas_get_num_threads() == 1
        torch.set_num_threads(1)
        assert cpu_blas.route() == cpu_blas.info()["route"]
    finally:
        torch.set_num_threads(before)


def _info_in_subprocess(**env):
    code = "from xlram.ops import cpu_blas; print(cpu_blas.info())"
    full = {k: v for k, v in os.environ.items() if not k.startswith("XLRAM_")}
    out = subprocess.run([sys.executable, "-c", code], env={**full, **env}, capture_output=True,
                         text=True, check=True)
    return eval(out.stdout)  # a dict literal printed by the child


@needs_blas
def test_kernel_choice_and_switch_off():
    avx512 = cpu_blas._AVX512_FLAGS <= cpu_blas._cpu_flags()
    # OPENBLAS_CORETYPE (this machine's environment sets Haswell) does not choose for this copy.
    info = _info_in_subprocess(OPENBLAS_CORETYPE="Haswell")
    assert info["available"] and (info["core"] == "SkylakeX") == avx512
    assert _info_in_subprocess(XLRAM_OPENBLAS_CORETYPE="Haswell")["core"] == "Haswell"
    off = _info_in_subprocess(XLRAM_CPU_BLAS="torch")
    assert not off["available"] and off["route"] == "torch" and "XLRAM_CPU_BLAS" in off["reason"]
    assert _info_in_subprocess(XLRAM_CPU_BLAS="openblas")["route"] == "openblas"


@needs_blas
def test_the_route_is_the_faster_library():
    """auto: OpenBLAS only where the race measured it at least 10% faster than torch."""
    info = cpu_blas.info()
    if info["chosen_by"] != "auto":
        pytest.skip(f"XLRAM_CPU_BLAS={info['chosen_by']} in this environment")
    fast = info["measured_gflops"]
    assert min(fast.values()) > 0
    assert info["route"] == ("openblas" if fast["openblas"] >= 1.1 * fast["torch"] else "torch")


def test_a_wrong_setting_is_an_error():
    code = "from xlram.ops import cpu_blas; cpu_blas.route()"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "XLRAM_CPU_BLAS": "mkl"},
                         capture_output=True, text=True)
    assert out.returncode != 0 and "XLRAM_CPU_BLAS: expected auto, openblas or torch, got 'mkl'" in out.stderr


@needs_blas
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linear_t_in_blocks_matches_torch(dtype):
    """Few rows: the weight's rows in blocks (with a remainder block), into a fresh or a strided out."""
    gen = torch.Generator().manual_seed(4)
    tol = 1e-4 if dtype == torch.float32 else 1e-12  # sums of up to 512 products
    for m, k, n in ((1, 256, 1024), (16, 256, 1000), (5, 48, 130), (16, 512, 256), (300, 64, 256)):
        x = torch.randn(m, k, dtype=dtype, generator=gen)
        w = torch.randn(n, k, dtype=dtype, generator=gen)
        ref = x @ w.t()
        torch.testing.assert_close(cpu_blas.linear_t(x, w, library="openblas"), ref, rtol=tol, atol=tol)
        buf = torch.randn(m, n + 7, dtype=dtype, generator=gen)
        out, before = buf[:, 3 : 3 + n], buf.clone()
        want = out + ref
        assert cpu_blas.linear_t(x, w, out=out, beta=1.0, library="openblas").data_ptr() == out.data_ptr()
        torch.testing.assert_close(out, want, rtol=tol, atol=tol)
        assert torch.equal(buf[:, :3], before[:, :3]) and torch.equal(buf[:, 3 + n :], before[:, 3 + n :])
    with pytest.raises(ValueError, match=r"expected \(m, k\) and \(n, k\)"):
        cpu_blas.linear_t(torch.randn(2, 3), torch.randn(4, 5))


def test_torch_compile_traces_through_torch():
    """Under torch.compile the products are torch's: one graph, no foreign call to break it."""
    gen = torch.Generator().manual_seed(5)
    a, b = torch.randn(2, 8, 16, generator=gen), torch.randn(2, 16, 4, generator=gen)
    w = torch.randn(32, 16, generator=gen)
    fn = torch.compile(lambda a, b, w: (cpu_blas.bmm(a, b), cpu_blas.linear_t(a[0], w)), fullgraph=True)
    got = fn(a, b, w)
    torch.testing.assert_close(got[0], torch.bmm(a, b), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], a[0] @ w.t(), rtol=1e-5, atol=1e-5)
