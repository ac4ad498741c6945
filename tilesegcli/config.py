"""The run's value types: ``RunConfig`` (every option of ``tileseg predict``) and
``SlideResult`` (what one input's run reports). No I/O, nothing heavy imported: the CLI, the
pipeline, the merge step and the summary writer all share these."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tilesegcli.errors import UsageError
from tilesegcli.zoo import DEFAULT_MODEL

_SLURM_VARS = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT")


def parse_shard(text: str | None, env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """The one parser of ``--shard``: ``None`` -> (0, 1) (the whole input, whatever the
    environment), ``"I/N"`` -> (I, N) 0-based, ``"slurm"`` -> this task's place in its SLURM
    job array. Raises UsageError (exit 2) for anything else.

    ``slurm`` maps ``SLURM_ARRAY_TASK_ID`` to
    ``(ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP`` (MIN 0 and STEP 1 when unset) out
    of ``SLURM_ARRAY_TASK_COUNT`` tasks, so ``--array=1-8`` and ``--array=0-14:2`` both give
    shards 0..7 of 8. Arrays whose indices are not one evenly spaced
    range (``--array=1,4,9``) cannot be mapped and are refused.

    ``slurm/N`` fixes the shard count instead: shard ``SLURM_ARRAY_TASK_ID`` of N (so the array
    must be ``--array=0-(N-1)``), which stays right when one task is resubmitted on its own
    (``sbatch --array=3 ...``: that job's COUNT is 1, but its shard is still 3 of N).
    """
    if text is None:
        return 0, 1
    text = text.strip()
    env = os.environ if env is None else env
    if text.lower() == "slurm":
        return _slurm_shard(env)
    head, _, count = text.partition("/")
    if head.strip().lower() == "slurm":
        return _slurm_fixed(count.strip(), env)
    parts = text.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UsageError(f"--shard must be I/N (e.g. 0/4), 'slurm' or 'slurm/N', got {text!r}")
    i, n = int(parts[0]), int(parts[1])
    if n < 1 or i >= n:
        raise UsageError(f"--shard I/N needs 0 <= I < N, got {text}")
    return i, n


def _slurm_fixed(count: str, env: Mapping[str, str]) -> tuple[int, int]:
    if not count.isdigit() or int(count) < 1:
        raise UsageError(f"--shard slurm/N needs a shard count N >= 1, got {count!r}")
    task = env.get("SLURM_ARRAY_TASK_ID", "").strip()
    if not task:
        raise UsageError("--shard slurm/N: SLURM_ARRAY_TASK_ID not set; this is not a task of a "
                         "SLURM job array (sbatch --array=...); use --shard I/N instead")
    if not task.isdigit() or int(task) >= int(count):
        raise UsageError(f"--shard slurm/{count}: task {task} is not one of 0..{int(count) - 1}; "
                         f"submit with --array=0-{int(count) - 1}")
    return int(task), int(count)


def _slurm_shard(env: Mapping[str, str]) -> tuple[int, int]:
    missing = [k for k in _SLURM_VARS if not env.get(k, "").strip()]
    if missing:
        raise UsageError(f"--shard slurm: {' and '.join(missing)} not set; this is not a task of "
                         "a SLURM job array (sbatch --array=...); use --shard I/N instead")
    try:
        task = int(env["SLURM_ARRAY_TASK_ID"])
        count = int(env["SLURM_ARRAY_TASK_COUNT"])
        low = int(env.get("SLURM_ARRAY_TASK_MIN", "").strip() or 0)
        step = int(env.get("SLURM_ARRAY_TASK_STEP", "").strip() or 1)
    except ValueError:
        raise UsageError("--shard slurm: SLURM_ARRAY_TASK_ID/COUNT/MIN/STEP are not "
                         "integers") from None
    offset = task - low
    if count < 1 or step < 1 or offset < 0 or offset % step or offset // step >= count:
        raise UsageError(f"--shard slurm: task {task} of an array with {count} task(s), min "
                         f"{low}, step {step} is not one evenly spaced range; use --shard I/N")
    return offset // step, count


@dataclass
class RunConfig:
    """Every option of ``tileseg predict`` (CLI flags map 1:1; None = model-card default)."""

    output: Path | None = None
    outdir: Path | None = None
    model: str = DEFAULT_MODEL
    weights: str | None = None
    mpp: float | None = None
    backend: str = "auto"
    roi: Path | None = None
    no_mask: bool = False
    tile_size: int | None = None
    overlap: int | None = None
    batch_size: int = 8
    num_workers: int = 2
    model_threads: int = 1  # batches in the model at once (CPU: each gets 1/K of the threads)
    device: str = "auto"
    flips: int | None = None  # test-time flip passes of instance cards (None = the card's)
    view_agreement: float | None = None  # views 2.. only where views 0-1 disagree (None = card's)
    workdir: Path | None = None
    shard: tuple[int, int] = (0, 1)
    overwrite: bool = False
    force: bool = False  # run a natural-image model on a microscopy image anyway
    format: str | None = None
    labels: Path | None = None
    min_area: float | None = None
    simplify: float | None = None
    quiet: bool = True
    progress_every_s: float = 30.0  # log-line progress interval when stderr is not a terminal
    stream_merge: bool = True  # stitch while tiles are computed (single-shard runs)
    command_line: list[str] | None = None

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "command_line"}


@dataclass
class SlideResult:
    input: str
    status: str = "pending"  # done | skipped | waiting (other shards) | failed
    output: str | None = None
    store: str | None = None
    error: str | None = None
    tiles_total: int = 0
    tiles_selected: int = 0
    tiles_shard: int = 0
    tiles_computed: int = 0
    tiles_done: int = 0
    objects: int | None = None
    waiting_for: list[int] = field(default_factory=list)  # shards with tiles left (status waiting)
    note: str | None = None  # why a run that is not failed ended without its output
    counts: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in ("done", "skipped", "waiting")
