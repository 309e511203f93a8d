"""The README's CPU speed table, made from the JSON that `xlram bench ops|step|train` wrote.

    python -m benchmarks.speed_table results/speed-cpu/full > table.md

Every figure is read from the suites' rows (CPU-time medians, measured side by side with the
official packages in the same run); nothing is typed in by hand. Rows whose suite or anchor was not
run are left out.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OFFICIAL_LM = "xlstm-2.0.6"
OFFICIAL_KERNELS = "mlstm-kernels-2.0.6"


def _load(directory: Path, suite: str) -> dict | None:
    path = directory / f"{suite}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _find(rows: list[dict], **keys) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in keys.items())), None)


def _fmt(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _ratio(row: dict) -> str:
    return f"{row['speedup']}x" if "speedup" in row else "-"


def _ops_lines(rows: list[dict]) -> list[str]:
    lines = []
    for S in sorted({r["S"] for r in rows if r.get("op") == "mlstm" and r["pass"] == "fwd+bwd"}):
        ours = _find(rows, op="mlstm", **{"pass": "fwd+bwd"}, impl="xlram", S=S)
        off = _find(rows, op="mlstm", **{"pass": "fwd+bwd"}, impl=OFFICIAL_KERNELS, S=S)
        if ours is None:
            continue
        lines.append(
            f"| mLSTM fwd+bwd, B=1 H=4 d=128 S={S:,} | ms | {_fmt(off['value']) if off else '-'} "
            f"| {_fmt(ours['value'])} | {_ratio(ours)} | {ours['of_bound']:.2f} of the FLOP bound |")
    for B in sorted({r["B"] for r in rows if r.get("op") == "mlstm_step"}):
        ours = _find(rows, op="mlstm_step", impl="xlram", B=B)
        off = _find(rows, op="mlstm_step", impl=OFFICIAL_KERNELS, B=B)
        lines.append(f"| mLSTM step, B={B} H=4 d=128 | ms | {_fmt(off['value']) if off else '-'} "
                     f"| {_fmt(ours['value'])} | {_ratio(ours)} "
                     f"| {ours['of_bound']:.2f} of the memory bound |")
    for r in rows:
        if r.get("op") == "slstm" and r["impl"] == "xlram":
            off = _find(rows, op="slstm", impl=OFFICIAL_LM, B=r["B"], S=r["S"])
            lines.append(f"| sLSTM fwd+bwd, D=256 4 heads, B={r['B']} S={r['S']:,} | ms "
                         f"| {_fmt(off['value']) if off else '-'} | {_fmt(r['value'])} | {_ratio(r)} | |")
    return lines


def _step_lines(rows: list[dict]) -> list[str]:
    lines = []
    for B in sorted({r["batch"] for r in rows if r["metric"] == "ms_per_step"}):
        off = _find(rows, metric="ms_per_step", impl=OFFICIAL_LM, batch=B)
        for impl in ("xlram", "xlram-torch", "xlram-compiled"):
            ours = _find(rows, metric="ms_per_step", impl=impl, batch=B)
            if ours is None:
                continue
            lines.append(f"| LM generation step ({impl}), batch {B} | ms "
                         f"| {_fmt(off['value']) if off else '-'} "
                         f"| {_fmt(ours['value'])} | {_ratio(ours)} "
                         f"| {ours['of_bound']:.2f} of the memory bound ({ours['bound_ms']:.2f} ms) |")
    for S in sorted({r["S"] for r in rows if r["metric"] == "tokens_per_s"}):
        ours = _find(rows, metric="tokens_per_s", impl="xlram", S=S)
        off = _find(rows, metric="tokens_per_s", impl=OFFICIAL_LM, S=S)
        ratio = f"{ours['value'] / off['value']:.2f}x" if ours and off else "-"
        lines.append(f"| LM prefill, batch 1, {S:,} tokens | tokens/s | {_fmt(off['value']) if off else '-'} "
                     f"| {_fmt(ours['value']) if ours else '-'} | {ratio} | |")
    return lines


def _train_lines(rows: list[dict]) -> list[str]:
    lines = []
    for ctx in sorted({r["context"] for r in rows if r["metric"] == "tokens_per_s"}):
        ours = _find(rows, metric="tokens_per_s", impl="xlram", context=ctx)
        off = _find(rows, metric="tokens_per_s", impl=OFFICIAL_LM, context=ctx)
        if ours is None:
            continue
        lines.append(f"| LM training, context {ctx:,} (batch {ours['batch']}) | tokens/s "
                     f"| {_fmt(off['value']) if off else '-'} | {_fmt(ours['value'])} "
                     f"| {_ratio(ours)} | wall clock: {_fmt(ours['wall_tokens_per_s'])} tokens/s |")
    for impl in ("xlram", OFFICIAL_LM):
        mem = sorted((r["context"], r["value"], r.get("growth")) for r in rows
                     if r["metric"] == "peak_mem_mb" and r["impl"] == impl)
        if mem:
            pts = ", ".join(f"{c:,}: {v:,.0f}" for c, v, _ in mem)
            lines.append(f"| peak training memory, {impl}, batch 1 | MB by context | | | "
                         f"| {pts}; log-log slope {mem[-1][2]} |")
    return lines


def table(directory: str | Path) -> str:
    directory = Path(directory)
    head = ["| what | unit | official | xlram | ratio | note |", "|---|---|---|---|---|---|"]
    lines, machine = [], None
    for suite, make in (("ops", _ops_lines), ("step", _step_lines), ("train", _train_lines)):
        data = _load(directory, suite)
        if data is None:
            continue
        machine = machine or data["machine"]
        loads = sorted({r["load"] for r in data["rows"] if "load" in r})
        lines += make(data["rows"])
        lines.append(f"| *({suite}: load average {', '.join(map(str, loads))})* | | | | | |")
    if machine is None:
        raise SystemExit(f"no ops.json, step.json or train.json in {directory}")
    title = (f"Measured {machine['date']} on {machine['processor']}, {machine['cores']} cores, "
             f"{machine['torch_threads']} torch thread, torch {machine['torch']}; CPU-time medians.")
    return "\n".join([title, "", *head, *lines])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    print(table(argv[0] if argv else "results"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
