"""Byte-level text corpora that need no download, and a seeded sampler of random training windows.

Two corpora ship with every CPython installation:

- ``"docs"``: the English prose of the reference manual that ``pydoc`` shows (``pydoc_data/topics.py``,
  about 0.5 MB on Python 3.11), one document per topic.
- ``"code"``: the Python source of the standard library (about 10 MB), one document per file; tests,
  ``site-packages`` and bundled third-party trees are left out.

and one is installed from a Debian package (``make install`` does it when run as root):

- ``"english"``: the English documentation of the Linux kernel, the reStructuredText and plain-text
  files under ``/usr/share/doc/linux-doc-6.1/Documentation`` of Debian 12's ``linux-doc-6.1`` package
  (GPL-2.0; about 21 MB in 2,900 documents: guides, process and API documents in running English
  prose with some code blocks and tables). Translations (``translations/``) and the device-tree
  bindings (``devicetree/``, mostly YAML schemas) are left out. ``XLRAM_ENGLISH_ROOT`` points the
  loader at another copy of that ``Documentation`` folder.

Text is UTF-8 encoded into bytes, so the vocabulary has 256 symbols and bits per byte (bpb) compare
across tokenizers. The train/val splits are fixed:

- ``docs`` and ``code``: the corpus is cut into blocks and every tenth block is validation, so both
  splits cover the whole corpus instead of the val split being its alphabetical tail;
- ``english``: whole documents, a document being validation when a hash of its path (SHA-256 of the
  relative path, modulo ``val_every``) is 0. No document straddles the split, and a document keeps
  its side when a newer package adds, removes or edits other documents.

The exact bytes depend on the Python version or the package version, which :attr:`ByteCorpus.source`
records (with a digest of the bytes for ``english``).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib
import os
import platform
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

VOCAB_SIZE = 256
CORPORA = ("docs", "code", "english")

# The "english" corpus: a Debian package, where it installs its files, and how to install it.
ENGLISH_PACKAGE = "linux-doc-6.1"
ENGLISH_ROOT = Path("/usr/share/doc/linux-doc-6.1/Documentation")
ENGLISH_ROOT_ENV = "XLRAM_ENGLISH_ROOT"
ENGLISH_INSTALL = f"apt-get install -y --no-install-recommends {ENGLISH_PACKAGE}"
# Folders of the kernel documentation that are not English prose: translations, device-tree schemas,
# and the Sphinx machinery.
_ENGLISH_SKIP_DIRS = frozenset({"translations", "devicetree", "sphinx", "sphinx-static", "images"})
_ENGLISH_SUFFIXES = (".rst", ".txt")

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


def english_root() -> Path:
    """The ``Documentation`` folder the ``"english"`` corpus reads: ``$XLRAM_ENGLISH_ROOT`` if set, else
    where Debian's ``linux-doc-6.1`` package installs it."""
    env = os.environ.get(ENGLISH_ROOT_ENV)
    return Path(env) if env else ENGLISH_ROOT


def english_documents(root: str | Path | None = None) -> tuple[tuple[str, str], ...]:
    """``(relative path, text)`` pairs of the kernel documentation under ``root`` (default:
    :func:`english_root`), sorted by path; ``.gz`` files are decompressed and the suffix dropped.

    Raises ``ValueError`` naming the package and its install command when the folder is missing or
    holds no document.
    """
    root = Path(root) if root is not None else english_root()
    return _english_documents(str(root.resolve()) if root.exists() else str(root))


@functools.lru_cache(maxsize=2)
def _english_documents(root_str: str) -> tuple[tuple[str, str], ...]:
    root = Path(root_str)
    hint = (f"the 'english' corpus is the Linux kernel documentation of the Debian package "
            f"{ENGLISH_PACKAGE}: install it with `{ENGLISH_INSTALL}` (as root; `make install` does it), "
            f"or set {ENGLISH_ROOT_ENV} to a copy of its Documentation folder")
    if not root.is_dir():
        raise ValueError(f"{hint}; {root} is not a folder")
    docs = []
    for path in root.rglob("*"):
        name = path.name[:-3] if path.name.endswith(".gz") else path.name
        if not name.endswith(_ENGLISH_SUFFIXES) or not path.is_file():
            continue
        rel = path.relative_to(root)
        if rel.parts[0] in _ENGLISH_SKIP_DIRS:
            continue
        try:
            raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
            text = raw.decode("utf-8")
        except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile):
            continue  # a damaged or non-UTF-8 file is left out rather than garbled
        docs.append((rel.with_name(name).as_posix(), text))
    if not docs:
        raise ValueError(f"{hint}; {root} holds no .rst or .txt document")
    return tuple(sorted(docs))


def is_val_document(path: str, val_every: int = 10) -> bool:
    """Whether the document at ``path`` (relative, ``/``-separated) is in the validation split of a
    document-level split: about ``1 / val_every`` of the documents, by a hash of the path only."""
    digest = hashlib.sha256(path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % val_every == 0


def _package_version(root: Path) -> str:
    """The Debian version of the package whose changelog sits beside ``root`` (``?`` when there is none)."""
    try:
        first = gzip.decompress((root.parent / "changelog.Debian.gz").read_bytes()).decode("utf-8")
        return first.split("(", 1)[1].split(")", 1)[0]
    except (OSError, EOFError, IndexError, UnicodeDecodeError, gzip.BadGzipFile):
        return "?"


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
    """Load a corpus by name (``"docs"``, ``"code"`` or ``"english"``) and split it.

    ``docs`` and ``code``: documents are joined with blank lines and cut into ``block_bytes`` blocks;
    block ``j`` goes to validation when ``j % val_every == val_every // 2``. ``english``: whole
    documents, by :func:`is_val_document` (``block_bytes`` does not apply). Either way about
    ``1/val_every`` of the bytes are val.
    """
    if name not in CORPORA:
        raise ValueError(f"corpus name must be one of {CORPORA}, got {name!r}")
    if not isinstance(val_every, int) or val_every < 2:
        raise ValueError(f"val_every must be an int >= 2, got {val_every!r}")
    if not isinstance(block_bytes, int) or block_bytes < 1:
        raise ValueError(f"block_bytes must be a positive int, got {block_bytes!r}")
    if name == "english":
        return _load_english(val_every)
    documents = docs_documents() if name == "docs" else code_documents()
    data = encode("\n\n".join(text for _, text in documents))
    blocks = torch.split(data, block_bytes)
    is_val = [j % val_every == val_every // 2 for j in range(len(blocks))]
    train = torch.cat([b for b, v in zip(blocks, is_val, strict=True) if not v])
    val = torch.cat([b for b, v in zip(blocks, is_val, strict=True) if v])
    source = f"CPython {platform.python_version()} stdlib ({name}, {len(documents)} documents)"
    return ByteCorpus(name=name, train=train, val=val, source=source)


def _load_english(val_every: int) -> ByteCorpus:
    root = english_root()
    documents = english_documents(root)
    sides = {True: [], False: []}
    for path, text in documents:
        sides[is_val_document(path, val_every)].append(text)
    train, val = (encode("\n\n".join(sides[v])) for v in (False, True))
    digest = hashlib.sha256(train.numpy().tobytes() + val.numpy().tobytes()).hexdigest()[:12]
    source = (f"Linux kernel documentation, Debian {ENGLISH_PACKAGE} {_package_version(root)} "
              f"({root}, {len(documents)} documents: {len(sides[False])} train, {len(sides[True])} val; "
              f"sha256 {digest})")
    return ByteCorpus(name="english", train=train, val=val, source=source)


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
