"""Bad training options and bad checkpoint files are one-line usage/weights errors, not tracebacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tilesegcli.errors import UsageError, WeightsError
from tilesegcli.train.config import TrainConfig


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("steps", "abc", "int"), ("flip_views", 2.5, "int"), ("lr", True, "float"),
    ("amp", 1, "bool"), ("scale_range", 0.8, "list"), ("out_dir", 3, "str"),
])
def test_option_of_the_wrong_type_is_refused(key: str, value: object, expected: str) -> None:
    with pytest.raises(UsageError, match=f"{key}=.*expected {expected}"):
        TrainConfig().with_updates(**{key: value})


def test_options_of_the_right_type_pass() -> None:
    cfg = TrainConfig().with_updates(lr=1, steps=10, val_list=None, init_from="aff-nuclei",
                                     scale_range=[1, 1.5], amp=False)
    assert cfg.lr == 1 and cfg.steps == 10 and cfg.scale_range == [1, 1.5]


def test_not_a_checkpoint_and_truncated_checkpoint(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from tilesegcli.train.checkpoint import load_training_state

    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    good = tmp_path / "good.pt"
    torch.save({"step": 3, "model": {"w": torch.zeros(1000)}}, good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:2000])
    assert load_training_state(good)["step"] == 3
    for bad in (text, cut):
        with pytest.raises(WeightsError, match="not a whole training checkpoint") as e:
            load_training_state(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(UsageError, match="no checkpoint"):
        load_training_state(tmp_path / "missing.pt")
