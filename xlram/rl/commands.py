"""`xlram data generate` and `xlram data info`."""

from __future__ import annotations

import json
import sys


def add_data_parser(sub) -> None:
    """Add the `data` subcommand (generate, info) to the `xlram` parser's subparsers."""
    p = sub.add_parser("data", help="generate and inspect offline RL datasets (Minari format)")
    dsub = p.add_subparsers(dest="data_command", required=True)

    g = dsub.add_parser("generate", help="generate a suite of datasets (resumable)")
    g.add_argument(
        "--suite",
        choices=["mini", "full"],
        default="mini",
        help="mini: 10 Meta-World, 4 DMControl, 3 Atari, Dark-Room (~minutes); full: everything",
    )
    g.add_argument("--out", required=True, help="output directory (a Minari datasets root)")
    g.add_argument(
        "--episodes",
        type=int,
        default=None,
        help="episodes per task (Dark-Room: episodes per learning history); default per domain",
    )
    g.add_argument("--workers", type=int, default=2, help="parallel worker processes (default: 2)")
    g.add_argument(
        "--domains",
        nargs="+",
        default=None,
        help="only these domains (metaworld dmcontrol atari darkroom robosuite)",
    )
    g.add_argument(
        "--lossless", action="store_true", help="store image frames raw instead of JPEG (~8x larger)"
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.set_defaults(func=run_generate)

    i = dsub.add_parser("info", help="per-task statistics of the datasets under DIR")
    i.add_argument("dir", help="a dataset directory or any directory above datasets")
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")
    i.set_defaults(func=run_info)


def run_generate(args) -> int:
    import os

    os.environ.setdefault("MUJOCO_GL", "egl")
    from xlram.rl.generate import generate_suite, suite_plan

    try:
        plans = suite_plan(args.suite, args.episodes, args.domains, lossless=args.lossless)
    except ValueError as e:
        print(f"xlram data generate: {e}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print(f"xlram data generate: --workers must be at least 1, got {args.workers}", file=sys.stderr)
        return 2
    print(f"suite {args.suite}: {len(plans)} tasks -> {args.out}", file=sys.stderr)
    try:
        report = generate_suite(plans, args.out, workers=args.workers, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(
            "\ninterrupted: finished tasks are kept; run the same command again to continue", file=sys.stderr
        )
        return 130
    except ValueError as e:
        print(f"xlram data generate: {e}", file=sys.stderr)
        return 1
    print(
        f"generated {len(report.done)} tasks, kept {len(report.skipped)} already complete, "
        f"{len(report.failed)} failed, in {report.seconds:.0f} s"
    )
    for domain, t in sorted(report.throughput().items()):
        print(
            f"  {domain:10s} {t['tasks']:3d} tasks {t['steps']:9d} steps  "
            f"{t['steps_per_s']:8.0f} steps/s per worker"
        )
    for task, err in report.failed.items():
        print(f"  FAILED {task}: {err}", file=sys.stderr)
    return 1 if report.failed else 0


def run_info(args) -> int:
    from xlram.rl.datasets import DatasetError, find_datasets, task_statistics

    try:
        paths = find_datasets(args.dir)
    except DatasetError as e:
        print(f"xlram data info: {e}", file=sys.stderr)
        return 2
    if not paths:
        print(f"xlram data info: no Minari datasets under {args.dir}", file=sys.stderr)
        return 2
    rows, bad = [], 0
    for p in paths:
        try:
            rows.append(task_statistics(p))
        except DatasetError as e:
            print(f"xlram data info: {e}", file=sys.stderr)
            bad += 1
    if args.json:
        print(json.dumps(rows, indent=1))
        return 1 if bad else 0
    header = (
        f"{'task':36s} {'eps':>5s} {'steps':>8s} {'ret mean':>9s} {'min':>8s} {'max':>8s} "
        f"{'random':>8s} {'expert':>8s} {'succ':>5s} {'MB':>7s}"
    )
    print(header)
    print("-" * len(header))
    tot_eps = tot_steps = 0
    tot_mb = 0.0
    for r in rows:
        succ = r["expert_success_rate"]
        print(
            f"{r['task'][:36]:36s} {r['episodes']:5d} {r['steps']:8d} {r['return_mean']:9.1f} "
            f"{r['return_min']:8.1f} "
            f"{r['return_max']:8.1f} {_f(r['ref_min_score']):>8s} {_f(r['ref_max_score']):>8s} "
            f"{(f'{succ:.2f}' if succ is not None else '-'):>5s} {r['size_mb']:7.1f}"
        )
        tot_eps += r["episodes"]
        tot_steps += r["steps"]
        tot_mb += r["size_mb"]
    print("-" * len(header))
    print(f"{len(rows)} tasks, {tot_eps} episodes, {tot_steps} steps, {tot_mb:.1f} MB")
    return 1 if bad else 0


def _f(v) -> str:
    return "-" if v is None else f"{v:.1f}"
