"""Metric sinks: ``RUN_DIR/metrics.jsonl`` (always), wandb (offline by default) and a tqdm progress bar.

Only rank 0 logs. ``metrics.jsonl`` holds one JSON object per line with ``step`` and the metric keys
(non-finite values are written as null, so every line is strict JSON). wandb follows
``cfg.logging.wandb_mode`` (``offline``: sync later with ``wandb sync``); any failure to start it — no
account, no network, no package — is one warning and the run goes on without it.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from pathlib import Path


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class MetricsLogger:
    def __init__(self, cfg, run_dir: Path, *, enabled: bool = True, resume_step: int = 0, total: int = 0):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.wandb = None
        self.bar = None
        self.last: dict = {}
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step:
            self._truncate_after(resume_step)
        self._file = self.path.open("a", buffering=1)
        self._start_wandb(cfg, run_dir)
        try:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total,
                initial=resume_step,
                desc="grpo",
                unit="step",
                dynamic_ncols=True,
                disable=os.environ.get("TUCANO2_NO_PROGRESS") == "1",
                file=sys.stderr,
            )
        except ImportError:  # pragma: no cover - tqdm is a dependency
            self.bar = None

    def _truncate_after(self, step: int) -> None:
        """On resume, drop lines of steps after the checkpoint (they will be logged again)."""
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except ValueError:
                continue
        self.path.write_text("".join(x + "\n" for x in keep))

    def _start_wandb(self, cfg, run_dir: Path) -> None:
        mode = cfg.logging.wandb_mode
        if mode == "disabled" or os.environ.get("WANDB_MODE") == "disabled":
            return
        try:
            import wandb

            self.wandb = wandb.init(
                project=cfg.logging.wandb_project,
                entity=cfg.logging.wandb_entity,
                mode=mode,
                dir=str(run_dir),
                name=Path(run_dir).name,
                config=cfg.model_dump(mode="json"),
                resume="allow",
                id=_wandb_id(run_dir),
            )
        except Exception as e:  # noqa: BLE001 - any wandb failure must not stop training
            warnings.warn(
                f"wandb init failed ({type(e).__name__}: {e}); continuing without wandb", stacklevel=2
            )
            self.wandb = None

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        line = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(line) + "\n")
        self.last.update(metrics)
        if self.wandb is not None:
            try:
                self.wandb.log(metrics, step=step)
            except Exception as e:  # noqa: BLE001
                warnings.warn(f"wandb log failed ({e}); continuing without wandb", stacklevel=2)
                self.wandb = None

    def progress(self, step: int) -> None:
        if self.bar is None:
            return
        post = {}
        for key, short in (
            ("train/reward", "reward"),
            ("eval/mean_reward", "eval"),
            ("perf/step_s", "s/step"),
        ):
            v = self.last.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v):
                post[short] = f"{v:.3f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(step - self.bar.n)

    def write(self, msg: str) -> None:
        """A message line that does not break the progress bar."""
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        self._file.close()
        if self.wandb is not None:
            try:
                self.wandb.finish()
            except Exception:  # noqa: BLE001
                pass


def _wandb_id(run_dir: Path) -> str:
    """A stable id per run directory so a resumed run continues the same wandb run."""
    import hashlib

    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The lines of ``RUN_DIR/metrics.jsonl`` as dicts ([] when there is none yet). A line that is not JSON
    (being written, or cut by a crash) is skipped: the rest of the history is still good."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows
