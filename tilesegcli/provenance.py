"""Provenance and summary JSON: what produced an output, written atomically next to it.

``<output>.provenance.json`` records versions, the model card, the weights sha256, every run
parameter, the command line, host/job ids, the input identity and the output's size/mtime. The
pipeline uses it to decide whether an existing output is valid (skip) or stale.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
import time
from dataclasses import asdict, is_dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from tilesegcli.atomic import atomic_path
from tilesegcli.errors import OutputError, TilesegError

_PACKAGES = ("tileseg", "torch", "numpy", "zarr", "openslide-python", "openslide-bin", "tifffile",
             "shapely", "scikit-image", "scipy")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance_path(output: Path) -> Path:
    return output.with_name(output.name + ".provenance.json")


def jsonable(obj: Any) -> Any:
    """Dataclasses, Paths, tuples and numpy scalars -> plain JSON types."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def environment() -> dict[str, Any]:
    env = {k: os.environ[k] for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
                                      "CUDA_VISIBLE_DEVICES") if k in os.environ}
    return {"host": socket.gethostname(), "pid": os.getpid(), "env": env,
            "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def build(
    *,
    input_identity: dict[str, Any],
    fingerprint: dict[str, Any],
    fingerprint_sha256: str,
    parameters: dict[str, Any],
    model_card: Any,
    output: Path,
    counts: dict[str, Any],
    command_line: list[str] | None = None,
) -> dict[str, Any]:
    st = output.stat() if output.exists() else None
    return jsonable(
        {
            "tileseg_provenance": 1,
            "versions": versions(),
            "command_line": command_line if command_line is not None else list(sys.argv),
            **environment(),
            "input": input_identity,
            "model_card": model_card,
            "weights_sha256": fingerprint.get("weights_sha256"),
            "fingerprint": fingerprint,
            "fingerprint_sha256": fingerprint_sha256,
            "parameters": parameters,
            "output": {"path": str(output), "size": st.st_size if st else None,
                       "mtime_ns": st.st_mtime_ns if st else None},
            "counts": counts,
        }
    )


def is_valid_output(output: Path, fingerprint_sha256: str) -> bool:
    """True when ``output`` exists and its provenance says this very run produced it."""
    prov = provenance_path(output)
    if not output.is_file() or not prov.is_file():
        return False
    try:
        data = json.loads(prov.read_text())
        st = output.stat()
    except (OSError, ValueError):
        return False
    o = data.get("output", {})
    return (
        data.get("fingerprint_sha256") == fingerprint_sha256
        and o.get("size") == st.st_size
        and o.get("mtime_ns") == st.st_mtime_ns
    )


def write_json(path: Path, data: Any) -> None:
    """Atomically write ``data`` as indented JSON."""
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(jsonable(data), indent=2) + "\n")
    except OSError as e:
        if isinstance(e, TilesegError):
            raise
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
