"""Speed and quality suites behind `xlram bench SUITE`.

Each suite is a module `benchmarks.<name>` with `run(args) -> list[dict]` (rows as in SPEC.md section 6)
and optionally `add_arguments(parser)`. Register it in SUITES.
"""

SUITES: dict[str, str] = {
    "data": "benchmarks.data",
    "ops": "benchmarks.ops",
    "step": "benchmarks.step",
    "train": "benchmarks.train",
    "ops_cuda": "benchmarks.ops_cuda",
    "formal": "benchmarks.formal",
    "mqar": "benchmarks.mqar",
    "lm": "benchmarks.lm",
}
