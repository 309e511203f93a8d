"""The tile sweeps behind tile_sweep.log and tile_sweep_long.log (run on the H100, 2026-11-23):

    python results/speed-gpu/tile_sweep.py            # chunk x tile x head tile at B x S = 8 x 8,192
    python results/speed-gpu/tile_sweep.py long       # a few settings at 1-4 sequences of 16-65k tokens

bf16, 16 heads, dk 128, dv 256; CUDA-event medians of 15 runs after 3 warm-ups. The two scripts that
ran were merged into this file afterwards (same settings, same measurement).
"""
import itertools
import statistics
import sys

import torch

from xlram.kernels.triton.mlstm_chunkwise import mlstm_chunkwise_triton as K

H, DK, DV = 16, 128, 256


def t_ms(fn, rep=15, warm=3):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(rep)]
    for s, e in ev:
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in ev)


def inputs(B, S):
    g = torch.Generator(device="cuda").manual_seed(0)
    kw = dict(device="cuda", generator=g)
    q, k = (torch.randn(B, H, S, DK, **kw).bfloat16().requires_grad_() for _ in range(2))
    v = torch.randn(B, H, S, DV, **kw).bfloat16().requires_grad_()
    i = (torch.randn(B, H, S, **kw) - 3).bfloat16().requires_grad_()
    f = (torch.randn(B, H, S, **kw) + 4).bfloat16().requires_grad_()
    return [q, k, v, i, f], torch.randn(B, H, S, DV, **kw).bfloat16()


def timed(x, dh, L, tile, ht):
    fn = lambda: K(*x, chunk_size=L, tile=tile, head_tile=ht)[0]

    def fw():
        with torch.no_grad():
            fn()

    def fwbw():
        for t in x:
            t.grad = None
        torch.autograd.backward(fn(), dh)

    return fn, t_ms(fw), t_ms(fwbw)


if len(sys.argv) > 1 and sys.argv[1] == "long":
    for B, S in ((1, 65536), (2, 32768), (4, 16384)):
        x, dh = inputs(B, S)
        for L, tile, ht in ((128, 128, 128), (128, 128, 64), (128, 64, 64), (64, 64, 128), (64, 64, 64)):
            _, fw, fwbw = timed(x, dh, L, tile, ht)
            print(f"B={B} S={S:6d} L={L:4d} tile={tile:4d} head_tile={ht:4d}  "
                  f"fw {fw:7.3f} ms  fwbw {fwbw:7.3f} ms")
        del x, dh
else:
    x, dh = inputs(8, 8192)
    ref = K(*x, tile=64, head_tile=64)[0].float()  # the defaults before the sweep
    for L, tile, ht in itertools.product((64, 128, 256), (32, 64, 128), (32, 64, 128)):
        if tile > L:
            continue
        fn, fw, fwbw = timed(x, dh, L, tile, ht)
        with torch.no_grad():
            diff = (fn().float() - ref).abs().max().item()
        print(f"L={L:4d} tile={tile:4d} head_tile={ht:4d}  fw {fw:7.3f} ms  fwbw {fwbw:7.3f} ms  "
              f"diff {diff:.3g}")
