"""Offline datasets in the Minari format (HDF5), written with the `minari` package.

Layout (the one Minari itself uses, so ``MINARI_DATASETS_PATH=DIR minari list local`` and
``minari.load_dataset("metaworld/reach-v0")`` work on a generated directory)::

    DIR/<domain>/<task>-v0/data/metadata.json     Minari metadata (+ an "xlram" entry, see below)
    DIR/<domain>/<task>-v0/data/main_data.hdf5    one group per episode

Each task is one Minari dataset. Its metadata carries Minari's own ``ref_min_score`` /
``ref_max_score`` (random policy and expert returns, so ``minari.get_normalized_score`` works) and an
``"xlram"`` object: domain, task, reward scale, the episode cap, and the reference figures per policy
(return, game-score return for Atari, success rate), measured over the fixed-seed episodes named there.
Every episode's Minari metadata (HDF5 attributes) says which policy made it (``policy``: expert,
noisy, random or learner; ``noise``).

Writing is atomic: a dataset is built under a hidden temporary name next to its final place and
renamed into place only when whole, so an interrupted run never leaves a half-written dataset that
looks whole.

Reading (`load_task`, `load_datasets`) accepts any Minari dataset directory, the project's own or a
user's (D4RL-style): state observations are flattened, to be zero-padded to 204 (DMControl-style dict
observations go to their fixed slots), images must be (H, W, 3) uint8 and are resized to 64×64,
continuous actions are rescaled from their bounds to [-1, 1]; anything that does not fit raises
DatasetError naming the dataset and the mismatch.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xlram.rl.conventions import (
    DMC_SLOTS,
    IMAGE_SHAPE,
    MAX_ACTION_DIM,
    NUM_DISCRETE_ACTIONS,
    STATE_DIM,
    dmc_to_vector,
    domain_info,
    pad_state,
)

DATASET_VERSION = 0
METADATA_FILE = "metadata.json"
HDF5_FILE = "main_data.hdf5"
AUTHOR = "xlram"


class DatasetError(ValueError):
    """A dataset that cannot be read as asked: missing, corrupt, truncated, or with mismatched spaces."""


def dataset_dir(root: str | Path, task_id: str) -> Path:
    """Where the dataset of `task_id` ("domain/task") lives under `root`."""
    domain, task = task_id.split("/", 1)
    return Path(root) / domain / f"{task}-v{DATASET_VERSION}"


def dataset_id(task_id: str) -> str:
    """The Minari dataset id of `task_id`: "domain/task-v0"."""
    return f"{task_id}-v{DATASET_VERSION}"


# ----------------------------------------------------------------------------------------------------
# Writing


@dataclass
class Episode:
    """One episode as the generator collects it (Minari's convention: T steps, T+1 observations).

    observations (T+1, ...), actions (T, ...), rewards (T,), terminations / truncations (T,) bool,
    infos: per-key arrays of length T+1 (the reset's info first), meta: small JSON-able facts (policy,
    noise, seed, return, success) stored as the episode's Minari metadata.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    infos: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    seed: int | None = None

    def __len__(self) -> int:
        return int(len(self.rewards))


def write_dataset(
    path: str | Path,
    task_id: str,
    episodes: list[Episode],
    *,
    observation_space,
    action_space,
    xlram_meta: dict,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    env_spec=None,
    description: str = "",
    algorithm_name: str = "scripted expert, noisy expert, random",
    jpeg_encoding: bool = False,
) -> Path:
    """Write `episodes` as the Minari dataset of `task_id` at `path` (a "<task>-v0" directory), atomically.

    An existing dataset at `path` is an error (FileExistsError). The data is built in a hidden
    ".<name>.partial-<pid>" directory beside `path` (removed on failure; `clean_partial` removes those
    left by a killed process) and renamed into place when whole.
    """
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer
    from minari.dataset.minari_storage import MinariStorage

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"a dataset already exists at {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.partial-{os.getpid()}"
    try:
        tmp.mkdir()
        storage = MinariStorage.new(
            tmp / "data",
            observation_space=observation_space,
            action_space=action_space,
            env_spec=env_spec,
            jpeg_encoding=jpeg_encoding,
        )
        meta = {
            "dataset_id": dataset_id(task_id),
            "minari_version": minari.__version__,
            "author": {AUTHOR},
            "algorithm_name": algorithm_name,
            "description": description or f"{task_id}: mixed-quality episodes generated by xlram",
            "code_permalink": "xlram.rl.generate",
            "xlram": xlram_meta,
        }
        if ref_min_score is not None and ref_max_score is not None:
            meta["ref_min_score"] = float(ref_min_score)
            meta["ref_max_score"] = float(ref_max_score)
            meta["num_episodes_average_score"] = int(xlram_meta.get("reference_episodes", 0))
        storage.update_metadata(meta)
        # A few episodes per call: each call opens the HDF5 file once.
        for start in range(0, len(episodes), 16):
            chunk = episodes[start : start + 16]
            storage.update_episodes(
                [
                    EpisodeBuffer(
                        id=start + i,
                        seed=ep.seed,
                        observations=ep.observations,
                        actions=ep.actions,
                        rewards=np.asarray(ep.rewards, np.float64),
                        terminations=np.asarray(ep.terminations, bool),
                        truncations=np.asarray(ep.truncations, bool),
                        infos=ep.infos or None,
                    )
                    for i, ep in enumerate(chunk)
                ]
            )
        storage.update_episode_metadata([_jsonable(ep.meta) for ep in episodes], range(len(episodes)))
        _fsync_tree(tmp)
        os.replace(tmp, path)  # a directory rename: the dataset appears whole or not at all
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def clean_partial(directory: str | Path, name: str = "*") -> int:
    """Remove leftovers of interrupted writes (hidden ".<name>.partial-*" directories) in `directory`.
    Call it only when no other process is writing there."""
    n = 0
    directory = Path(directory)
    if directory.is_dir():
        for p in directory.glob(f".{name}.partial-*"):
            shutil.rmtree(p, ignore_errors=True)
            n += 1
    return n


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def _jsonable(meta: dict) -> dict:
    """Episode metadata as HDF5 attributes: numbers and strings only (None dropped)."""
    out = {}
    for k, v in meta.items():
        if v is None:
            continue
        if isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


# ----------------------------------------------------------------------------------------------------
# Reading


@dataclass
class TaskData:
    """One task's episodes, concatenated and converted to the shared conventions.

    obs: (N, d) float32, d ≤ 204, in the shared layout with the zero-padding to 204 left implicit
         (`padded_obs()` makes it explicit; the sampler pads per batch, which keeps Dark-Room's 2-d and
         Meta-World's 39-d states small in memory), or (N, 64, 64, 3) uint8 — the observation *before*
         each of the N steps;
    actions: (N, A) float32 in [-1, 1] (A ≤ 8) or (N,) int64 (< 18); rewards: (N,) float32 as stored;
    starts: (E,) int64 index of each episode's first step; lengths: (E,) int64;
    episode_meta: per-episode metadata (policy, noise, ...); meta: the dataset's metadata.
    """

    task_id: str
    domain: str
    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    discrete: bool
    action_dim: int
    episode_meta: list[dict]
    meta: dict
    path: Path

    @property
    def num_steps(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def num_episodes(self) -> int:
        return int(self.starts.shape[0])

    def episode_returns(self) -> np.ndarray:
        """(E,) undiscounted return of every episode (stored rewards)."""
        return (
            np.add.reduceat(self.rewards.astype(np.float64), self.starts) if self.num_steps else np.zeros(0)
        )

    @property
    def obs_kind(self) -> str:
        return "image" if self.obs.ndim == 4 else "state"

    def padded_obs(self) -> np.ndarray:
        """The observations with state vectors zero-padded to (N, 204)."""
        return self.obs if self.obs.ndim == 4 else pad_state(self.obs)


def find_datasets(root: str | Path) -> list[Path]:
    """Every Minari dataset under `root` (a dataset directory, its data/ folder, or any parent), as the
    directories that hold data/metadata.json, sorted. Hidden (partial) directories are skipped."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"no such dataset directory: {root}")
    if (root / METADATA_FILE).is_file() and root.name == "data":
        return [root.parent]
    if (root / "data" / METADATA_FILE).is_file():
        return [root]
    found = []
    for meta in sorted(root.rglob(f"data/{METADATA_FILE}")):
        rel = meta.relative_to(root).parts
        if any(part.startswith(".") for part in rel):
            continue
        found.append(meta.parent.parent)
    return found


def read_metadata(path: str | Path) -> dict:
    """The metadata.json of the dataset at `path`, checked to be Minari metadata (DatasetError if not)."""
    path = Path(path)
    f = path / "data" / METADATA_FILE
    if not f.is_file():
        raise DatasetError(f"{path}: not a Minari dataset (no data/{METADATA_FILE})")
    try:
        meta = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: {METADATA_FILE} is corrupt ({e})") from e
    missing = [
        k for k in ("total_episodes", "total_steps", "observation_space", "action_space") if k not in meta
    ]
    if missing:
        raise DatasetError(f"{path}: {METADATA_FILE} lacks {missing}; is this a Minari dataset?")
    return meta


def is_complete(path: str | Path, expected_episodes: int | None = None) -> bool:
    """Whether a whole, readable dataset is at `path` (metadata, HDF5 file with every episode)."""
    try:
        meta = read_metadata(path)
        if expected_episodes is not None and int(meta["total_episodes"]) != expected_episodes:
            return False
        _check_hdf5(Path(path), meta)
        return True
    except DatasetError:
        return False


def _check_hdf5(path: Path, meta: dict) -> None:
    import h5py

    f = path / "data" / HDF5_FILE
    if not f.is_file():
        raise DatasetError(f"{path}: data/{HDF5_FILE} is missing")
    try:
        with h5py.File(f, "r") as h5:
            n = sum(1 for k in h5.keys() if k.startswith("episode_"))
    except OSError as e:
        raise DatasetError(f"{path}: data/{HDF5_FILE} is corrupt or truncated ({e})") from e
    if n != int(meta["total_episodes"]):
        raise DatasetError(
            f"{path}: metadata says {meta['total_episodes']} episodes, the HDF5 file holds {n}"
        )


def _infer_domain(meta: dict, path: Path) -> str:
    x = meta.get("xlram") or {}
    if "domain" in x:
        return str(x["domain"])
    ds_id = str(meta.get("dataset_id", path.name))
    return ds_id.split("/")[0].lower() if "/" in ds_id else "other"


def load_task(path: str | Path, *, domain: str | None = None, max_episodes: int | None = None) -> TaskData:
    """Read the Minari dataset at `path` into a TaskData in the shared conventions.

    `domain` overrides the domain recorded in the dataset (a user's dataset has none: its namespace is
    used, e.g. "D4RL" for "D4RL/door/human-v2"); `max_episodes` reads only the first episodes.
    """
    path = Path(path)
    meta = read_metadata(path)
    _check_hdf5(path, meta)
    try:
        from minari import MinariDataset

        ds = MinariDataset(path / "data")
    except DatasetError:
        raise
    except Exception as e:  # minari raises ValueError/AssertionError/KeyError on bad metadata
        raise DatasetError(f"{path}: Minari cannot open this dataset ({type(e).__name__}: {e})") from e
    obs_space, act_space = ds.observation_space, ds.action_space
    discrete, action_dim, act_convert = _action_converter(act_space, path)
    obs_convert = _obs_converter(obs_space, path)
    dom = domain or _infer_domain(meta, path)
    x = meta.get("xlram") or {}
    task_id = f"{dom}/{x['task']}" if "task" in x else str(meta.get("dataset_id", path.name))

    n_eps = ds.total_episodes if max_episodes is None else min(max_episodes, ds.total_episodes)
    obs_parts, act_parts, rew_parts, lengths = [], [], [], []
    try:
        for ep in ds.iterate_episodes(range(n_eps)):
            T = len(ep.rewards)
            o = obs_convert(ep.observations)
            if o.shape[0] != T + 1:
                raise DatasetError(
                    f"{path}: episode {ep.id} has {o.shape[0]} observations for {T} steps (expected {T + 1})"
                )
            a = act_convert(ep.actions)
            if a.shape[0] != T:
                raise DatasetError(f"{path}: episode {ep.id} has {a.shape[0]} actions for {T} steps")
            obs_parts.append(o[:T])
            act_parts.append(a)
            rew_parts.append(np.asarray(ep.rewards, np.float32))
            lengths.append(T)
        episode_meta = list(ds.storage.get_episode_metadata(range(n_eps)))
    except DatasetError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise DatasetError(
            f"{path}: cannot read episodes ({type(e).__name__}: {e}); "
            f"the file may be corrupt or its spaces may not match its data"
        ) from e
    if not lengths:
        raise DatasetError(f"{path}: the dataset holds no episodes")
    lengths_arr = np.asarray(lengths, np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths_arr)[:-1]]).astype(np.int64)
    return TaskData(
        task_id=task_id,
        domain=dom,
        obs=np.concatenate(obs_parts),
        actions=np.concatenate(act_parts),
        rewards=np.concatenate(rew_parts),
        starts=starts,
        lengths=lengths_arr,
        discrete=discrete,
        action_dim=action_dim,
        episode_meta=[_plain(m) for m in episode_meta],
        meta=meta,
        path=path,
    )


def load_datasets(
    root: str | Path,
    *,
    domain: str | None = None,
    tasks: list[str] | None = None,
    max_episodes: int | None = None,
) -> list[TaskData]:
    """Every dataset under `root` (see `find_datasets`), optionally only the task ids in `tasks`."""
    paths = find_datasets(root)
    if not paths:
        raise DatasetError(f"no Minari datasets under {root}")
    out = []
    for p in paths:
        if tasks is not None:
            meta = read_metadata(p)
            x = meta.get("xlram") or {}
            tid = f"{x.get('domain')}/{x.get('task')}" if "task" in x else str(meta.get("dataset_id"))
            if tid not in tasks:
                continue
        out.append(load_task(p, domain=domain, max_episodes=max_episodes))
    return out


def _plain(m: dict) -> dict:
    out = {}
    for k, v in m.items():
        if isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, np.ndarray):
            v = v.tolist()
        out[k] = v
    return out


def _action_converter(space, path: Path):
    """(discrete, action_dim, fn) turning stored actions into the shared convention."""
    import gymnasium as gym

    if isinstance(space, gym.spaces.Discrete):
        if space.n > NUM_DISCRETE_ACTIONS:
            raise DatasetError(
                f"{path}: Discrete({space.n}) actions do not fit the shared {NUM_DISCRETE_ACTIONS}-action set"
            )

        def conv(a):
            a = np.asarray(a)
            if a.ndim != 1:
                raise DatasetError(
                    f"{path}: actions have shape {a.shape[1:]} per step, the action space is "
                    f"Discrete({space.n})"
                )
            a = a.astype(np.int64) - int(space.start)
            if a.size and (a.min() < 0 or a.max() >= space.n):
                raise DatasetError(f"{path}: actions outside Discrete({space.n})")
            return a

        return True, 1, conv
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
        d = space.shape[0]
        if d > MAX_ACTION_DIM:
            raise DatasetError(f"{path}: {d}-dimensional actions, more than the shared {MAX_ACTION_DIM}")
        low, high = space.low.astype(np.float64), space.high.astype(np.float64)
        finite = np.isfinite(low) & np.isfinite(high) & (high > low)
        rescale = bool(finite.all() and not (np.allclose(low, -1) and np.allclose(high, 1)))

        def conv(a):
            a = np.asarray(a, np.float64)
            if a.ndim != 2 or a.shape[1] != d:
                raise DatasetError(
                    f"{path}: actions have shape {a.shape[1:]} per step, the action space says ({d},)"
                )
            if rescale:
                a = 2.0 * (a - low) / (high - low) - 1.0
            return np.clip(a, -1.0, 1.0).astype(np.float32)

        return False, d, conv
    raise DatasetError(
        f"{path}: unsupported action space {space} (Discrete(n ≤ 18) or 1-D Box with ≤ 8 dims)"
    )


def _obs_converter(space, path: Path):
    import gymnasium as gym

    if isinstance(space, gym.spaces.Box) and len(space.shape) == 3 and space.dtype == np.uint8:
        h, w, c = space.shape
        if c != 3:
            raise DatasetError(
                f"{path}: image observations must be (H, W, 3) RGB, the space is {space.shape}"
            )

        def conv_img(o):
            o = np.asarray(o)
            if o.ndim != 4 or o.shape[1:] != (h, w, 3):
                raise DatasetError(
                    f"{path}: observations have shape {o.shape[1:]}, the space says {space.shape}"
                )
            if (h, w) == IMAGE_SHAPE[:2]:
                return o.astype(np.uint8, copy=False)
            from xlram.rl.envs.atari import resize_frame

            return np.stack([resize_frame(f, IMAGE_SHAPE[0]) for f in o])

        return conv_img
    if isinstance(space, gym.spaces.Box):
        dim = int(np.prod(space.shape))
        if dim > STATE_DIM:
            raise DatasetError(f"{path}: {dim}-dimensional observations, more than the shared {STATE_DIM}")

        def conv_vec(o):
            o = np.asarray(o)
            if o.shape[1:] != tuple(space.shape):
                raise DatasetError(
                    f"{path}: observations have shape {o.shape[1:]}, the space says {space.shape}"
                )
            return o.reshape(o.shape[0], -1).astype(np.float32, copy=False)

        return conv_vec
    if isinstance(space, gym.spaces.Dict):
        keys = list(space.spaces)
        dmc = all(k in DMC_SLOTS for k in keys)
        if not dmc:
            total = sum(int(np.prod(s.shape)) for s in space.spaces.values())
            if total > STATE_DIM:
                raise DatasetError(
                    f"{path}: dict observations flatten to {total} dims, more than {STATE_DIM}"
                )

        def conv_dict(o):
            n = len(next(iter(o.values())))
            if dmc:
                out = np.zeros((n, STATE_DIM), np.float32)
                for i in range(n):
                    dmc_to_vector({k: o[k][i] for k in keys}, out[i])
                return out
            parts = [np.asarray(o[k], np.float32).reshape(n, -1) for k in sorted(keys)]
            return np.concatenate(parts, axis=1)

        return conv_dict
    raise DatasetError(f"{path}: unsupported observation space {space}")


# ----------------------------------------------------------------------------------------------------
# Statistics


def task_statistics(path: str | Path) -> dict:
    """Per-task figures for `xlram data info`: episodes, steps, returns (mean/min/max), per-policy means,
    reference returns and success rates, size on disk. Reads only rewards and metadata (fast)."""
    import h5py

    path = Path(path)
    meta = read_metadata(path)
    _check_hdf5(path, meta)
    x = meta.get("xlram") or {}
    returns, policies, lengths = [], [], []
    try:
        with h5py.File(path / "data" / HDF5_FILE, "r") as h5:
            for i in range(int(meta["total_episodes"])):
                g = h5[f"episode_{i}"]
                r = g["rewards"][()]
                returns.append(float(np.sum(r)))
                lengths.append(int(r.shape[0]))
                pol = g.attrs.get("policy", "?")
                policies.append(pol.decode() if isinstance(pol, bytes) else str(pol))
    except (OSError, KeyError) as e:
        raise DatasetError(f"{path}: data/{HDF5_FILE} is corrupt or truncated ({e})") from e
    rets = np.asarray(returns)
    by_policy = {}
    for pol in sorted(set(policies)):
        sel = [r for r, p in zip(returns, policies, strict=True) if p == pol]
        by_policy[pol] = {"episodes": len(sel), "mean_return": float(np.mean(sel))}
    size = sum(p.stat().st_size for p in (path / "data").iterdir() if p.is_file())
    domain = x.get("domain", _infer_domain(meta, path))
    return {
        "task": f"{domain}/{x['task']}" if "task" in x else str(meta.get("dataset_id", path.name)),
        "domain": domain,
        "episodes": int(meta["total_episodes"]),
        "steps": int(meta["total_steps"]),
        "mean_length": float(np.mean(lengths)) if lengths else 0.0,
        "return_mean": float(rets.mean()) if rets.size else float("nan"),
        "return_min": float(rets.min()) if rets.size else float("nan"),
        "return_max": float(rets.max()) if rets.size else float("nan"),
        "by_policy": by_policy,
        "ref_min_score": meta.get("ref_min_score"),
        "ref_max_score": meta.get("ref_max_score"),
        "expert_success_rate": (x.get("reference") or {}).get("expert_success_rate"),
        "size_mb": size / 1e6,
        "reward_scale": x.get("reward_scale", domain_info(domain).reward_scale),
        "generated": x.get("generated_at"),
        "path": str(path),
    }


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")
