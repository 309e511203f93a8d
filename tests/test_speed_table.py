"""The README speed table is made from the suites' JSON, row by row."""

import json

import pytest

from benchmarks.speed_table import table

MACHINE = {"date": "2026-11-22", "processor": "AMD EPYC", "cores": 2, "torch_threads": 1,
           "torch": "2.13.0+cpu"}


def _write(path, suite, rows):
    path.joinpath(f"{suite}.json").write_text(json.dumps({"suite": suite, "machine": MACHINE, "rows": rows}))


def test_table_reads_every_figure_from_the_rows(tmp_path):
    _write(tmp_path, "step", [
        {"metric": "ms_per_step", "impl": "xlstm-2.0.6", "batch": 1, "value": 5.0, "load": 1.5},
        {"metric": "ms_per_step", "impl": "xlram", "batch": 1, "value": 1.25, "speedup": 4.0, "of_bound": 0.4,
         "bound_ms": 0.5, "load": 1.5},
        {"metric": "tokens_per_s", "impl": "xlram", "S": 16384, "value": 4321.0, "load": 1.5},
    ])
    _write(tmp_path, "train", [
        {"metric": "tokens_per_s", "impl": "xlram", "context": 4096, "batch": 1, "value": 1500.0,
         "wall_tokens_per_s": 1400.0, "load": 2.0},
        *({"metric": "peak_mem_mb", "impl": "xlram", "context": c, "value": v, "growth": 0.9, "load": 2.0}
          for c, v in ((256, 100.0), (1024, 400.0))),
    ])
    text = table(tmp_path)
    assert "Measured 2026-11-22 on AMD EPYC, 2 cores" in text
    assert ("| LM generation step (xlram), batch 1 | ms | 5.00 | 1.25 | 4.0x "
            "| 0.40 of the memory bound (0.50 ms) |") in text
    assert "| LM prefill, batch 1, 16,384 tokens | tokens/s | - | 4,321 | - | |" in text
    assert ("| LM training, context 4,096 (batch 1) | tokens/s | - | 1,500 | - "
            "| wall clock: 1,400 tokens/s |") in text
    assert "256: 100, 1,024: 400; log-log slope 0.9" in text
    assert "ops" not in text.split("| what")[1]  # no ops.json: no ops rows


def test_table_without_results_says_so(tmp_path):
    with pytest.raises(SystemExit, match="no ops.json"):
        table(tmp_path)
