"""`xlram demo`: train a small byte-level xLSTM[7:1] on CPython's documentation, then show what it learned.

In order: evaluate validation bits per byte (bpb) of the untrained model; time a training step and
turn the time budget into a number of steps; train with the project's engine (``xlram.train``: AdamW, a
linear warm-up and a cosine decay over those steps, gradient clipping, a checkpoint at the end);
evaluate again; print text the model generates from a few prompts (one batch of prompts of different
lengths); measure training tokens/s, prefill tokens/s and generation ms/token at batch 1; save the model
with ``save_pretrained``; plot the loss curve. Outputs in ``--out``: ``model/`` (config.json,
model.safetensors), ``train/`` (the engine's checkpoint and metrics.csv), ``loss_curve.png`` and
``metrics.json``.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from xlram.checkpoint import atomic_write_bytes, atomic_write_json
from xlram.data.text import decode, encode, load_corpus
from xlram.models.registry import create_model
from xlram.train import BatchIndex, LMTask, TrainConfig, Trainer

MODEL = "lm-xlstm[7:1]-demo"
SEQ_LEN = 256
BATCH_SIZE = 16
PEAK_LR = 3e-3
MIN_LR_FRACTION = 0.1
WARMUP_STEPS = 20
WEIGHT_DECAY = 0.1
CLIP_NORM = 1.0
EVAL_WINDOWS = 64
EVAL_POINTS = 6  # validation during training, at every sixth of the time budget
PROMPTS = ("The return value", "A class definition", "If the")
SAMPLE_TOKENS = 160
SPEED_PREFILL_LEN = 512  # bytes in the prompt whose prefill is timed
SPEED_GEN_TOKENS = 64  # tokens generated when timing generation


@torch.no_grad()
def measure_speed(model, data: torch.Tensor) -> dict:
    """Prefill tokens/s (one forward over ``SPEED_PREFILL_LEN`` bytes) and generation ms/token, at batch 1."""
    prefill_len, gen_tokens = SPEED_PREFILL_LEN, SPEED_GEN_TOKENS
    model.eval()
    prompt = data[:prefill_len].long().unsqueeze(0)  # (1, prefill_len)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        model(prompt)
        times.append(time.perf_counter() - t0)
    prefill = prefill_len / statistics.median(times)
    # Generation as a user gets it: generate() at batch 1 (a 16-byte prompt, then one step per token).
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        model.generate(prompt[:, :16], gen_tokens, temperature=0)
        times.append(time.perf_counter() - t0)
    per_token = statistics.median(times) / gen_tokens
    return {"prefill_tokens_per_s": prefill, "generation_ms_per_token": 1e3 * per_token}


def plot_losses(steps: list[int], losses: list[float], evals: list[tuple[int, float]], path: Path) -> Path:
    """Training loss (bits per byte, raw and smoothed) and validation bpb against steps, as a PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bits = [loss / math.log(2) for loss in losses]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(steps, bits, color="tab:blue", alpha=0.35, linewidth=1, label="train batch")
    # A centred moving average over ~1/25 of the run: unlike an EMA it does not lag behind the data.
    window = max(1, len(bits) // 25)
    if window > 1:
        smooth = [sum(bits[i:i + window]) / window for i in range(len(bits) - window + 1)]
        ax.plot([s + (window - 1) / 2 for s in steps[: len(smooth)]], smooth, color="tab:blue", linewidth=2,
                label=f"train (mean of {window} steps)")
    if evals:
        ax.plot([s for s, _ in evals], [v for _, v in evals], "o-", color="tab:red", label="validation")
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel("bits per byte")
    ax.set_title(f"{MODEL} on CPython docs (bytes)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def seconds_per_step(model, task: LMTask) -> float:
    """Time of one training step (forward, backward) at the demo's batch: the median of three after one
    warm-up. The optimizer's update is left out (a few ms for this model)."""
    inputs, targets = task.batch(BatchIndex(seed=0, step=0, start=0, stop=BATCH_SIZE, size=BATCH_SIZE))
    times = []
    for _ in range(4):
        t0 = time.perf_counter()
        logits, _ = model(inputs)
        F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
        times.append(time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    return statistics.median(times[1:])


def train(model, task: LMTask, steps: int, seed: int, out: Path) -> Trainer:
    """Train for ``steps`` optimizer steps with the engine, evaluating at every ``1/EVAL_POINTS`` of them.

    A previous demo's ``out/train`` is replaced: its checkpoint belongs to a run of another length.
    """
    run_dir = out / "train"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    config = TrainConfig(
        max_steps=steps, batch_size=BATCH_SIZE, lr=PEAK_LR, min_lr_ratio=MIN_LR_FRACTION,
        warmup_steps=min(WARMUP_STEPS, steps - 1), weight_decay=WEIGHT_DECAY, betas=(0.9, 0.95),
        clip_grad_norm=CLIP_NORM, seed=seed, strategy="single", device="cpu", out_dir=str(run_dir),
        ckpt_every=0, keep_last=1, eval_every=max(1, steps // EVAL_POINTS), tensorboard=False)
    trainer = Trainer(model, task, config)
    trainer.fit()
    trainer.close()
    return trainer


def pick_threads(model) -> str:
    """Use all intra-op threads or one, whichever runs a small training step faster; say which and why.

    On shared cores (a busy machine, a CI runner, a VM) the threads of one op wait on each other and a
    step can take ten times longer than on a single thread; on idle cores more threads win. Measuring
    settles it in about a second. An explicit ``OMP_NUM_THREADS`` is respected as it is.
    """
    many = torch.get_num_threads()
    if many == 1 or "OMP_NUM_THREADS" in os.environ:
        return f"{many} (set by OMP_NUM_THREADS)" if "OMP_NUM_THREADS" in os.environ else "1"
    ids = torch.randint(0, model.config.vocab_size, (4, 129), generator=torch.Generator().manual_seed(0))

    def one_step() -> float:
        t0 = time.perf_counter()
        logits, _ = model(ids[:, :-1])
        F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
        return time.perf_counter() - t0

    times = {many: [], 1: []}
    for threads in (many, 1, many, 1, many, 1):
        torch.set_num_threads(threads)
        times[threads].append(one_step())
    model.zero_grad(set_to_none=True)
    best = {n: min(t[1:]) for n, t in times.items()}  # the first call of each warms up
    chosen = min(best, key=best.get)
    torch.set_num_threads(chosen)
    return (f"{chosen} (measured {best[many] * 1e3:.0f} ms with {many}, {best[1] * 1e3:.0f} ms with 1 "
            f"for a small step)")


def run(args) -> int:
    """Entry point of ``xlram demo --minutes M --out DIR --seed S``."""
    minutes, out, seed = float(args.minutes), Path(args.out), int(args.seed)
    if not minutes > 0:
        raise SystemExit(f"xlram demo: --minutes must be positive, got {args.minutes}")
    torch.manual_seed(seed)
    corpus = load_corpus("docs")
    model = create_model(MODEL)
    print(f"model    {MODEL}: {model.num_params() / 1e6:.2f}M parameters, "
          f"blocks {''.join(t[0] for t in model.config.xlstm.block_types)} (m = mLSTM, s = sLSTM)")
    print(f"data     {corpus.source}: {corpus.train.numel() / 1e3:.0f} kB train, "
          f"{corpus.val.numel() / 1e3:.0f} kB val")
    print(f"training {minutes:g} min, batch {BATCH_SIZE} x {SEQ_LEN} bytes, AdamW lr {PEAK_LR:g} "
          f"(warm-up {WARMUP_STEPS} steps, cosine), clip {CLIP_NORM:g}")
    print(f"threads  {pick_threads(model)}")

    task = LMTask(corpus, seq_len=SEQ_LEN, eval_windows=EVAL_WINDOWS, eval_batch_size=BATCH_SIZE)
    bpb_before = task.evaluate(model)["val_bpb"]
    print(f"val bpb before training: {bpb_before:.3f}")
    step_s = seconds_per_step(model, task)
    steps = max(2, round(minutes * 60.0 / step_s))
    print(f"steps    {steps} ({step_s:.2f} s per step measured)")

    trainer = train(model, task, steps, seed, out)
    records = trainer.history
    train_seconds = sum(r["seconds"] for r in records)
    evals = [(0, bpb_before)] + [(e["step"], e["val_bpb"]) for e in trainer.eval_history]
    step, bpb_after = evals[-1]
    train_tokens_per_s = sum(r["tokens"] for r in records) / train_seconds
    print(f"val bpb after {step} steps ({step * BATCH_SIZE * SEQ_LEN / 1e6:.2f}M bytes): {bpb_after:.3f} "
          f"(before: {bpb_before:.3f})")

    model.eval()
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(PROMPTS))]
    continuations = model.generate([encode(p) for p in PROMPTS], SAMPLE_TOKENS, temperature=0.7,
                                   top_k=40, generator=generators)
    samples = []
    print("samples (temperature 0.7, top-k 40; one batch of prompts of different lengths):")
    for prompt, cont in zip(PROMPTS, continuations, strict=True):
        text = prompt + decode(cont)
        samples.append(text)
        print("  | " + text.replace("\n", "\n  | "))

    speed = measure_speed(model, corpus.val)
    print(f"speed    training {train_tokens_per_s:,.0f} tokens/s (batch {BATCH_SIZE}), "
          f"prefill {speed['prefill_tokens_per_s']:,.0f} tokens/s (batch 1, {SPEED_PREFILL_LEN} bytes), "
          f"generation {speed['generation_ms_per_token']:.2f} ms/token (batch 1)")

    model_dir = model.save_pretrained(out / "model")
    losses = [r["loss"] for r in records]
    curve = plot_losses([r["step"] for r in records], losses, evals, out / "loss_curve.png")
    metrics = {
        "model": MODEL, "params": model.num_params(), "seed": seed, "minutes": minutes, "steps": step,
        "train_bytes": step * BATCH_SIZE * SEQ_LEN, "val_bpb_before": bpb_before, "val_bpb_after": bpb_after,
        "val_bpb_curve": evals, "train_losses": losses, "train_seconds": train_seconds,
        "train_tokens_per_s": train_tokens_per_s, **speed, "samples": samples,
        "torch_threads": torch.get_num_threads(),
    }
    metrics_path = atomic_write_json(out / "metrics.json", metrics)
    print(f"saved    {model_dir} (load with XLSTMLM.from_pretrained), {curve}, {metrics_path}, "
          f"{trainer.last_checkpoint} (engine checkpoint)")
    return 0
