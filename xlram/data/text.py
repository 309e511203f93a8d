"""Byte-level text corpora that need no download, and a seeded sampler of random training windows.

Two corpora ship with every CPython installation:

- ``"docs"``: the English prose of the reference manual that ``pydoc`` shows (``pydoc_data/topics.py``,
  about 0.5 MB on Python 3.11), one document per topic.
- ``"code"``: the Python source of the standard library (about 10 MB), one document per file; tests,
  ``site-packages`` and bundled third-party trees are left out.

Text is UTF-8 encoded into bytes, so the vocabulary has 256 symbols and bits per byte (bpb) compare
across tokenizers. The train/val split is fixed: the corpus is cut into blocks and every tenth block is
validation, so both splits cover the whole corpus instead of the val split being its alphabetical tail.
The exact bytes depend on the Python version, which :attr:`ByteCorpus.source` records.
"""

from __future__ import annotations

import functools
import importlib
import platform
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

VOCAB_SIZE = 256
CORPORA = ("docs", "code")

# Directories of the stdlib that are tests, vendored packages or GUI demos rather than library code.
_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3",
                        "turtledemo", "__pycache__", "ensurepip"})


def encode(text: str) -> torch.Tensor:
    """UTF-8 bytes of ``text`` as a ``(N,)`` uint8 tensor."""
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8)


def decode(ids) -> str:
    """Text from byte ids (a 1-D tensor or a sequence of ints in [0, 256)); invalid UTF-8 is replaced."""
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(f"decode: ids must be 1-D, got shape {tuple(ids.shape)}")
        ids = ids.tolist()
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


@functools.lru_cache(maxsize=1)
def docs_documents() -> tuple[tuple[str, str], ...]:
    """``(topic, text)`` pairs of ``pydoc_data.topics``, sorted by topic."""
    topics = importlib.import_module("pydoc_data.topics").topics
    return tuple((name, topics[name]) for name in sorted(topics))


@functools.lru_cache(maxsize=1)
def code_documents() -> tuple[tuple[str, str], ...]:
    """``(relative path, source)`` pairs of the standard library's ``.py`` files, sorted by path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in _SKIP_DIRS for part in rel.parts[:-1]):
            continue
        try:
            docs.append((rel.as_posix(), path.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, OSError):
            continue  # a handful of stdlib files are deliberately not UTF-8 (encoding tests)
    return tuple(docs)


@dataclass(frozen=True)
class ByteCorpus:
    """A byte corpus with a fixed split. ``train`` and ``val`` are ``(N,)`` uint8 tensors."""

    name: str
    train: torch.Tensor
    val: torch.Tensor
    source: str

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    def split(self, split: str) -> torch.Tensor:
        """The ``"train"`` or ``"val"`` bytes."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        return self.train if split == "train" else self.val


def load_corpus(name: str = "docs", *, val_every: int = 10, block_bytes: int = 8192) -> ByteCorpus:
    """Load a corpus by name (``"docs"`` or ``"code"``) and split it.

    Documents are joined with blank lines and cut into ``block_bytes`` blocks; block ``j`` goes to
    validation when ``j % val_every == val_every // 2``, so about ``1/val_every`` of the bytes are val.
    """
    if name not in CORPORA:
        raise ValueError(f"corpus name must be one of {CORPORA}, got {name!r}")
    if not isinstance(val_every, int) or val_every < 2:
        raise ValueError(f"val_every must be an int >= 2, got {val_every!r}")
    if not isinstance(block_bytes, int) or block_bytes < 1:
        raise ValueError(f"block_bytes must be a positive int, got {block_bytes!r}")
    documents = docs_documents() if name == "docs" else code_documents()
    data = encode("\n\n".join(text for _, text in documents))
    blocks = torch.split(data, block_bytes)
    is_val = [j % val_every == val_every // 2 for j in range(len(blocks))]
    train = torch.cat([b for b, v in zip(blocks, is_val, strict=True) if not v])
    val = torch.cat([b for b, v in zip(blocks, is_val, strict=True) if v])
    source = f"CPython {platform.python_version()} stdlib ({name}, {len(documents)} documents)"
    return ByteCorpus(name=name, train=train, val=val, source=source)


class WindowSampler:
    """Random windows of a byte tensor for next-byte prediction, reproducible from a seed.

    Each call (or iteration) returns ``(inputs, targets)``, both ``(batch_size, seq_len)`` int64 on
    ``device``, with ``targets`` the inputs shifted by one byte.
    """

    def __init__(self, data: torch.Tensor, batch_size: int, seq_len: int, *, seed: int = 0,
                 device: str | torch.device = "cpu"):
        if not isinstance(data, torch.Tensor) or data.dim() != 1:
            raise ValueError(f"data must be a 1-D tensor, got {type(data).__name__} "
                             f"{tuple(data.shape) if isinstance(data, torch.Tensor) else ''}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
        if data.numel() < seq_len + 1:
            raise ValueError(f"data has {data.numel()} elements, fewer than seq_len + 1 = {seq_len + 1}")
        self.data, self.batch_size, self.seq_len = data, batch_size, seq_len
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self._offsets = torch.arange(seq_len + 1)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(0, self.data.numel() - self.seq_len, (self.batch_size, 1),
                               generator=self.generator)
        windows = self.data[starts + self._offsets].long()  # (B, S + 1)
        windows = windows.to(self.device, non_blocking=True)
        return windows[:, :-1], windows[:, 1:]

    def __iter__(self):
        while True:
            yield self()


def eval_windows(data: torch.Tensor, seq_len: int, num_windows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_windows`` evenly spaced, fixed windows ``(inputs, targets)``, each ``(num_windows, seq_len)``.

    Deterministic, so that evaluations before and after training (and across runs) see the same bytes.
    """
    span = data.numel() - seq_len - 1
    if span < 0:
        raise ValueError(f"data has {data.numel()} elements, fewer than seq_len + 1 = {seq_len + 1}")
    if not isinstance(num_windows, int) or num_windows < 1:
        raise ValueError(f"num_windows must be a positive int, got {num_windows!r}")
    starts = torch.linspace(0, span, num_windows).round().long().unsqueeze(1)
    windows = data[starts + torch.arange(seq_len + 1)].long()
    return windows[:, :-1], windows[:, 1:]
