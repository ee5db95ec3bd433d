"""Class-labelled images for xAR.

``source="embedded"``: scikit-learn's handwritten digits (1,797 8x8 images of 10 classes, shipped
inside the scikit-learn wheel, BSD-3-Clause; originally UCI "Optical Recognition of Handwritten
Digits"). A local folder of images in class sub-folders (``datasets``' ``imagefolder``), a file with
``pixels``/``label`` columns, or a Hugging Face image dataset id with ``image``/``label`` columns
(e.g. MNIST or Fashion-MNIST once cached) go through the same batched ``datasets.map``
conversion. Splits are by a hash of the pixels, so duplicate images never straddle two splits.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F

from zoo.core.data import ZooDataModule
from zoo.errors import ConfigError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def pixel_group(pixels: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(np.round(pixels, 4), dtype=np.float32).tobytes()).hexdigest()[:16]


def load_digits_dataset() -> datasets.Dataset:
    """scikit-learn's 8x8 digits as rows of ``pixels`` in [0, 1], ``label`` and a content ``group``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images / 16.0).astype(np.float32).reshape(len(digits.images), -1)
    return datasets.Dataset.from_dict({
        "pixels": pixels.tolist(),
        "label": digits.target.astype(np.int64).tolist(),
        "group": [pixel_group(p) for p in pixels],
    })


class XARDataModule(ZooDataModule):
    """Images resized to ``image_size`` x ``image_size`` with ``channels`` channels, scaled to [-1, 1]."""

    dataset_name = "scikit-learn digits (UCI optical handwritten digits, 8x8)"
    group_column = "group"

    def __init__(self, source: str = "embedded", image_size: int = 8, channels: int = 1, batch_size: int = 64,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0, num_workers: int = 0,
                 limit: int | None = None, subset: str | None = None, cache_dir: str | None = None):
        super().__init__(source=source, batch_size=batch_size, max_length=image_size * image_size,
                         val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                         num_workers=num_workers, limit=limit, subset=subset, cache_dir=cache_dir)
        if channels not in (1, 3):
            raise ConfigError(f"channels={channels}; use 1 (grayscale) or 3 (RGB)")
        self.image_size, self.channels = image_size, channels

    def build_embedded(self) -> datasets.Dataset:
        return load_digits_dataset()

    def load_local(self, path: Path):
        images = path.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.rglob("*") if p.is_file())
        if not images:
            return self._with_groups(super().load_local(path))
        try:
            data = datasets.load_dataset("imagefolder", data_dir=str(path), cache_dir=str(self.cache_dir / "hf"))
        except Exception as err:
            raise ConfigError(f"could not read images under {path}: {err}; put them in one sub-folder per class "
                              "(e.g. train/3/x.png or 3/x.png)") from err
        return self._with_groups(data)

    def load_hub(self, dataset_id: str):
        return self._with_groups(super().load_hub(dataset_id))

    def _with_groups(self, data):
        if isinstance(data, datasets.DatasetDict):
            return datasets.DatasetDict({k: self._with_groups(v) for k, v in data.items()})
        if "label" not in data.column_names:
            raise ConfigError(f"image data needs a 'label' column (class index); found {data.column_names}")
        if "group" in data.column_names:
            return data
        for name in ("image", "img"):
            if name in data.column_names and name != "image":
                data = data.rename_column(name, "image")
        if "image" not in data.column_names and "pixels" not in data.column_names:
            raise ConfigError(f"image data needs an 'image' (or 'pixels') column and a 'label' column; found "
                              f"{data.column_names}")
        column = "image" if "image" in data.column_names else "pixels"

        def groups(batch: dict[str, list]) -> dict[str, list]:
            return {"group": [pixel_group(np.asarray(x, dtype=np.float32)) for x in batch[column]]}

        return data.map(groups, batched=True, desc="hash images")

    def tokenize(self, batch: dict[str, list]) -> dict[str, list]:
        """Any image column -> ``pixels`` in [0, 1] at the configured size and channel count."""
        if "label" not in batch:
            raise ConfigError(f"image data needs a 'label' column; found {sorted(batch)}")
        if "image" in batch:
            arrays = []
            for image in batch["image"]:
                image = image.convert("L" if self.channels == 1 else "RGB")
                array = np.asarray(image, dtype=np.float32) / 255.0
                arrays.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
            pixels = torch.from_numpy(np.stack(arrays))
        else:
            flat = torch.tensor(batch["pixels"], dtype=torch.float32)
            side = int(round((flat.shape[1] / self.channels) ** 0.5))
            if self.channels * side * side != flat.shape[1]:
                raise ConfigError(f"'pixels' rows have {flat.shape[1]} values, not channels x side x side for "
                                  f"channels={self.channels}; set channels to match the data")
            pixels = flat.reshape(-1, self.channels, side, side)
        if pixels.shape[-1] != self.image_size or pixels.shape[-2] != self.image_size:
            pixels = F.interpolate(pixels, size=(self.image_size, self.image_size), mode="bilinear",
                                   antialias=True, align_corners=False).clamp(0, 1)
        return {"pixels": pixels.flatten(1).tolist(), "label": [int(x) for x in batch["label"]]}

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pixels = torch.tensor([r["pixels"] for r in rows], dtype=torch.float32)
        images = pixels.reshape(len(rows), self.channels, self.image_size, self.image_size) * 2 - 1
        return {"images": images, "labels": torch.tensor([r["label"] for r in rows], dtype=torch.long)}

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(image_size=self.image_size, channels=self.channels,
                    license="BSD-3-Clause (scikit-learn)" if self.source == "embedded" else "see source")
        return info
