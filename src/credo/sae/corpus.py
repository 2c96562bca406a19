"""Text corpora for harvesting activations, and their cutting into fixed-length token windows.

Two corpora exist offline on a Debian machine: the King James Bible (``bible-kjv`` + ``bible-kjv-text``,
printed by the ``bible`` command, ~1.16M SmolLM2 tokens) and the Python 3.11 documentation sources
(``python3.11-doc``, ~2.86M tokens), a second text distribution for shift experiments. Any ``.txt`` file or
directory of ``.txt`` / ``.rst.txt`` files works the same way.

A corpus becomes a ``[n_windows, context_size]`` tensor of token ids: the whole text is tokenised once
(without special tokens), cut into consecutive chunks of ``context_size - 1`` tokens, and each chunk gets the
tokenizer's start token in front (BOS, or ``[CLS]`` for a BERT tokenizer), as SAE training corpora are cut in
Gemma Scope and SAELens. The ragged tail is dropped, so windows are deterministic: a resumed harvest that
skips the first ``k`` windows sees exactly what an uninterrupted one would have.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from credo.data.base import DatasetNotFoundError

log = logging.getLogger(__name__)

KJV_RANGE = "Genesis1:1-Revelation22:21"
PYTHON_DOCS = Path("/usr/share/doc/python3.11/html/_sources")
CORPORA = ("kjv", "python-docs")
"""Built-in corpus names; anything else is read as a path."""


def load_corpus(name_or_path: str | Path) -> str:
    """The text of a built-in corpus (``kjv``, ``python-docs``) or of a ``.txt`` file / directory.

    A directory contributes its ``*.txt`` files (which includes ``*.rst.txt``) in sorted path order, joined
    by a blank line. Raises :class:`~credo.data.DatasetNotFoundError` naming the package or path to provide.
    """
    if name_or_path == "kjv":
        return _kjv()
    if name_or_path == "python-docs":
        if not PYTHON_DOCS.is_dir():
            raise DatasetNotFoundError(
                "Python 3.11 documentation sources", str(PYTHON_DOCS), "apt-get install python3.11-doc"
            )
        return _read_dir(PYTHON_DOCS)
    path = Path(name_or_path)
    if path.is_file():
        return path.read_text(encoding="utf-8")
    if path.is_dir():
        return _read_dir(path)
    raise DatasetNotFoundError(
        f"corpus {str(name_or_path)!r}",
        str(path.resolve()),
        f"name one of {', '.join(CORPORA)}, a .txt file, or a directory of .txt / .rst.txt files",
    )


def _kjv() -> str:
    fix = "apt-get install bible-kjv bible-kjv-text"
    exe = shutil.which("bible")
    if exe is None:
        raise DatasetNotFoundError("King James Bible (the `bible` command)", "`bible` on PATH", fix)
    proc = subprocess.run([exe, KJV_RANGE], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise DatasetNotFoundError(
            "King James Bible text", f"output of `bible {KJV_RANGE}` ({proc.stderr.strip()})", fix
        )
    return proc.stdout.lstrip()


def _read_dir(root: Path) -> str:
    files = sorted(root.rglob("*.txt"))
    if not files:
        raise DatasetNotFoundError(f"text files under {root}", str(root / "**/*.txt"), "add .txt files")
    log.info("reading %d text files under %s", len(files), root)
    return "\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)


def start_token_id(tokenizer: Any) -> int | None:
    """The token put at the start of every window: BOS, else ``[CLS]`` (BERT), else ``None``."""
    for attr in ("bos_token_id", "cls_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return None


def _chunks(text: str, size: int) -> list[str]:
    """``text`` cut near every ``size`` characters, just before a non-space character that follows a
    newline, so no word, number or run of whitespace is split (tokens do not cross the cuts)."""
    out, lo = [], 0
    while lo < len(text):
        hi = lo + size
        while hi < len(text) and not (text[hi - 1] == "\n" and not text[hi].isspace()):
            hi += 1
        out.append(text[lo:hi])
        lo = hi
    return out


def tokenize_windows(tokenizer: Any, text: str, context_size: int, bos: bool = True) -> Tensor:
    """``text`` as consecutive windows of token ids, ``[n_windows, context_size]`` int64.

    With ``bos`` (and a tokenizer that has a start token, see :func:`start_token_id`) each window is the
    start token then ``context_size - 1`` text tokens; otherwise ``context_size`` text tokens. The text is
    tokenised in newline-aligned pieces of ~64k characters (same ids as one call, bounded memory per call);
    the last incomplete window is dropped.
    """
    if context_size < 2:
        raise ValueError(f"context_size must be >= 2, got {context_size}")
    start = start_token_id(tokenizer) if bos else None
    body = context_size - (start is not None)
    pieces = _chunks(text, 1 << 16)
    ids: list[int] = []
    for piece_ids in tokenizer(pieces, add_special_tokens=False, verbose=False)["input_ids"]:
        ids.extend(piece_ids)
    n = len(ids) // body
    if n == 0:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one window of {body}")
    windows = torch.tensor(ids[: n * body], dtype=torch.long).view(n, body)
    if start is not None:
        windows = torch.cat([torch.full((n, 1), start, dtype=torch.long), windows], dim=1)
    log.info("%d tokens -> %d windows of %d", len(ids), n, context_size)
    return windows


def split_windows(windows: Tensor, held_out: float = 0.05) -> tuple[Tensor, Tensor]:
    """``(train, held_out)``: the last ``held_out`` fraction of windows (at least one) kept apart for
    evaluation. The split is by position, so it is the same text whatever seed trains on the rest."""
    if not 0.0 <= held_out < 1.0:
        raise ValueError(f"held_out must be in [0, 1), got {held_out}")
    n_held = max(1, round(len(windows) * held_out)) if held_out > 0 else 0
    if n_held >= len(windows):
        raise ValueError(f"{len(windows)} windows leave nothing to train on after holding out {n_held}")
    cut = len(windows) - n_held
    return windows[:cut], windows[cut:]
