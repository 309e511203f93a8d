"""Training batches: segments of C timesteps, one domain per micro-batch, deterministic given a seed.

A segment ends at a step drawn uniformly from all steps of the domain (so an episode is picked with
probability proportional to its length, and the end point uniformly inside it) and takes the C steps
before it, left-padded where the episode is shorter (the reference's sampling). For in-context RL
(Dark-Room by default) a segment runs across episode boundaries within a task's learning history.

Every array of a domain is precomputed once (scaled rewards, returns-to-go, the previous step's
reward, timesteps, action targets), so a batch is a handful of NumPy gathers: thousands of state
batches or hundreds of image batches per second on one core (see `xlram bench data`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from xlram.rl.conventions import (
    MAX_ACTION_DIM,
    NUM_DISCRETE_ACTIONS,
    STATE_DIM,
    bin_actions,
    pad_state,
    returns_to_go,
    scale_rewards,
)
from xlram.rl.datasets import TaskData

CROSS_EPISODE_DOMAINS = ("darkroom",)


@dataclass
class Batch:
    """One micro-batch of one domain. B segments of C steps; padded steps come first (left padding).

    obs            (B, C, 204) float32, or (B, C, 64, 64, 3) uint8 for image domains
    actions        (B, C, 8) float32 in [-1, 1] (continuous; padded dims 0) or (B, C) int64 (discrete)
    action_targets (B, C, 8) int64: the shared vocabulary of the action head, discrete id (< 18) in dim 0,
                   or 18 + bin (256 uniform bins) per continuous dim; -100 where masked (padding)
    action_dim_mask(B, 8) bool: the action dimensions that exist for each segment's task
    rewards        (B, C) float32 r_t scaled by the domain (clipped first for Atari)
    prev_rewards   (B, C) float32 r_{t-1} scaled, 0 at an episode's first step
    rtg            (B, C) float32 scaled return-to-go R̂_t = Σ_{k≥t} r_k within the episode
    mask           (B, C) bool: real (not padded) steps
    first          (B, C) bool: the first step of an episode (a recurrent state may be reset there)
    timesteps      (B, C) int64 step index within the episode
    task_index     (B,) int64 index into `SegmentSampler.task_ids`
    """

    domain: str
    discrete: bool
    obs: object
    actions: object
    action_targets: object
    action_dim_mask: object
    rewards: object
    prev_rewards: object
    rtg: object
    mask: object
    first: object
    timesteps: object
    task_index: object

    def to(self, device) -> Batch:
        """Move every tensor to `device` (non-blocking from pinned memory)."""
        fields = {
            k: (v.to(device, non_blocking=True) if hasattr(v, "to") else v) for k, v in self.__dict__.items()
        }
        return Batch(**fields)


class _DomainArrays:
    """Everything of one domain, concatenated over its tasks."""

    def __init__(self, domain: str, tasks: list[tuple[int, TaskData]], cross_episode: bool):
        kinds = {t.obs_kind for _, t in tasks}
        discr = {t.discrete for _, t in tasks}
        if len(kinds) > 1 or len(discr) > 1:
            names = [t.task_id for _, t in tasks]
            raise ValueError(
                f"domain {domain!r} mixes observation kinds {sorted(kinds)} or discrete and continuous "
                f"actions across its tasks {names}; give such datasets different domains"
            )
        self.domain = domain
        self.discrete = discr.pop()
        if kinds == {"state"}:
            # pad only to the widest task of the domain here; to STATE_DIM per batch
            width = max(t.obs.shape[1] for _, t in tasks)
            self.obs = np.concatenate([pad_state(t.obs, width) for _, t in tasks])
        else:
            self.obs = np.concatenate([t.obs for _, t in tasks])
        self.image = kinds == {"image"}
        n = self.obs.shape[0]
        self.task_index = np.concatenate([np.full(t.num_steps, i, np.int64) for i, t in tasks])
        # Per-step arrays
        r, rtg, prev, ts, first, seg_start = [], [], [], [], [], []
        acts, targets = [], []
        offset = 0
        self.action_dim_by_task: dict[int, int] = {}
        for i, t in tasks:
            rs = scale_rewards(t.rewards, domain)
            r.append(rs)
            rtg.append(returns_to_go(rs, t.starts).astype(np.float32))
            p = np.concatenate([[0.0], rs[:-1]]).astype(np.float32)
            p[t.starts] = 0.0
            prev.append(p)
            step = np.arange(t.num_steps, dtype=np.int64) - np.repeat(t.starts, t.lengths)
            ts.append(step)
            f = np.zeros(t.num_steps, bool)
            f[t.starts] = True
            first.append(f)
            # where a segment ending at each step may start: its episode's first step, or the task's
            # first step for in-context (cross-episode) domains
            if cross_episode:
                seg_start.append(np.full(t.num_steps, offset, np.int64))
            else:
                seg_start.append(np.repeat(t.starts, t.lengths) + offset)
            self.action_dim_by_task[i] = t.action_dim
            if t.discrete:
                a = t.actions.astype(np.int64)
                acts.append(a)
                tg = np.full((t.num_steps, MAX_ACTION_DIM), -100, np.int64)
                tg[:, 0] = a
                targets.append(tg)
            else:
                a = np.zeros((t.num_steps, MAX_ACTION_DIM), np.float32)
                a[:, : t.action_dim] = t.actions
                acts.append(a)
                tg = np.full((t.num_steps, MAX_ACTION_DIM), -100, np.int64)
                tg[:, : t.action_dim] = NUM_DISCRETE_ACTIONS + bin_actions(t.actions)
                targets.append(tg)
            offset += t.num_steps
        self.rewards = np.concatenate(r).astype(np.float32)
        self.rtg = np.concatenate(rtg)
        self.prev = np.concatenate(prev)
        self.timesteps = np.concatenate(ts)
        self.first = np.concatenate(first)
        self.seg_start = np.concatenate(seg_start)
        self.actions = np.concatenate(acts)
        self.targets = np.concatenate(targets)
        dim_mask = np.zeros((max(i for i, _ in tasks) + 1, MAX_ACTION_DIM), bool)
        for i, d in self.action_dim_by_task.items():
            dim_mask[i, :d] = True
        self.dim_mask_by_task = dim_mask
        self.num_steps = n


class SegmentSampler:
    """Segments of `context` steps from the tasks in `data`, one domain per micro-batch.

    ``sample(domain)`` draws one batch from that domain; iterating cycles through the domains in a
    fixed order (``domains``), so k consecutive batches with k = number of domains cover each domain
    once — accumulate gradients over them for uniform domain weighting. The same seed gives the same
    batches. ``torch=False`` returns NumPy arrays instead of tensors.
    """

    def __init__(
        self,
        data: list[TaskData],
        context: int = 50,
        batch_size: int = 32,
        seed: int = 0,
        cross_episode_domains=CROSS_EPISODE_DOMAINS,
        torch: bool = True,
        pin_memory: bool = False,
    ):
        if context < 1:
            raise ValueError(f"context must be at least 1, got {context}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not data:
            raise ValueError("SegmentSampler needs at least one task's data")
        self.context = context
        self.batch_size = batch_size
        self.task_ids = [t.task_id for t in data]
        if len(set(self.task_ids)) != len(self.task_ids):
            raise ValueError(f"the same task appears twice in the data: {self.task_ids}")
        by_domain: dict[str, list[tuple[int, TaskData]]] = {}
        for i, t in enumerate(data):
            by_domain.setdefault(t.domain, []).append((i, t))
        self.domains = sorted(by_domain)
        self._arrays = {d: _DomainArrays(d, ts, d in cross_episode_domains) for d, ts in by_domain.items()}
        self._rng = np.random.default_rng(seed)
        self._torch = torch
        self._pin = pin_memory
        if torch:
            import torch as _torch  # noqa: F401  (imported here, not on the first batch)
        self._offsets = np.arange(context - 1, -1, -1, dtype=np.int64)  # (C,) C-1 .. 0
        self._next_domain = 0

    def num_steps(self, domain: str) -> int:
        return self._arrays[domain].num_steps

    def sample(
        self, domain: str, batch_size: int | None = None, rng: np.random.Generator | None = None
    ) -> Batch:
        """One batch of `domain`. Uses the sampler's own generator unless `rng` is given."""
        if domain not in self._arrays:
            raise ValueError(f"no data for domain {domain!r}; the sampler has {self.domains}")
        A = self._arrays[domain]
        B = batch_size or self.batch_size  # segments of C = self.context steps
        g = rng if rng is not None else self._rng
        end = g.integers(0, A.num_steps, size=B)  # (B,)
        idx = end[:, None] - self._offsets[None, :]  # (B, C)
        valid = idx >= A.seg_start[end][:, None]
        idx = np.where(valid, idx, end[:, None])  # padded slots read a real step, then get zeroed

        def take(arr, fill=0):
            out = arr[idx]  # (B, C, ...)
            out[~valid] = fill
            return out

        task_index = A.task_index[end]
        obs = take(A.obs)
        if not A.image and obs.shape[-1] < STATE_DIM:
            obs = pad_state(obs)
        out = dict(
            obs=obs,
            actions=take(A.actions),
            action_targets=take(A.targets, -100),
            action_dim_mask=A.dim_mask_by_task[task_index].copy(),
            rewards=take(A.rewards),
            prev_rewards=take(A.prev),
            rtg=take(A.rtg),
            mask=valid,
            first=take(A.first, False),
            timesteps=take(A.timesteps),
            task_index=task_index.astype(np.int64),
        )
        if self._torch:
            import torch

            out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}
            if self._pin and torch.cuda.is_available():
                out = {k: v.pin_memory() for k, v in out.items()}
        return Batch(domain=domain, discrete=A.discrete, **out)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.next()

    def next(self) -> Batch:
        """The next batch, cycling through the domains in order."""
        d = self.domains[self._next_domain % len(self.domains)]
        self._next_domain += 1
        return self.sample(d)

    def prefetch(self, depth: int = 4) -> Iterator[Batch]:
        """Iterate with a background thread that keeps `depth` batches ready (same order as `next()`)."""
        import queue

        q: queue.Queue = queue.Queue(maxsize=depth)
        stop = threading.Event()

        def work():
            while not stop.is_set():
                b = self.next()
                while not stop.is_set():
                    try:
                        q.put(b, timeout=0.1)
                        break
                    except queue.Full:
                        continue

        th = threading.Thread(target=work, daemon=True)
        th.start()
        try:
            while True:
                yield q.get()
        finally:
            stop.set()
