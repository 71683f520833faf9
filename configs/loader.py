"""Load a run config: YAML file, ``extends:`` chain, ``--set key=value`` overrides, validation.

Every entry point (actor, learner, launchers) goes through :func:`load_config` and turns a
:class:`ConfigError` into one line on stderr and exit code 2.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from configs.schema import RunConfig

CONFIG_DIR = Path(__file__).resolve().parent


class ConfigError(ValueError):
    """A config that cannot be loaded or validated; the message is one line naming the field."""


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def deep_merge(base: dict, over: dict) -> dict:
    """Mappings merge key by key; anything else in ``over`` replaces what ``base`` had."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def resolve_file(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """The raw mapping of ``path`` with its ``extends:`` chain applied (relative to the file)."""
    path = Path(path)
    if not path.exists() and not path.is_absolute() and (CONFIG_DIR / path.name).exists() \
            and path.parent in (Path("."), Path("configs")):
        path = CONFIG_DIR / path.name
    path = path.resolve()
    if path in _seen:
        chain = " -> ".join(p.name for p in (*_seen, path))
        raise ConfigError(f"extends: cycle {chain}")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path.name}: extends must be a file name, got {parent!r}")
    return deep_merge(resolve_file(path.parent / parent, (*_seen, path)), data)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"learner.zero_stage=3"`` -> (["learner", "zero_stage"], 3); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    data = copy.deepcopy(data)
    for item in overrides or []:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: {k!r} is not a section")
            node = nxt
        node[keys[-1]] = value
    return data


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per error would be several; we report the first, naming its dotted field."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<root>"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key (not a field of this section)"
    elif first["type"] == "missing":
        msg = "required field is missing"
    more = len(err.errors()) - 1
    tail = f" (and {more} more)" if more else ""
    return f"{source}: {loc}: {msg}{tail}"


def validate(data: dict, source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Resolve ``path`` (with extends), apply ``--set`` overrides, validate.

    ``run_dir`` defaults to ``runs/<file stem>``.
    """
    data = apply_overrides(resolve_file(path), overrides)
    data.setdefault("run_dir", f"runs/{Path(path).stem}")
    return validate(data, source=Path(path).name)


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML (what the launcher writes into the run directory)."""
    return yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False, allow_unicode=True)


def private_run_dir(path) -> None:
    """Make this process write privately: umask 077 (every file and directory it, DeepSpeed, vLLM or torch
    creates is its user's only) and ``path`` (the run directory) created 0700, or set to 0700 when it is
    ours. Every entry point (``python -m launch|learner|actor``) calls it before it writes anything."""
    import os
    from pathlib import Path

    os.umask(0o077)
    if path is None:
        return
    p = Path(path)
    p.mkdir(mode=0o700, parents=True, exist_ok=True)
    if p.stat().st_uid == os.getuid():
        p.chmod(0o700)
