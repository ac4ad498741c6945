"""Weights resolution against a real HTTP server on 127.0.0.1 serving checkpoints written here."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from tilesegcli.errors import WeightsError
from tilesegcli.weights import (
    cache_dir,
    extract_state_dict,
    load_state_dict_strict,
    load_weights_file,
    resolve_weights,
    save_safetensors,
)
from tilesegcli.zoo import card_from_dict


class _Evil:
    """Unpickling this would create a directory: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


class _Server:
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.hits: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:  # noqa: N802
                outer.hits.append(self.path)
                name = self.path.lstrip("/")
                if name.startswith("trunc/"):
                    body = outer.files[name[len("trunc/"):]]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if name not in outer.files:
                    self.send_error(404, "Not Found")
                    return
                body = outer.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3))


def _d2_bytes(tmp: Path, net: nn.Module) -> bytes:
    """A detectron2-style checkpoint: {'model': sd (+ a loss buffer), trainer state beside it}."""
    sd = {f"{k}": v for k, v in net.state_dict().items()}
    sd["criterion.empty_weight"] = torch.ones(4)
    p = tmp / "d2.pth"
    torch.save({"model": sd, "iteration": 1234, "optimizer": {"state": {}, "param_groups": []},
                "scheduler": {"last_epoch": 1234}}, p)
    return p.read_bytes()


def _card(url: str | None, sha: str | None, base_dir: Path | None = None, **w):
    return card_from_dict({
        "name": "test-net", "task": "semantic", "classes": ["a", "b"], "tile_size": 64,
        "architecture": {"backbone": "none", "head": "mask2former", "head_kwargs": {"num_classes": 2}},
        "weights": {"url": url, "sha256": sha, "filename": "test-net.pth",
                    "ignore_keys": ["criterion.empty_weight"], **w},
    }, base_dir=str(base_dir) if base_dir else None)


@pytest.fixture()
def env(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
                "TILESEG_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TILESEG_HOME", str(tmp_path / "home"))
    net = _net()
    good = _d2_bytes(tmp_path, net)
    marker = tmp_path / "pwned"
    evil_path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "x": _Evil(marker)}, evil_path)
    server = _Server({"good.pth": good, "evil.pth": evil_path.read_bytes()})
    yield {"server": server, "good": good, "net": net, "marker": marker, "evil": evil_path,
           "cache": tmp_path / "home" / "weights"}
    server.close()


def _cache_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_download_verify_cache_hit_and_strict_load(env):
    s = env["server"]
    sha = hashlib.sha256(env["good"]).hexdigest()
    card = _card(f"{s.url}/good.pth", sha)
    p = resolve_weights(card)
    assert p == env["cache"] / "test-net.pth" and p.read_bytes() == env["good"]
    assert s.hits == ["/good.pth"]
    assert resolve_weights(card) == p  # cache hit: no second request
    assert s.hits == ["/good.pth"]
    assert _cache_files(env["cache"]) == ["test-net.pth"]
    fresh = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    sd = extract_state_dict(load_weights_file(p), source=str(p))
    load_state_dict_strict(fresh, sd, ignore_keys=card.weights.ignore_keys, source=str(p))
    for k, v in env["net"].state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)


def test_concurrent_resolves_download_once(env):
    from concurrent.futures import ThreadPoolExecutor

    s = env["server"]
    card = _card(f"{s.url}/good.pth", hashlib.sha256(env["good"]).hexdigest())
    with ThreadPoolExecutor(4) as ex:
        paths = list(ex.map(lambda _: resolve_weights(card), range(4)))
    assert len(set(paths)) == 1 and paths[0].read_bytes() == env["good"]
    assert s.hits == ["/good.pth"]
    assert _cache_files(env["cache"]) == ["test-net.pth"]


def test_wrong_checksum_leaves_nothing(env):
    card = _card(f"{env['server'].url}/good.pth", "0" * 64)
    with pytest.raises(WeightsError, match="checksum mismatch"):
        resolve_weights(card)
    assert _cache_files(env["cache"]) == []


def test_truncated_download_leaves_nothing(env):
    card = _card(f"{env['server'].url}/trunc/good.pth", None)
    with pytest.raises(WeightsError, match="truncated"):
        resolve_weights(card)
    assert _cache_files(env["cache"]) == []


def test_404_says_what_to_put_where(env):
    card = _card(f"{env['server'].url}/nope.pth", None)
    with pytest.raises(WeightsError) as ei:
        resolve_weights(card)
    msg = str(ei.value)
    assert "HTTP 404" in msg and str(env["cache"] / "test-net.pth") in msg
    assert _cache_files(env["cache"]) == []


def test_malicious_pickle_refused_even_with_right_checksum(env):
    body = env["server"].files["evil.pth"]
    card = _card(f"{env['server'].url}/evil.pth", hashlib.sha256(body).hexdigest())
    with pytest.raises(WeightsError, match="refusing to load"):
        resolve_weights(card)
    assert not env["marker"].exists()
    assert _cache_files(env["cache"]) == []
    with pytest.raises(WeightsError, match="refusing to load"):
        load_weights_file(env["evil"])  # the same file given locally (--weights FILE)
    assert not env["marker"].exists()


def test_offline_and_unreachable_messages(env, monkeypatch):
    card = _card(f"{env['server'].url}/good.pth", None)
    monkeypatch.setenv("TILESEG_OFFLINE", "1")
    with pytest.raises(WeightsError, match="downloads are off") as ei:
        resolve_weights(card)
    assert str(env["cache"] / "test-net.pth") in str(ei.value)
    monkeypatch.delenv("TILESEG_OFFLINE")
    url = env["server"].url
    env["server"].close()
    with pytest.raises(WeightsError, match="cannot download"):
        resolve_weights(_card(f"{url}/good.pth", None))
    assert _cache_files(env["cache"]) == []


def test_explicit_weights_path_and_url(env, tmp_path):
    card = _card(None, None)
    with pytest.raises(WeightsError, match="not found"):
        resolve_weights(card, tmp_path / "missing.pth")
    local = tmp_path / "mine.pth"
    local.write_bytes(env["good"])
    assert resolve_weights(card, local) == local
    p = resolve_weights(card, f"{env['server'].url}/good.pth")  # a URL given on the command line
    assert p == env["cache"] / "good.pth" and p.read_bytes() == env["good"]
    with pytest.raises(WeightsError, match="no download URL"):
        resolve_weights(card)  # card without URL and nothing cached


def test_strict_loading_rejects_mismatches(env, tmp_path):
    net = _net()
    sd = dict(net.state_dict())
    fresh = _net()
    with pytest.raises(WeightsError, match="unexpected"):
        load_state_dict_strict(fresh, {**sd, "extra.weight": torch.ones(1)})
    with pytest.raises(WeightsError, match="missing"):
        load_state_dict_strict(fresh, {k: v for k, v in sd.items() if k != "0.bias"})
    with pytest.raises(WeightsError, match="wrong shape"):
        load_state_dict_strict(fresh, {**sd, "0.bias": torch.ones(9)})
    load_state_dict_strict(fresh, {**sd, "criterion.empty_weight": torch.ones(2)},
                           ignore_keys=["criterion.empty_weight"])
    with pytest.raises(WeightsError, match="top-level"):
        extract_state_dict({"model": sd, "surprise": 1})
    with pytest.raises(WeightsError, match="not a tensor"):
        extract_state_dict({"model": {**sd, "x": "y"}})
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(env["good"][: len(env["good"]) // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        load_weights_file(trunc)


def test_bundled_safetensors_and_checksum(tmp_path):
    net = _net()
    sha = save_safetensors(net.state_dict(), tmp_path / "w.safetensors", half=True)
    card = _card(None, sha, base_dir=tmp_path, bundled=True, filename="w.safetensors")
    p = resolve_weights(card)
    sd = load_weights_file(p)
    assert all(v.dtype == torch.float16 for v in sd.values())
    fresh = _net()
    load_state_dict_strict(fresh, {k: v.float() for k, v in sd.items()})
    assert torch.allclose(fresh[0].weight, net[0].weight, atol=1e-3)
    bad = _card(None, "1" * 64, base_dir=tmp_path, bundled=True, filename="w.safetensors")
    with pytest.raises(WeightsError, match="sha256"):
        resolve_weights(bad)
    gone = _card(None, None, base_dir=tmp_path, bundled=True, filename="absent.safetensors")
    with pytest.raises(WeightsError, match="bundled weights"):
        resolve_weights(gone)


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("TILESEG_HOME", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("TILESEG_HOME")
    assert cache_dir() == tmp_path / "x" / "tileseg"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert cache_dir() == tmp_path / "h" / ".cache" / "tileseg"


def test_models_fetch_cli_download_and_install(env, tmp_path):
    import json

    from click.testing import CliRunner

    from tilesegcli.cli.models import models

    s = env["server"]
    card = {"name": "fetchable", "task": "semantic", "classes": ["a"], "tile_size": 64,
            "architecture": {"backbone": "none", "head": "mask2former"},
            "weights": {"url": f"{s.url}/good.pth", "sha256": hashlib.sha256(env["good"]).hexdigest(),
                        "filename": "fetchable.pth"}}
    (tmp_path / "fetchable.json").write_text(json.dumps(card))
    r = CliRunner().invoke(models, ["fetch", str(tmp_path / "fetchable.json")])
    assert r.exit_code == 0, r.output
    cached = env["cache"] / "fetchable.pth"
    assert r.output.strip() == str(cached) and cached.read_bytes() == env["good"]
    cached.unlink()
    local = tmp_path / "downloaded.pth"
    local.write_bytes(env["good"])
    r = CliRunner().invoke(models, ["fetch", str(tmp_path / "fetchable.json"), "--from", str(local)])
    assert r.exit_code == 0 and cached.read_bytes() == env["good"]
    assert s.hits == ["/good.pth"]  # installing did not download
    local.write_bytes(env["good"][:-10])
    cached.unlink()
    r = CliRunner().invoke(models, ["fetch", str(tmp_path / "fetchable.json"), "--from", str(local)])
    assert isinstance(r.exception, WeightsError) and _cache_files(env["cache"]) == []
