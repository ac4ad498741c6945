"""Weights: find them (``--weights PATH|URL``, bundled next to the card, the cache, a download),
verify them (sha256, completeness, safe unpickling) and load them strictly into a network.

Cache directory: ``$TILESEG_HOME`` if set, else ``$XDG_CACHE_HOME/tileseg``, else
``~/.cache/tileseg``; downloaded files live in ``<cache>/weights/<card filename>``. Downloads go to a
temporary name in that folder and are renamed into place only after every check passed, so an
interrupted or rejected download never leaves a file that looks complete; a per-file lock in
``<cache>/locks`` makes concurrent jobs (a SLURM array) download once. ``TILESEG_OFFLINE=1``
forbids downloads (the error then says which file to put where; ``tileseg models fetch NAME
--from FILE`` installs a file brought by hand).

Loading never runs pickled code: ``torch.load(weights_only=True)`` or safetensors.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tilesegcli.atomic import atomic_path
from tilesegcli.errors import WeightsError, first_line

if TYPE_CHECKING:
    import torch

    from tilesegcli.zoo import ModelCard, WeightsSpec

log = logging.getLogger(__name__)

# Top-level keys of training checkpoints (detectron2, timm/Swin-style, ours) that are not weights.
NON_MODEL_TOP_KEYS = frozenset({
    "optimizer", "scheduler", "lr_scheduler", "iteration", "trainer", "epoch", "max_accuracy",
    "loss_scaler", "grad_scaler", "scaler", "amp", "config", "args", "rng", "rng_state",
    "__author__", "matching_heuristics", "step", "best_metric", "meta",
})
_CHUNK = 1 << 20


def cache_dir() -> Path:
    """Root of tileseg's cache ($TILESEG_HOME, else $XDG_CACHE_HOME/tileseg, else ~/.cache/tileseg)."""
    if os.environ.get("TILESEG_HOME"):
        return Path(os.environ["TILESEG_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "tileseg"


def weights_dir() -> Path:
    return cache_dir() / "weights"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://", "file://"))


def _offline() -> bool:
    return os.environ.get("TILESEG_OFFLINE", "").lower() not in ("", "0", "false", "no")


def resolve_weights(card: ModelCard, weights: str | os.PathLike | None = None, *,
                    download: bool = True, which: str = "weights") -> Path:
    """Local path of verified weights for ``card`` (``which``: "weights" | "backbone_weights").

    Order: explicit ``weights`` (path, or URL downloaded into the cache) > file bundled next to
    the card > cache hit > download of the card's URL. Raises WeightsError with the exact
    file name and folder to use when nothing works (offline, 404, ...).
    """
    spec: WeightsSpec | None = getattr(card, which)
    if weights is not None:
        text = os.fspath(weights)
        if _is_url(text):
            same = spec is not None and spec.url == text
            name = spec.filename if same and spec else text.rstrip("/").rsplit("/", 1)[-1]
            return _cached_or_download(text, weights_dir() / name,
                                       sha256=spec.sha256 if same and spec else None,
                                       size=spec.size if same and spec else None,
                                       download=download)
        p = Path(text).expanduser()
        if not p.is_file():
            raise WeightsError(f"weights file not found: {p}")
        return p
    if spec is None:
        raise WeightsError(f"model {card.name} has no {which}")
    if spec.bundled:
        p = Path(card.base_dir or ".") / (spec.filename or "")
        if not p.is_file():
            raise WeightsError(f"bundled weights of {card.name} are missing: expected {p} "
                               "(reinstall tileseg, or pass --weights FILE)")
        _check_sha(p, spec.sha256, spec.size)
        return p
    dest = weights_dir() / (spec.filename or "weights.pth")
    if spec.url is None:
        if dest.is_file():
            _check_sha(dest, spec.sha256, spec.size)
            return dest
        raise WeightsError(f"model {card.name} has no download URL: put {spec.filename} in "
                           f"{dest.parent}/ or pass --weights FILE")
    return _cached_or_download(spec.url, dest, sha256=spec.sha256, size=spec.size,
                               download=download)


def weights_status(card: ModelCard, which: str = "weights") -> tuple[str, Path | None]:
    """Where a card's weights are now, without downloading or hashing anything:
    ("bundled", file next to the card) | ("bundled-missing", expected file) |
    ("cached", cache file) | ("downloadable", cache file it would go to) | ("none", None)."""
    spec: WeightsSpec | None = getattr(card, which)
    if spec is None:
        return "none", None
    if spec.bundled:
        p = Path(card.base_dir or ".") / (spec.filename or "")
        return ("bundled" if p.is_file() else "bundled-missing"), p
    dest = weights_dir() / (spec.filename or "weights.pth")
    if dest.is_file():
        return "cached", dest
    return ("downloadable", dest) if spec.url else ("none", None)


def _check_sha(path: Path, sha256: str | None, size: int | None) -> None:
    if size is not None and path.stat().st_size != size:
        raise WeightsError(f"{path} has {path.stat().st_size} bytes, expected {size}: "
                           "delete it and retry")
    if sha256 is not None:
        got = sha256_file(path)
        if got != sha256:
            raise WeightsError(f"{path} has sha256 {got[:12]}…, expected {sha256[:12]}…: "
                               "delete it and retry")


@contextlib.contextmanager
def _download_lock(dest: Path) -> Iterator[None]:
    """Exclusive lock per cache file, so N jobs of a SLURM array starting together download once
    (the others wait, then find the file). Lock files live in <cache>/locks, not beside weights."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: atomic rename still keeps files whole
        yield
        return
    lock_dir = cache_dir() / "locks"
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
        f = open(lock_dir / f"{dest.name}.lock", "w")  # noqa: SIM115
    except OSError:
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _cached_or_download(url: str, dest: Path, *, sha256: str | None, size: int | None,
                        download: bool) -> Path:
    if dest.is_file():
        _check_sha(dest, sha256, size)
        log.info("weights: cache hit %s", dest)
        return dest
    where = f"download {url} and save it as {dest}"
    if not download or _offline():
        raise WeightsError(f"weights not in the cache and downloads are off: {where} "
                           "(or pass --weights FILE)")
    with _download_lock(dest):
        if dest.is_file():  # another process finished it while we waited
            _check_sha(dest, sha256, size)
            return dest
        return download_file(url, dest, sha256=sha256, size=size)


def _progress(total: int | None, name: str):
    """A tqdm bar on stderr when it is a terminal (never in pipes/logs), else None."""
    import sys

    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, unit="B", unit_scale=True, desc=name, file=sys.stderr)


def download_file(url: str, dest: str | os.PathLike, *, sha256: str | None = None,
                  size: int | None = None, timeout: float = 60.0, verify_load: bool = True) -> Path:
    """Download ``url`` to ``dest`` atomically: temp file in dest's folder, length + sha256 (+
    safe-load) checks, then os.replace. Nothing is left behind on failure."""
    dest = Path(dest)
    manual = f"download {url} by other means and save it as {dest} (or pass --weights FILE)"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WeightsError(f"cannot create the weights cache {dest.parent}: {e.strerror}") from None
    with atomic_path(dest) as tmp:
        h = hashlib.sha256()
        received = 0
        log.warning("downloading %s -> %s", url, dest)
        with open(tmp, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    declared = resp.headers.get("Content-Length")
                    bar = _progress(int(declared) if declared else None, dest.name)
                    while chunk := resp.read(_CHUNK):
                        out.write(chunk)
                        h.update(chunk)
                        received += len(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                    if bar is not None:
                        bar.close()
            except urllib.error.HTTPError as e:
                raise WeightsError(f"HTTP {e.code} ({e.reason}) for {url}: {manual}") from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                if isinstance(e, http.client.IncompleteRead):
                    raise WeightsError(f"download of {url} truncated after {len(e.partial)} "
                                       f"bytes: retry, or {manual}") from None
                reason = getattr(e, "reason", None) or e
                raise WeightsError(f"cannot download {url} ({reason}): {manual}") from None
        if declared is not None and received != int(declared):
            raise WeightsError(f"download of {url} truncated: {received} of {declared} bytes; "
                               f"retry, or {manual}")
        if size is not None and received != size:
            raise WeightsError(f"download of {url} has {received} bytes, expected {size}")
        got = h.hexdigest()
        if sha256 is not None and got != sha256:
            raise WeightsError(f"checksum mismatch for {url}: sha256 {got[:12]}…, expected "
                               f"{sha256[:12]}… (corrupt or changed file; not cached)")
        if verify_load:
            load_weights_file(tmp)  # refuses unsafe pickles and unreadable files before caching
    if sha256 is None:
        log.warning("weights %s: no checksum known; sha256 is %s (verified by loading)",
                    dest.name, got)
    return dest


# ---------------------------------------------------------------------------------- loading


def _is_safetensors(path: Path) -> bool:
    """safetensors = 8-byte little-endian header length, then a JSON header."""
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 1 << 28


def load_weights_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a weights file (a card's, or any state dict) without executing code: safetensors, or
    torch.load(weights_only=True). Training checkpoints: ``train.checkpoint.load_training_state``."""
    import pickle

    import torch

    path = Path(path)
    if _is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f"{path} is not a readable safetensors file: {e}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsError(f"refusing to load {path}: it is not plain weights (weights_only "
                           f"unpickling rejected it: {first_line(e)})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
        raise WeightsError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): "
                           f"{first_line(e) or type(e).__name__}") from None
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    return obj


def extract_state_dict(obj: Mapping[str, Any], *, source: str = "checkpoint",
                       extra_top_keys: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """The model's tensors of a checkpoint: ``obj['model']`` / ``obj['state_dict']`` when present
    (other top-level keys must be known trainer state), else ``obj`` itself."""
    import torch

    allowed = NON_MODEL_TOP_KEYS | set(extra_top_keys)
    for key in ("model", "state_dict", "model_state"):
        if key in obj and isinstance(obj[key], Mapping):
            unknown = sorted(k for k in obj if k != key and k not in allowed)
            if unknown:
                raise WeightsError(f"{source}: unexpected top-level keys beside {key!r}: "
                                   f"{', '.join(map(str, unknown[:5]))}")
            obj = obj[key]
            break
    sd = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise WeightsError(f"{source}: entry {k!r} is {type(v).__name__}, not a tensor")
        sd[str(k)] = v
    return sd


def load_state_dict_strict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *,
                           ignore_keys: Iterable[str] = (), source: str = "checkpoint") -> None:
    """Load every parameter and buffer; only ``ignore_keys`` may be extra in the file."""
    ignore = set(ignore_keys)
    sd = {k: v for k, v in state_dict.items() if k not in ignore}
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    wrong = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} with wrong shape (e.g. {k}: file "
                         f"{tuple(sd[k].shape)} vs model {tuple(own[k].shape)})")
        raise WeightsError(f"{source} does not fit the model: " + "; ".join(parts))
    model.load_state_dict(sd, strict=True)


def save_safetensors(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike,
                     *, half: bool = False) -> str:
    """Write tensors atomically as safetensors (fp16 floats if ``half``); returns the sha256."""
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {}
    for k, v in state_dict.items():
        v = v.detach().cpu()
        if half and v.is_floating_point():
            v = v.to(torch.float16)
        tensors[k] = v.contiguous()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # safetensors writes 0600; weights are meant to be shared
    return sha256_file(path)


def install_weights(card: ModelCard, src: str | os.PathLike) -> Path:
    """Verify a manually downloaded file (size, sha256, safe loading) and copy it atomically to
    where ``resolve_weights`` looks for ``card``'s weights. Returns the cached path."""
    spec = card.weights
    if spec.bundled:
        raise WeightsError(f"model {card.name} ships its weights; nothing to install")
    src = Path(src)
    _check_sha(src, spec.sha256, spec.size)
    load_weights_file(src)
    dest = weights_dir() / (spec.filename or src.name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return dest
