"""`xlram data generate` / `xlram data info` end to end on a tiny suite."""

import json

import pytest

pytest.importorskip("minari")
pytest.importorskip("gymnasium")

from xlram.cli import main  # noqa: E402


def test_generate_and_info(tmp_path, capsys):
    out = tmp_path / "ds"
    rc = main(
        [
            "data",
            "generate",
            "--suite",
            "mini",
            "--domains",
            "darkroom",
            "--episodes",
            "3",
            "--out",
            str(out),
            "--workers",
            "1",
            "--no-progress",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "generated 80 tasks" in text and "darkroom" in text
    # a second run keeps everything
    rc = main(
        [
            "data",
            "generate",
            "--suite",
            "mini",
            "--domains",
            "darkroom",
            "--episodes",
            "3",
            "--out",
            str(out),
            "--workers",
            "1",
            "--no-progress",
        ]
    )
    assert rc == 0 and "kept 80 already complete" in capsys.readouterr().out
    assert main(["data", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "darkroom/goal-" in text and "80 tasks, 240 episodes" in text
    assert main(["data", "info", str(out / "darkroom" / "goal-0-0-v0"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["task"] == "darkroom/goal-0-0" and rows[0]["episodes"] == 3


def test_bad_arguments(tmp_path, capsys):
    assert main(["data", "generate", "--suite", "mini", "--domains", "mujoco", "--out", str(tmp_path)]) == 2
    assert "unknown domain" in capsys.readouterr().err
    assert main(["data", "info", str(tmp_path / "nothing")]) == 2
    assert "no such dataset directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "generate", "--suite", "huge", "--out", str(tmp_path)])
