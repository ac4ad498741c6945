"""Pack the nuclei training set for a GPU machine: ``training/gpu/run.sh`` reads it there.

Writes ``.gpu/data/<name>.npz`` (one pack per training item of the nuclei preset with
``monuseg_color``, at the model's 0.25 µm/px; ``tilesegcli/train/pack.py``) and
``.gpu/train_list.json``. The 4 held-out images are not packed: they are scored here, after.
``.gpu/`` is git-ignored; name it in the device tool's ``carry``.

    .venv/bin/python training/gpu/pack_nuclei.py            # ~1 min, ~25 MB
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", default="../shared/data/nuclei")
    ap.add_argument("--out", default=".gpu")
    ap.add_argument("--mpp", type=float, default=0.25)
    a = ap.parse_args()
    from tilesegcli.train.data import load_item, nuclei_manifest
    from tilesegcli.train.pack import PACK_SUFFIX, write_pack

    out = Path(a.out)
    (out / "data").mkdir(parents=True, exist_ok=True)
    train, _ = nuclei_manifest(a.data_root, monuseg_color=True)
    rows, total = [], 0
    for item in train:
        d = load_item(item, a.mpp)
        rel = f"data/{d.name}{PACK_SUFFIX}"
        total += write_pack(out / rel, d.name, d.image, d.ann, a.mpp)
        rows.append({"image": rel, "annotation": rel, "mpp": a.mpp, "group": item.group,
                     "name": d.name})
    (out / "train_list.json").write_text(json.dumps(rows, indent=1))
    print(f"{len(rows)} items, {total / 2**20:.1f} MiB in {out}/data")


if __name__ == "__main__":
    main()
