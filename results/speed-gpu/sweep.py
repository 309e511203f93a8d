import itertools, statistics, sys, torch
from xlram.kernels.triton.mlstm_chunkwise import mlstm_chunkwise_triton as K

def t_ms(fn, rep=15, warm=3):
    for _ in range(warm): fn()
    torch.cuda.synchronize()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(rep)]
    for s, e in ev:
        s.record(); fn(); e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in ev)

B, H, S, DK, DV = 8, 16, 8192, 128, 256
g = torch.Generator(device="cuda").manual_seed(0)
kw = dict(device="cuda", generator=g)
q, k = (torch.randn(B, H, S, DK, **kw).bfloat16().requires_grad_() for _ in range(2))
v = torch.randn(B, H, S, DV, **kw).bfloat16().requires_grad_()
i = (torch.randn(B, H, S, **kw) - 3).bfloat16().requires_grad_()
f = (torch.randn(B, H, S, **kw) + 4).bfloat16().requires_grad_()
dh = torch.randn(B, H, S, DV, **kw).bfloat16()
ref = K(q, k, v, i, f)[0].float()
for L, tile, ht in itertools.product((64, 128, 256), (32, 64, 128), (32, 64, 128)):
    if tile > L: continue
    try:
        fn = lambda: K(q, k, v, i, f, chunk_size=L, tile=tile, head_tile=ht)[0]
        with torch.no_grad():
            out = fn().float()
        diff = (out - ref).abs().max().item()
        def fw():
            with torch.no_grad(): fn()
        def fwbw():
            for x in (q, k, v, i, f): x.grad = None
            torch.autograd.backward(fn(), dh)
        print(f"L={L:4d} tile={tile:4d} head_tile={ht:4d}  fw {t_ms(fw):7.3f} ms  fwbw {t_ms(fwbw):7.3f} ms  diff {diff:.3g}", flush=True)
    except Exception as e:
        print(f"L={L} tile={tile} head_tile={ht} failed: {type(e).__name__}: {str(e)[:150]}", flush=True)
