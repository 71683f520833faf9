"""Where pair rows come from: our JSONL, or data as TRL users keep it, read through ``datasets``.

``data.train_pairs`` / ``data.eval_pairs`` (and ``python -m commerce check --pairs``) name one of:

- a ``.jsonl`` file (or any other file): ours, read line by line by :mod:`commerce.rows` (stdlib);
- a ``.parquet``, ``.json`` (JSON lines or one array of objects) or ``.csv`` file;
- a directory a ``datasets.Dataset`` was saved to with ``save_to_disk`` (``DIR``), or a ``DatasetDict`` and its
  split (``DIR:train``);
- a Hugging Face Hub dataset id and its split: ``owner/name:train`` (any split expression ``datasets`` takes,
  ``owner/name:train[:90%]``).

Every row is then the same JSON-like object a JSONL line decodes to and goes through the same
:func:`commerce.rows.parse_row`: ours, ``messages``, ``prompt`` + ``completion`` and plain ``prompt`` rows, with the
same refusals (a bad row is named ``SOURCE:ROW: FIELD: reason``, its 1-based row number in place of a line). In a
CSV file every cell is a string: a conversation there is a plain ``prompt`` (and ``completion``) string.

**Imports.** ``commerce`` is stdlib only, and ``import commerce`` stays so: ``datasets`` (and pyarrow under it) is
imported in :func:`dataset_rows` alone, when a source is not JSONL, so a JSONL run or check never loads it. It is
the reader TRL users' data already goes through (``load_dataset``), so a parquet, JSON or CSV file gives the columns
and types their own scripts see. Local files are read with a throw-away ``datasets`` cache (nothing written under
``~/.cache``). **Downloads.** A Hub dataset is read from the ``datasets`` cache only (offline), as models are:
``TUCANO2_ALLOW_DOWNLOAD=1`` lets the first read fetch it, and later runs find it cached.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FILE_FORMATS = {".parquet": "parquet", ".json": "json", ".csv": "csv"}
"""Suffix -> the ``datasets`` packaged builder that reads it."""
ALLOW_DOWNLOAD = "TUCANO2_ALLOW_DOWNLOAD"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class SourceError(ValueError):
    """A pair source that cannot be read (one line naming it)."""


class SourceMissing(SourceError):
    """No file, directory or Hub dataset id by that name."""


def problem(spec: str | os.PathLike) -> tuple[bool, str] | None:
    """Why ``spec`` names no readable source (``(missing, one line)``: ``missing`` when nothing by that name exists),
    or None; reads nothing but a directory's marker files (the launchers' and the learner's preflight)."""
    try:
        parse(spec)
    except SourceMissing as e:
        return True, str(e)
    except SourceError as e:
        return False, str(e)
    return None


@dataclass(frozen=True)
class Source:
    """A parsed pair source: ``kind`` is ``jsonl``, ``file`` (parquet/json/csv), ``disk`` (``save_to_disk``) or
    ``hub``; ``split`` for a ``DatasetDict`` or a Hub dataset."""

    spec: str
    kind: str
    path: str
    split: str | None = None


def parse(spec: str | os.PathLike) -> Source:
    """What ``spec`` names (no file is read beyond a directory's marker files; nothing is imported).

    >>> parse("me/commerce-pairs:train[:90%]")
    Source(spec='me/commerce-pairs:train[:90%]', kind='hub', path='me/commerce-pairs', split='train[:90%]')
    >>> parse("no/such/file.jsonl")
    Traceback (most recent call last):
    ...
    commerce.sources.SourceMissing: no/such/file.jsonl: no such pairs file
    >>> parse("me/pairs")
    Traceback (most recent call last):
    ...
    commerce.sources.SourceMissing: me/pairs: no such pairs file (a Hub dataset needs its split: me/pairs:train)
    """
    s = str(spec)
    p = Path(s)
    if p.is_file():
        fmt = FILE_FORMATS.get(p.suffix.lower())
        return Source(s, "file" if fmt else "jsonl", s)
    if p.is_dir():
        return _disk(s, s, None)
    head, sep, split = s.rpartition(":")
    if sep and head and split and Path(head).is_dir():
        return _disk(s, head, split)
    head, sep, split = s.partition(":")  # a Hub id has no colon; the split expression may have some
    if sep and split and _HUB_ID.match(head) and not Path(head).exists():
        return Source(s, "hub", head, split)
    hint = f" (a Hub dataset needs its split: {s}:train)" if _HUB_ID.match(s) and "/" in s and not sep else ""
    raise SourceMissing(f"{s}: no such pairs file{hint}")


def _disk(spec: str, path: str, split: str | None) -> Source:
    d = Path(path)
    if (d / "dataset_dict.json").is_file():
        if split is None:
            splits = _splits(d)
            raise SourceError(f"{spec}: a DatasetDict saved with save_to_disk; name its split: {spec}:{splits[0]} "
                              f"(splits: {', '.join(splits)})" if splits else f"{spec}: a DatasetDict with no split")
        return Source(spec, "disk", path, split)
    if (d / "state.json").is_file() and (d / "dataset_info.json").is_file():
        if split is not None:
            raise SourceError(f"{spec}: {path} holds one Dataset (saved with save_to_disk), not splits; drop :{split}")
        return Source(spec, "disk", path, None)
    raise SourceError(f"{spec}: a directory, but not a dataset saved with save_to_disk (no state.json or "
                      "dataset_dict.json); name a .jsonl, .parquet, .json or .csv file")


def _splits(d: Path) -> list[str]:
    import json

    try:
        return list(json.loads((d / "dataset_dict.json").read_text()).get("splits", []))
    except (OSError, ValueError):
        return []


def downloads_allowed() -> bool:
    return os.environ.get(ALLOW_DOWNLOAD) == "1"


@contextlib.contextmanager
def _offline(on: bool):
    """``huggingface_hub`` and ``datasets`` in offline mode while ``on`` (their flags are read when they are imported,
    and consulted at every request: set on the modules for the duration, then put back)."""
    if not on:
        yield
        return
    import datasets.config as dc
    import huggingface_hub.constants as hc

    old = (hc.HF_HUB_OFFLINE, dc.HF_HUB_OFFLINE, dc.HF_DATASETS_OFFLINE)
    hc.HF_HUB_OFFLINE = dc.HF_HUB_OFFLINE = dc.HF_DATASETS_OFFLINE = True
    try:
        yield
    finally:
        hc.HF_HUB_OFFLINE, dc.HF_HUB_OFFLINE, dc.HF_DATASETS_OFFLINE = old


def dataset_rows(src: Source) -> list[dict[str, Any]]:
    """The rows of a non-JSONL source, each a plain dict (nested lists and dicts as ``datasets`` decodes them).

    Raises :class:`SourceError` (one line) when ``datasets`` is missing or cannot read the source, or when a Hub
    dataset is not cached and downloads are off."""
    try:
        import datasets
    except ImportError:
        raise SourceError(f"{src.spec}: reading it needs the `datasets` package (pip install datasets); "
                          "JSONL pair files do not") from None
    quiet = not datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        ds = _load(datasets, src)
    except SourceError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds; the user gets one line
        raise SourceError(f"{src.spec}: cannot read it through datasets ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
    finally:
        if not quiet:
            datasets.enable_progress_bars()
    return ds


def _load(datasets, src: Source) -> list[dict]:
    if src.kind == "disk":
        obj = datasets.load_from_disk(src.path, keep_in_memory=True)
        if src.split is not None:
            if src.split not in obj:
                raise SourceError(f"{src.spec}: no split {src.split!r} (splits: {', '.join(obj)})")
            obj = obj[src.split]
        return obj.to_list()
    if src.kind == "file":
        with tempfile.TemporaryDirectory(prefix="tucano2-pairs-") as cache:  # a throw-away cache: nothing kept
            ds = datasets.load_dataset(FILE_FORMATS[Path(src.path).suffix.lower()], data_files=src.path,
                                       split="train", cache_dir=cache, keep_in_memory=True)
            return ds.to_list()
    if src.kind == "hub":
        offline = not downloads_allowed()
        try:
            with _offline(offline):
                ds = datasets.load_dataset(src.path, split=src.split)
        except Exception as e:  # noqa: BLE001
            if offline:
                raise SourceError(f"{src.spec}: Hub dataset {src.path} is not in the datasets cache and downloads "
                                  f"are off (set {ALLOW_DOWNLOAD}=1 to fetch it once; later runs read the cache)"
                                  ) from None
            raise SourceError(f"{src.spec}: cannot load Hub dataset {src.path} split {src.split} "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        return ds.to_list()
    raise SourceError(f"{src.spec}: a JSONL file, read by commerce.rows")
