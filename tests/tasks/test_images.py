"""tasks/images.py: a manifest's PNG/JPEG files become pixel rows; bad rows are named (more in tests/bad_inputs)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tasks.config import DataConfig, SourceConfig
from tasks.errors import UserError
from tasks.images import read_manifest
from tasks.ingest import read_source


def _save(path, pixels, fmt="PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)


def test_a_manifest_reads_grey_and_colour_images_in_order(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    _save(tmp_path / "imgs/a.png", grey)
    _save(tmp_path / "imgs/sub/b.png", grey[::-1].copy())
    (tmp_path / "imgs/manifest.csv").write_text("path,label\na.png,cat\nsub/b.png,dog\n")
    data = DataConfig(image_shape=(1, 3, 4))
    frame = read_source(SourceConfig(kind="image_manifest", path=tmp_path / "imgs/manifest.csv"), data)
    assert list(frame["label"]) == ["cat", "dog"] and list(frame["id"]) == [0, 1]
    assert frame.filter(like="px_").to_numpy()[1].tolist() == grey[::-1].reshape(-1).tolist()

    rgb = np.stack([grey, grey + 100, grey + 200], axis=-1)  # (H, W, C) on disk -> (C, H, W) columns
    _save(tmp_path / "rgb/a.png", rgb)
    (tmp_path / "rgb/manifest.csv").write_text("path,label\na.png,1\n")
    pixels = read_manifest(tmp_path / "rgb/manifest.csv", DataConfig(image_shape=(3, 3, 4))).filter(like="px_").to_numpy()
    assert pixels[0].tolist() == rgb.transpose(2, 0, 1).reshape(-1).tolist()


def test_a_symlink_out_of_the_data_folder_is_refused(tmp_path):
    _save(tmp_path / "outside.png", np.zeros((2, 2), np.uint8))
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs/link.png").symlink_to(tmp_path / "outside.png")
    (tmp_path / "imgs/manifest.csv").write_text("path,label\nlink.png,0\n")
    with pytest.raises(UserError, match=r"row 2: link\.png: refused, resolves outside the manifest's folder"):
        read_manifest(tmp_path / "imgs/manifest.csv", DataConfig(image_shape=(1, 2, 2)))
