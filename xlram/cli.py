"""The `xlram` command: `xlram demo`, `xlram bench SUITE`, `xlram data ...`, `xlram train ...`.

Each subcommand's work lives in its own module, imported only when that subcommand runs, so that
`xlram --help` stays fast and optional dependencies are needed only by the commands that use them.
"""

from __future__ import annotations

import argparse
import importlib
import sys


def _add_bench(sub) -> None:
    from benchmarks import SUITES

    p = sub.add_parser("bench", help="run a benchmark suite: prints a table and writes DIR/SUITE.json")
    p.add_argument("suite", help=f"one of: {', '.join(sorted(SUITES)) or '(none registered)'}")
    p.add_argument("--quick", action="store_true", help="small sizes, finishes in minutes")
    p.add_argument("--out", default="results", help="directory for SUITE.json (default: results)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--seeds", type=int, default=None,
                   help="number of seeds for the training suites (default: the suite's own, 3 in full mode)")
    p.set_defaults(func=_run_bench)


def _run_bench(args) -> int:
    from benchmarks import SUITES
    from benchmarks.common import format_table, write_results

    if args.suite not in SUITES:
        print(f"xlram bench: unknown suite {args.suite!r}; known suites: {', '.join(sorted(SUITES))}",
              file=sys.stderr)
        return 2
    module = importlib.import_module(SUITES[args.suite])
    rows = module.run(args)
    print(format_table(rows))
    path = write_results(args.suite, rows, args.out)
    print(f"wrote {path}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the main job: train a small model, evaluate it and show the figures")
    p.add_argument("--minutes", type=float, default=3.0, help="training time budget in minutes (default: 3)")
    p.add_argument("--out", default="runs/demo", help="directory for the checkpoint and figures")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=lambda args: importlib.import_module("xlram.demo").run(args))


def _add_data(sub) -> None:
    try:
        commands = importlib.import_module("xlram.rl.commands")
    except ModuleNotFoundError as e:
        if e.name != "xlram.rl.commands":
            raise
        return
    commands.add_data_parser(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xlram", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_demo(sub)
    _add_bench(sub)
    _add_data(sub)
    importlib.import_module("xlram.train.commands").add_train_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from xlram.cpu_allocator import tune_cpu_allocator

    tune_cpu_allocator()  # large CPU tensors reuse heap memory (see xlram/cpu_allocator.py)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
