"""The ``xlram train`` command: ``xlram train lm --model NAME --corpus docs --steps N --out DIR [--resume]``.

Under ``torchrun --nproc_per_node=N`` the same command trains with N processes (DDP by default,
``--strategy fsdp`` to shard); ``python -m xlram.train lm ...`` is the same command without the
``xlram`` entry point (what ``torchrun -m`` needs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_train_parser", "add_task_parsers", "main"]


def add_train_parser(sub) -> argparse.ArgumentParser:
    """Add ``train`` (with one subcommand per task) to an ``add_subparsers()`` object; return it."""
    p = sub.add_parser("train", help="train a model with the training engine (checkpoints, resume, DDP/FSDP)",
                       description="Train a model with xlram.train; run it under torchrun for several "
                                   "processes.")
    add_task_parsers(p)
    return p


def add_task_parsers(parser: argparse.ArgumentParser) -> None:
    """The task subcommands (``lm``) of ``parser``."""
    tasks = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    lm = tasks.add_parser("lm", help="next-byte prediction on a byte corpus",
                          description="Train a registered language model on a byte corpus.")
    lm.add_argument("--model", default="lm-xlstm[7:1]-demo",
                    help="registered model name (see xlram.models.registry.list_models; "
                         "default: lm-xlstm[7:1]-demo); built with vocab_size=256")
    lm.add_argument("--corpus", default="docs",
                    help="'docs', 'code', 'english' (needs the Debian package linux-doc-6.1) "
                         "or the path of a UTF-8 text file")
    lm.add_argument("--seq-len", type=int, default=256, help="bytes per training window (default: 256)")
    lm.add_argument("--eval-windows", type=int, default=64,
                    help="fixed validation windows per evaluation (0: none; default: 64)")
    _add_engine_arguments(lm)
    lm.set_defaults(func=run_lm)


def _add_engine_arguments(p: argparse.ArgumentParser) -> None:
    from xlram.train.config import STRATEGIES, TrainConfig

    d = TrainConfig()
    p.add_argument("--steps", type=int, required=True, help="optimizer steps of the whole run")
    p.add_argument("--out", required=True,
                   help="run directory: checkpoints/, train.csv, eval.csv, tensorboard/")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue the run in --out from its latest checkpoint (or from CHECKPOINT)")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"global batch: sequences per optimizer step over all processes "
                        f"(default: {d.batch_size})")
    p.add_argument("--accum", type=int, default=d.grad_accum_steps, help="gradient accumulation micro-steps")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default: {d.lr:g})")
    p.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio,
                   help=f"cosine floor as a fraction of --lr (default: {d.min_lr_ratio:g})")
    p.add_argument("--warmup", type=int, default=None,
                   help="warm-up steps (default: min(100, steps // 10))")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help=f"AdamW weight decay on matrices (default: {d.weight_decay:g})")
    p.add_argument("--clip", type=float, default=d.clip_grad_norm, help="gradient-norm clip (0: off)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--strategy", choices=STRATEGIES, default=d.strategy,
                   help="auto: ddp under torchrun with several processes, else single")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every,
                   help=f"checkpoint every N steps, and always at the end (default: {d.ckpt_every})")
    p.add_argument("--keep-last", type=int, default=d.keep_last,
                   help=f"checkpoints to keep (0: all; default: {d.keep_last})")
    p.add_argument("--eval-every", type=int, default=d.eval_every,
                   help="evaluate every N steps, and always at the end (default: only at the end)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard events")


def _train_config(args):
    from xlram.train.config import TrainConfig

    warmup = args.warmup if args.warmup is not None else min(100, args.steps // 10)
    return TrainConfig(max_steps=args.steps, batch_size=args.batch_size, grad_accum_steps=args.accum,
                       lr=args.lr, min_lr_ratio=args.min_lr_ratio, warmup_steps=warmup,
                       weight_decay=args.weight_decay, clip_grad_norm=args.clip or None, bf16=args.bf16,
                       compile=args.compile, seed=args.seed, strategy=args.strategy, device=args.device,
                       out_dir=str(args.out), ckpt_every=args.ckpt_every, keep_last=args.keep_last,
                       eval_every=args.eval_every, progress=not args.no_progress,
                       tensorboard=not args.no_tensorboard)


def run_lm(args) -> int:
    """``xlram train lm``: build the model, the task and the trainer, train, print where it went."""
    import torch

    from xlram.checkpoint import CheckpointError
    from xlram.data.text import VOCAB_SIZE
    from xlram.models.registry import create_model
    from xlram.train.engine import Trainer
    from xlram.train.tasks import LMTask

    prog = "xlram train lm"
    try:
        config = _train_config(args)
        task = LMTask(args.corpus, seq_len=args.seq_len, eval_windows=args.eval_windows)
        torch.manual_seed(args.seed)  # the same initial weights in every process
        model = create_model(args.model, vocab_size=VOCAB_SIZE)
        trainer = Trainer(model, task, config)
    except (ValueError, KeyError, TypeError) as e:
        print(f"{prog}: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    main_process = trainer.dist.is_main
    if main_process:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{prog}: {args.model} ({n_params / 1e6:.2f}M parameters) on {task.corpus.source}, "
              f"{config.max_steps} steps of {config.batch_size} x {task.seq_len} bytes, "
              f"{trainer.dist.world_size} process(es), strategy {trainer.strategy}, "
              f"device {trainer.dist.device}", flush=True)
    try:
        history = trainer.fit(resume=args.resume)
    except (CheckpointError, OSError, FloatingPointError, ValueError) as e:
        trainer.close(sync=False)
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    except BaseException:
        trainer.close(sync=False)
        raise
    trainer.close()
    if main_process:
        last = history[-1] if history else {}
        evals = trainer.eval_history[-1] if trainer.eval_history else {}
        parts = [f"step {trainer.step}"]
        if last:
            parts.append(f"train loss {last['loss']:.4f} ({last.get('bpb', float('nan')):.3f} bpb)")
        if evals:
            parts.append(f"val {evals.get('val_bpb', float('nan')):.3f} bpb")
        print(f"{prog}: done, " + ", ".join(parts) + f"; checkpoint {trainer.last_checkpoint}, "
              f"metrics {Path(config.out_dir) / 'train.csv'}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m xlram.train TASK ...``."""
    parser = argparse.ArgumentParser(prog="python -m xlram.train", description=__doc__.splitlines()[0])
    add_task_parsers(parser)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)
