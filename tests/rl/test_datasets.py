"""The Minari format: round trips, other people's datasets, bad files, atomic and resumable writes."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("minari")
pytest.importorskip("h5py")
gym = pytest.importorskip("gymnasium")

from xlram.rl.conventions import DMC_SLOTS, STATE_DIM  # noqa: E402
from xlram.rl.datasets import (  # noqa: E402
    DatasetError,
    Episode,
    dataset_dir,
    find_datasets,
    is_complete,
    load_datasets,
    load_task,
    task_statistics,
    write_dataset,
)
from xlram.rl.generate import TaskPlan, generate_suite, generate_task, task_seed  # noqa: E402


def _episodes(n, T, obs_dim=5, act_dim=3, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        out.append(
            Episode(
                observations=rng.standard_normal((T + i + 1, obs_dim)).astype(np.float32),
                actions=rng.uniform(-1, 1, (T + i, act_dim)).astype(np.float32),
                rewards=rng.standard_normal(T + i),
                terminations=np.zeros(T + i, bool),
                truncations=np.r_[np.zeros(T + i - 1, bool), True],
                meta={"policy": "expert" if i == 0 else "random", "noise": 0.0},
                seed=i,
            )
        )
    return out


def _write(root, task_id="metaworld/reach", n=3, T=10, **kw):
    eps = _episodes(n, T)
    obs_space = gym.spaces.Box(-np.inf, np.inf, (5,), np.float32)
    act_space = gym.spaces.Box(-1, 1, (3,), np.float32)
    meta = {"domain": task_id.split("/")[0], "task": task_id.split("/")[1], "reward_scale": 200.0}
    path = write_dataset(
        dataset_dir(root, task_id),
        task_id,
        eps,
        observation_space=obs_space,
        action_space=act_space,
        xlram_meta=meta,
        ref_min_score=0.0,
        ref_max_score=1.0,
        **kw,
    )
    return path, eps


def test_round_trip_through_minari(tmp_path, monkeypatch):
    path, eps = _write(tmp_path)
    assert path == tmp_path / "metaworld" / "reach-v0"
    # standard Minari tools read it
    import minari

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    ds = minari.load_dataset("metaworld/reach-v0")
    assert ds.total_episodes == 3
    np.testing.assert_array_equal(ds[1].observations, eps[1].observations)
    np.testing.assert_array_equal(ds[1].actions, eps[1].actions)
    assert minari.get_normalized_score(ds, np.array(0.5)) == pytest.approx(0.5)
    # and the project reads it in the shared conventions
    td = load_task(path)
    assert td.task_id == "metaworld/reach" and td.domain == "metaworld"
    assert td.obs.shape == (10 + 11 + 12, 5)  # compact; the padding to 204 is implied
    padded = td.padded_obs()
    assert padded.shape == (33, STATE_DIM)
    np.testing.assert_array_equal(padded[:10, :5], eps[0].observations[:10])
    assert not padded[:, 5:].any()
    np.testing.assert_array_equal(td.starts, [0, 10, 21])
    np.testing.assert_allclose(td.episode_returns(), [e.rewards.sum() for e in eps], rtol=1e-5)
    assert td.episode_meta[0]["policy"] == "expert"
    stats = task_statistics(path)
    assert stats["episodes"] == 3 and stats["steps"] == 33 and stats["by_policy"]["random"]["episodes"] == 2


def test_generated_task_round_trip(tmp_path):
    s = generate_task(TaskPlan("darkroom/goal-4-4", 6, None, task_seed("darkroom/goal-4-4")), tmp_path)
    td = load_task(s["path"])
    assert td.discrete and td.num_episodes == 6 and td.padded_obs().shape == (600, STATE_DIM)
    assert td.meta["xlram"]["reference"]["expert_return"] == 99.0  # two moves from the start, then stay
    assert td.meta["ref_max_score"] == 99.0
    assert is_complete(s["path"], expected_episodes=6)


def test_generated_atari_frames_round_trip(tmp_path):
    pytest.importorskip("ale_py")
    s = generate_task(TaskPlan("atari/freeway", 2, 60, 5, jpeg=False), tmp_path)
    td = load_task(s["path"])
    assert td.obs.shape == (120, 64, 64, 3) and td.obs.dtype == np.uint8
    from xlram.rl.envs import make_env

    env = make_env("atari/freeway")
    first, _ = env.reset(seed=5)
    np.testing.assert_array_equal(td.obs[0], first)  # lossless and seeded: the same first frame
    s2 = generate_task(TaskPlan("atari/pong", 2, 60, 5, jpeg=True), tmp_path)
    td2 = load_task(s2["path"])
    first2, _ = make_env("atari/pong").reset(seed=5)
    assert np.abs(td2.obs[0].astype(int) - first2.astype(int)).mean() < 8  # JPEG: close, not equal


def test_users_d4rl_style_dataset(tmp_path, monkeypatch):
    """A dataset made with Minari's own API, with other spaces: Box(17) obs, actions in [-2, 2]."""
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    rng = np.random.default_rng(0)
    bufs = [
        EpisodeBuffer(
            observations=rng.standard_normal((21, 17)),
            actions=rng.uniform(-2, 2, (20, 6)),
            rewards=rng.standard_normal(20),
            terminations=np.zeros(20, bool),
            truncations=np.r_[np.zeros(19, bool), True],
        )
        for _ in range(2)
    ]
    minari.create_dataset_from_buffers(
        "mujoco/halfcheetah/expert-v0",
        bufs,
        algorithm_name="x",
        author="me",
        author_email="a@b",
        code_permalink="c",
        description="d",
        observation_space=gym.spaces.Box(-np.inf, np.inf, (17,), np.float64),
        action_space=gym.spaces.Box(-2, 2, (6,), np.float32),
    )
    [path] = find_datasets(tmp_path / "mujoco")
    td = load_task(path)
    assert td.domain == "mujoco" and td.padded_obs().shape == (40, STATE_DIM) and td.action_dim == 6
    np.testing.assert_allclose(td.actions[:20], np.clip(bufs[0].actions / 2, -1, 1), atol=1e-6)
    td2 = load_task(path, domain="dmcontrol")
    assert td2.domain == "dmcontrol"


def test_dict_observations_use_dmc_slots(tmp_path):
    obs_space = gym.spaces.Dict(
        {"position": gym.spaces.Box(-np.inf, np.inf, (3,)), "velocity": gym.spaces.Box(-np.inf, np.inf, (2,))}
    )
    rng = np.random.default_rng(0)
    ep = Episode(
        observations={"position": rng.standard_normal((6, 3)), "velocity": rng.standard_normal((6, 2))},
        actions=rng.uniform(-1, 1, (5, 1)).astype(np.float32),
        rewards=np.ones(5),
        terminations=np.zeros(5, bool),
        truncations=np.r_[np.zeros(4, bool), True],
        meta={"policy": "x"},
    )
    path = write_dataset(
        tmp_path / "x" / "cartpole-v0",
        "dmcontrol/cartpole",
        [ep],
        observation_space=obs_space,
        action_space=gym.spaces.Box(-1, 1, (1,), np.float32),
        xlram_meta={},
    )
    td = load_task(path, domain="dmcontrol")
    np.testing.assert_allclose(
        td.obs[:, DMC_SLOTS["position"]][:, :3], ep.observations["position"][:5], rtol=1e-6
    )
    np.testing.assert_allclose(
        td.obs[:, DMC_SLOTS["velocity"]][:, :2], ep.observations["velocity"][:5], rtol=1e-6
    )


def test_truncated_hdf5_is_a_clear_error(tmp_path):
    path, _ = _write(tmp_path)
    h5 = path / "data" / "main_data.hdf5"
    data = h5.read_bytes()
    h5.write_bytes(data[: len(data) // 3])
    with pytest.raises(DatasetError, match="corrupt or truncated"):
        load_task(path)
    assert not is_complete(path)
    with pytest.raises(DatasetError, match="corrupt or truncated"):
        task_statistics(path)


def test_corrupt_metadata_is_a_clear_error(tmp_path):
    path, _ = _write(tmp_path)
    (path / "data" / "metadata.json").write_text("{not json")
    with pytest.raises(DatasetError, match="metadata.json is corrupt"):
        load_task(path)
    (path / "data" / "metadata.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(DatasetError, match="lacks"):
        load_task(path)
    with pytest.raises(DatasetError, match="no such dataset directory"):
        find_datasets(tmp_path / "missing")


def test_mismatched_spaces_are_clear_errors(tmp_path):
    path, _ = _write(tmp_path)
    meta_file = path / "data" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    from minari.serialization import serialize_space

    meta["observation_space"] = serialize_space(gym.spaces.Box(-1, 1, (4,), np.float32))
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"observations have shape \(5,\), the space says \(4,\)"):
        load_task(path)
    meta["observation_space"] = serialize_space(gym.spaces.Box(-1, 1, (5,), np.float32))
    meta["action_space"] = serialize_space(gym.spaces.Box(-1, 1, (12,), np.float32))
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="12-dimensional actions"):
        load_task(path)
    meta["action_space"] = serialize_space(gym.spaces.Discrete(40))
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="Discrete"):
        load_task(path)


def test_failed_write_leaves_nothing_that_looks_whole(tmp_path, monkeypatch):
    from minari.dataset._storages.hdf5_storage import HDF5Storage

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(HDF5Storage, "update_episode_metadata", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        _write(tmp_path)
    assert not dataset_dir(tmp_path, "metaworld/reach").exists()
    assert list((tmp_path / "metaworld").iterdir()) == []
    assert find_datasets(tmp_path) == []
    with pytest.raises(FileExistsError):
        monkeypatch.undo()
        _write(tmp_path)
        _write(tmp_path)


def test_interrupted_generation_resumes(tmp_path, monkeypatch):
    import xlram.rl.generate as gen

    plans = [
        TaskPlan(f"darkroom/{g}", 4, None, task_seed(f"darkroom/{g}"))
        for g in ("goal-0-0", "goal-1-1", "goal-2-2")
    ]
    real = gen.generate_task
    calls = []

    def interrupted(plan, out_root, on_step=None):
        calls.append(plan.task_id)
        if len(calls) == 2:
            # as if killed in the middle of writing: a partial directory is left behind
            d = dataset_dir(out_root, plan.task_id)
            (d.parent / f".{d.name}.partial-999").mkdir(parents=True)
            raise KeyboardInterrupt
        return real(plan, out_root, on_step)

    monkeypatch.setattr(gen, "generate_task", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate_suite(plans, tmp_path, workers=1, progress=False)
    done_first = [p for p in find_datasets(tmp_path)]
    assert len(done_first) == 1
    monkeypatch.setattr(gen, "generate_task", real)
    report = generate_suite(plans, tmp_path, workers=1, progress=False)
    assert len(report.skipped) == 1 and len(report.done) == 2 and not report.failed
    assert len(find_datasets(tmp_path)) == 3
    assert not [p for p in Path(tmp_path).rglob(".*partial*")]
    assert all(is_complete(p) for p in find_datasets(tmp_path))
    assert len(load_datasets(tmp_path)) == 3
    manifest = json.loads((tmp_path / "xlram_generation.json").read_text())
    assert len(manifest["tasks"]) == 3


def test_existing_incomplete_dataset_is_reported_not_overwritten(tmp_path):
    d = dataset_dir(tmp_path, "darkroom/goal-0-0")
    (d / "data").mkdir(parents=True)
    (d / "data" / "metadata.json").write_text("{}")
    with pytest.raises(DatasetError, match="not a complete dataset"):
        generate_suite([TaskPlan("darkroom/goal-0-0", 2)], tmp_path, progress=False)
    assert os.path.exists(d / "data" / "metadata.json")


def test_parallel_generation_with_progress(tmp_path):
    import io

    plans = [TaskPlan(f"darkroom/{g}", 3, None, task_seed(f"darkroom/{g}")) for g in ("goal-0-0", "goal-9-9")]
    stream = io.StringIO()
    report = generate_suite(plans, tmp_path, workers=2, progress=True, stream=stream)
    assert len(report.done) == 2 and not report.failed
    assert "2/2 tasks" in stream.getvalue()
    assert report.throughput()["darkroom"]["steps"] == 600
    serial = tmp_path / "serial"
    generate_suite(plans, serial, workers=1, progress=False)
    for p in plans:  # the same data whichever way it was made
        a, b = load_task(dataset_dir(tmp_path, p.task_id)), load_task(dataset_dir(serial, p.task_id))
        np.testing.assert_array_equal(a.obs, b.obs)
        np.testing.assert_array_equal(a.actions, b.actions)
