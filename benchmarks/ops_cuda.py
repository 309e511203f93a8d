"""GPU kernel benchmark: xlram's Triton kernels side by side with the official TFLA kernels.

    xlram bench ops_cuda [--quick] [--out DIR]        (or: python -m benchmarks.ops_cuda --help)

Needs a CUDA GPU; without one it exits with a message and writes nothing. In one run, at constant
tokens B·S = 65,536 (S from 2,048 to 65,536, the TFLA "consttoken" sweep), 16 heads, dk 128, dv 256,
bf16, it times forward and forward+backward of

- ``xlram-triton``: ``xlram.kernels.mlstm`` (chunk 128, tiles 128; full gradient, normaliser included);
- ``mlstm-kernels-2.0.6/triton_limit_chunk`` (chunk 64) and ``.../triton_xl_chunk`` (TFLA, chunk 128);
- ``torch-sdpa-flash``: causal softmax attention through torch's flash backend, 32 heads x 128 (the
  same width, as in the TFLA paper's attention baselines);
- ``fla/chunk_simple_gla``: flash-linear-attention's scalar-gated linear attention, if importable;

and the latency of one generation step (B in 1, 8, 32) captured in a CUDA graph: xlram's fused step,
mlstm-kernels' Triton step and xlram's torch step. Times are CUDA-event medians over repeats after
warm-up; forward+backward also reports peak memory. Rows follow SPEC section 6 (``metric`` "ms",
"ms_per_step" or "peak_mem_mb", ``value``, ``impl``, ``S``, ``batch`` ...) with ``rel_to_xlram`` =
impl / xlram at the same point; ``--plots`` (default on, needs matplotlib) writes DIR/ops_cuda_*.png.

The official backward drops the normaliser's gradient; xlram computes it, so its backward does a
little more work. Rows ``max_abs_diff`` record how far each mLSTM impl's forward output is from
xlram's at the first S (a check that the same function was timed).

This is the CUDA half of ``xlram bench ops --device cuda``; the CPU ops suite lives elsewhere.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

TOKENS = 65_536
SEQ_LENS = (2048, 4096, 8192, 16384, 32768, 65536)
QUICK_SEQ_LENS = (2048, 8192)
HEADS, DK, DV = 16, 128, 256
STEP_BATCHES = (1, 8, 32)
DEVICE = "cuda"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seq-lens", type=int, nargs="+", default=None,
                        help="sequence lengths (default sweep)")
    parser.add_argument("--tokens", type=int, default=TOKENS, help="B*S held constant (default 65536)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 30, quick 10)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed warm-up runs (default 10, quick 3)")
    parser.add_argument("--no-plots", action="store_true", help="do not write PNG plots")
    parser.add_argument("--impls", nargs="+", default=None, metavar="NAME",
                        help="time only the impls whose names contain one of these (default all), "
                             "e.g. --impls xlram sdpa")


def _selected(name: str, wanted) -> bool:
    return not wanted or any(w in name for w in wanted)


# ---------------------------------------------------------------------------------------------- timing


def _time_ms(fn, repeats: int, warmup: int) -> float:
    """Median milliseconds of fn() by CUDA events, one event pair per repeat."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    for s, e in zip(starts, ends, strict=True):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends, strict=True))


def _peak_mb(fn) -> float:
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


# ---------------------------------------------------------------------------------------------- impls


def _mlstm_impls():
    """{name: fn(q, k, v, i, f) -> h} for every mLSTM kernel that imports here, and notes on the rest."""
    import torch

    impls, notes = {}, []
    from xlram import kernels

    impls["xlram-triton"] = lambda q, k, v, i, f: kernels.mlstm(q, k, v, i, f)[0]
    try:
        from mlstm_kernels.torch import get_mlstm_kernel

        limit = get_mlstm_kernel("chunkwise--triton_limit_chunk")
        xl = get_mlstm_kernel("chunkwise--triton_xl_chunk")
        bf16 = dict(autocast_kernel_dtype=torch.bfloat16)
        impls["mlstm-kernels-2.0.6/triton_limit_chunk"] = lambda q, k, v, i, f: limit(
            q, k, v, i, f, chunk_size=64, **bf16)
        impls["mlstm-kernels-2.0.6/triton_xl_chunk"] = lambda q, k, v, i, f: xl(
            q, k, v, i, f, chunk_size=128, **bf16)
    except Exception as e:  # not installed, or its Triton imports fail
        notes.append(f"mlstm-kernels unavailable: {type(e).__name__}: {e}")
    return impls, notes


def _gla_impl():
    """fla's chunk_simple_gla on (B, S, H, d) tensors, or None."""
    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except Exception:
        return None
    import inspect

    layout = {"head_first": False} if "head_first" in inspect.signature(chunk_simple_gla).parameters else {}
    return lambda q, k, v, g: chunk_simple_gla(q, k, v, g, **layout)[0]


def _mlstm_inputs(B, S, device, dtype, grad):
    import torch

    g = torch.Generator(device=device).manual_seed(0)
    kw = dict(device=device, generator=g)
    q, k = (torch.randn(B, HEADS, S, DK, **kw).to(dtype) for _ in range(2))
    v = torch.randn(B, HEADS, S, DV, **kw).to(dtype)
    i = (torch.randn(B, HEADS, S, **kw) - 3).to(dtype)
    f = (torch.randn(B, HEADS, S, **kw) + 4).to(dtype)
    return [x.requires_grad_(grad) for x in (q, k, v, i, f)]


def _fw_fwbw(fn, inputs, dh):
    """(forward-only, forward+backward) closures over fixed inputs."""
    import torch

    def fw():
        with torch.no_grad():
            fn(*inputs)

    def fwbw():
        for x in inputs:
            x.grad = None
        torch.autograd.backward(fn(*inputs), dh)

    return fw, fwbw


def _failed(rows, point, err, log):
    """Record an impl that could not be timed as a row with value None and the reason."""
    msg = f"{type(err).__name__}: {err}".splitlines()[0][:300]
    if "block pointers have been removed" in msg.lower():
        # mlstm-kernels 2.0.6 builds every Triton kernel on tl.make_block_ptr, which triton 3.9
        # removed: time it in an environment with an older triton instead.
        msg += " (mlstm-kernels 2.0.6 needs a triton that still has tl.make_block_ptr, i.e. < 3.9)"
    rows.append(dict(point, metric="ms", value=None, error=msg))
    log(f"  {point['impl']} failed: {msg}")


def _bench_sequence(S, B, dtype, repeats, warmup, impls, gla, rows, log, wanted=None):
    import torch

    dev = DEVICE
    point = dict(op="mlstm", S=S, batch=B, heads=HEADS, dk=DK, dv=DV, dtype=str(dtype).removeprefix("torch."))
    inputs = _mlstm_inputs(B, S, dev, dtype, grad=True)
    dh = torch.randn(B, HEADS, S, DV, device=dev, dtype=dtype)
    results, outputs = {}, {}
    for name, fn in impls.items():
        try:
            with torch.no_grad():
                outputs[name] = fn(*inputs).float()
            fw, fwbw = _fw_fwbw(fn, inputs, dh)
            results[name] = (_time_ms(fw, repeats, warmup), _time_ms(fwbw, repeats, warmup), _peak_mb(fwbw))
        except Exception as e:  # one failing impl must not cost the others' numbers
            _failed(rows, dict(point, impl=name), e, log)
            torch.cuda.empty_cache()

    # Softmax attention of the same width: 32 heads x 128, causal, flash backend.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def sdpa(q, k, v):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    att_shape = dict(op="softmax_attention", heads=32, dk=128, dv=128)
    if _selected("torch-sdpa-flash", wanted):
        att = [torch.randn(B, 32, S, 128, device=dev, dtype=dtype, requires_grad=True) for _ in range(3)]
        try:
            fw, fwbw = _fw_fwbw(sdpa, att, torch.randn_like(att[0]))
            results["torch-sdpa-flash"] = (_time_ms(fw, repeats, warmup), _time_ms(fwbw, repeats, warmup),
                                           _peak_mb(fwbw))
        except Exception as e:
            _failed(rows, dict(point, impl="torch-sdpa-flash", **att_shape), e, log)
        del att

    if gla is not None:
        q, k = (torch.randn(B, S, HEADS, DK, device=dev, dtype=dtype, requires_grad=True) for _ in range(2))
        v = torch.randn(B, S, HEADS, DV, device=dev, dtype=dtype, requires_grad=True)
        g = torch.nn.functional.logsigmoid(torch.randn(B, S, HEADS, device=dev) + 4).requires_grad_(True)
        try:
            fw, fwbw = _fw_fwbw(gla, [q, k, v, g], torch.randn(B, S, HEADS, DV, device=dev, dtype=dtype))
            results["fla/chunk_simple_gla"] = (_time_ms(fw, repeats, warmup), _time_ms(fwbw, repeats, warmup),
                                               _peak_mb(fwbw))
        except Exception as e:
            _failed(rows, dict(point, impl="fla/chunk_simple_gla", op="simple_gla"), e, log)

    base = results.get("xlram-triton")
    shapes = {"torch-sdpa-flash": att_shape, "fla/chunk_simple_gla": dict(op="simple_gla")}
    for name, (t_fw, t_fwbw, mem) in results.items():
        at = dict(point, impl=name, **shapes.get(name, {}))
        for pass_, value, ref in (("fw", t_fw, base and base[0]), ("fwbw", t_fwbw, base and base[1])):
            row = dict(at, **{"pass": pass_}, metric="ms", value=round(value, 4))
            if ref:
                row["rel_to_xlram"] = round(value / ref, 3)
            rows.append(row)
        rows.append(dict(at, **{"pass": "fwbw"}, metric="peak_mem_mb", value=round(mem, 1)))
        log(f"  S={S:6d} {name:42s} fw {t_fw:8.2f} ms  fw+bw {t_fwbw:8.2f} ms  peak {mem:8.0f} MB")
    ref_out = outputs.get("xlram-triton")
    if ref_out is not None:
        for name, out in outputs.items():
            if name != "xlram-triton":
                diff = (out - ref_out).abs().max().item()
                rows.append(dict(point, impl=name, metric="max_abs_diff", value=diff, against="xlram-triton"))


def _bench_steps(dtype, repeats, warmup, rows, log, wanted=None):
    """Latency of one generation step replayed from a CUDA graph."""
    import torch

    from xlram import kernels
    from xlram.ops.mlstm import MLSTMState, mlstm_step

    impls = {
        "xlram-triton": lambda q, k, v, i, f, st, out: kernels.mlstm_step(q, k, v, i, f, st, out=out),
        "xlram-torch": lambda q, k, v, i, f, st, out: mlstm_step(q, k, v, i, f, st),
    }
    try:
        from mlstm_kernels.torch import get_mlstm_step_kernel

        official = get_mlstm_step_kernel("triton")
        impls["mlstm-kernels-2.0.6/triton_step"] = lambda q, k, v, i, f, st, out: official(
            q, k, v, i[..., None], f[..., None], st.C, st.n, st.m[..., None], eps=1e-6,
            dtype_state=torch.float32)
    except Exception as e:
        log(f"  mlstm-kernels step kernel unavailable: {e}")
    impls = {name: fn for name, fn in impls.items() if _selected(name, wanted)}

    for B in STEP_BATCHES:
        g = torch.Generator(device=DEVICE).manual_seed(0)
        kw = dict(device=DEVICE, generator=g)
        q, k = (torch.randn(B, HEADS, DK, **kw).to(dtype) for _ in range(2))
        v = torch.randn(B, HEADS, DV, **kw).to(dtype)
        i, f = torch.randn(B, HEADS, **kw) - 3, torch.randn(B, HEADS, **kw) + 4
        st = MLSTMState(torch.randn(B, HEADS, DK, DV, **kw) * 0.1, torch.randn(B, HEADS, DK, **kw) * 0.1,
                        torch.zeros(B, HEADS, device=DEVICE))
        out = [torch.empty(B, HEADS, DV, device=DEVICE, dtype=dtype), torch.empty_like(st.C),
               torch.empty_like(st.n), torch.empty_like(st.m)]
        base = None
        step_point = dict(op="mlstm_step", batch=B, heads=HEADS, dk=DK, dv=DV,
                          dtype=str(dtype).removeprefix("torch."), cuda_graph=True)
        for name, fn in impls.items():
            try:
                ms = _step_ms(fn, (q, k, v, i, f, st, out), repeats, warmup)
            except Exception as e:
                _failed(rows, dict(step_point, impl=name), e, log)
                continue
            base = base or ms
            rows.append(dict(step_point, impl=name, metric="ms_per_step", value=round(ms, 5),
                             rel_to_xlram=round(ms / base, 3)))
            log(f"  step B={B:3d} {name:34s} {ms * 1e3:8.1f} us")


def _step_ms(fn, args, repeats, warmup):
    """Milliseconds per replay of a CUDA graph holding one call fn(*args)."""
    import torch

    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # compile and warm up outside the capture
            for _ in range(3):
                fn(*args)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn(*args)
        return _time_ms(graph.replay, repeats * 10, warmup)


def _plot(rows, out_dir: Path, log):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no plots (pip install 'xlram[plot]')")
        return
    for pass_ in ("fw", "fwbw"):
        fig, ax = plt.subplots(figsize=(6, 4))
        pts = [r for r in rows if r.get("pass") == pass_ and r["metric"] == "ms" and r["value"] is not None]
        for impl in dict.fromkeys(r["impl"] for r in pts):
            xs = [(r["S"], r["value"]) for r in pts if r["impl"] == impl]
            ax.plot([x for x, _ in xs], [y for _, y in xs], marker="o", label=impl)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"sequence length S (B·S = {TOKENS:,})")
        ax.set_ylabel("ms")
        ax.set_title(f"mLSTM {'forward' if pass_ == 'fw' else 'forward + backward'}, bf16, 16x(128, 256)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"ops_cuda_{pass_}.png"
        out_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        log(f"wrote {path}")


def run(args) -> list[dict]:
    """The suite entry point for ``xlram bench ops_cuda``; returns rows (SPEC section 6)."""
    import torch

    device = getattr(args, "device", "cuda")
    if not torch.cuda.is_available():
        sys.exit("xlram bench ops_cuda: needs a CUDA GPU (torch.cuda.is_available() is False); "
                 "nothing was measured and no results were written.")
    if device != "cpu" and not str(device).startswith("cuda"):
        sys.exit(f"xlram bench ops_cuda: --device must be cuda, got {device!r}")
    from xlram import kernels

    if not kernels.triton_available():
        sys.exit("xlram bench ops_cuda: needs triton (pip install 'xlram[gpu]'); nothing was measured.")

    quick = getattr(args, "quick", False)
    seq_lens = getattr(args, "seq_lens", None) or (QUICK_SEQ_LENS if quick else SEQ_LENS)
    tokens = getattr(args, "tokens", TOKENS) or TOKENS
    repeats = getattr(args, "repeats", None) or (10 if quick else 30)
    warmup = getattr(args, "warmup", None) or (3 if quick else 10)
    dtype = torch.bfloat16

    def log(msg):
        print(msg, flush=True)

    wanted = getattr(args, "impls", None)
    impls, notes = _mlstm_impls()
    impls = {name: fn for name, fn in impls.items() if _selected(name, wanted)}
    gla = _gla_impl() if _selected("fla/chunk_simple_gla", wanted) else None
    if gla is None and _selected("fla/chunk_simple_gla", wanted):
        notes.append("fla (flash-linear-attention) not importable: chunk_simple_gla skipped")
    for n in notes:
        log(n)
    log(f"device: {torch.cuda.get_device_name()}; B·S = {tokens}, {HEADS} heads, dk {DK}, dv {DV}, bf16")
    rows: list[dict] = []
    for S in seq_lens:
        _bench_sequence(S, max(1, tokens // S), dtype, repeats, warmup, impls, gla, rows, log, wanted)
    _bench_steps(dtype, repeats, warmup, rows, log, wanted)
    if not getattr(args, "no_plots", False):
        _plot(rows, Path(getattr(args, "out", "results")), log)
    return rows


def main(argv=None) -> int:
    from benchmarks.common import format_table, write_results

    parser = argparse.ArgumentParser(prog="python -m benchmarks.ops_cuda", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="results")
    parser.add_argument("--device", default="cuda")
    add_arguments(parser)
    args = parser.parse_args(argv)
    rows = run(args)
    print(format_table(rows))
    print(f"wrote {write_results('ops_cuda', rows, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
