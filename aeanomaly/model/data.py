"""Streaming training input: an on-disk slice store and a Keras ``PyDataset`` over it.

Scans are preprocessed one at a time and appended to one flat float16 file; batches are read back
with positional reads (``os.pread``), never memory-mapped, so the process's memory stays flat
whatever the number of scans. Augmentation and coarse denoising noise are applied per batch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from scipy import ndimage

from ..preprocess import resample_matrix


class SliceStore:
    """Append-only file of ``(size, size, channels)`` float16 slices, with per-slice scan ids.

    Parameters
    ----------
    path : Path
        Base path; ``<path>.bin`` holds the pixels, ``<path>.json`` the index.
    """

    def __init__(self, path: str | os.PathLike, size: int, channels: int):
        self.path = Path(path)
        self.size = int(size)
        self.channels = int(channels)
        self.scan_ids: list[int] = []
        self._fh = None

    @property
    def slice_nbytes(self) -> int:
        return self.size * self.size * self.channels * 2

    def __len__(self) -> int:
        return len(self.scan_ids)

    def append(self, slices: np.ndarray, scan_id: int) -> None:
        """Append ``(n, size, size, channels)`` slices in [0, 1] belonging to one scan."""
        arr = np.ascontiguousarray(slices, dtype=np.float16)
        if arr.shape[1:] != (self.size, self.size, self.channels):
            raise ValueError(f"slices of shape {arr.shape[1:]} do not fit the store")
        with open(self.path.with_suffix(".bin"), "ab") as fh:
            fh.write(arr.tobytes())
        self.scan_ids.extend([int(scan_id)] * arr.shape[0])

    def finish(self) -> "SliceStore":
        meta = {"size": self.size, "channels": self.channels, "scan_ids": self.scan_ids}
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, self.path.with_suffix(".json"))
        return self

    @classmethod
    def open(cls, path: str | os.PathLike) -> "SliceStore":
        path = Path(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        store = cls(path, meta["size"], meta["channels"])
        store.scan_ids = list(meta["scan_ids"])
        return store

    @classmethod
    def exists(cls, path: str | os.PathLike) -> bool:
        path = Path(path)
        return path.with_suffix(".json").is_file() and path.with_suffix(".bin").is_file()

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Slices at ``indices`` as float32 ``(n, size, size, channels)``."""
        if self._fh is None:
            self._fh = os.open(self.path.with_suffix(".bin"), os.O_RDONLY)
        nb = self.slice_nbytes
        out = np.empty((len(indices), self.size, self.size, self.channels), dtype=np.float16)
        flat = out.reshape(len(indices), -1)
        for j, i in enumerate(indices):
            buf = os.pread(self._fh, nb, int(i) * nb)
            flat[j] = np.frombuffer(buf, dtype=np.float16)
        return out.astype(np.float32)

    def close(self) -> None:
        if self._fh is not None:
            os.close(self._fh)
            self._fh = None


@dataclass(frozen=True)
class Augment:
    """Augmentation of normal training slices (never applied at validation).

    Attributes are probabilities or ranges: horizontal flip (left-right), rotation in degrees,
    isotropic scale factor range, shift as a fraction of the size, and an intensity gain/offset jitter
    on the [0, 1] scale.
    """

    flip: float = 0.5
    rotate_deg: float = 8.0
    scale: float = 0.08
    shift: float = 0.05
    gain: float = 0.05
    offset: float = 0.02

    def apply(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = np.empty_like(batch)
        n, h, w, _ = batch.shape
        centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
        for i in range(n):
            img = batch[i]
            if rng.random() < self.flip:
                img = img[:, ::-1]
            ang = np.deg2rad(rng.uniform(-self.rotate_deg, self.rotate_deg))
            s = 1.0 + rng.uniform(-self.scale, self.scale)
            rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]]) / s
            shift = rng.uniform(-self.shift, self.shift, size=2) * np.array([h, w])
            offset = centre - rot @ (centre + shift)
            for c in range(img.shape[-1]):
                out[i, :, :, c] = ndimage.affine_transform(img[:, :, c], rot, offset=offset, order=1, mode="constant", cval=0.0)
            gain = 1.0 + rng.uniform(-self.gain, self.gain)
            out[i] = np.clip(out[i] * gain + rng.uniform(-self.offset, self.offset), 0.0, 1.0)
        return out


def coarse_noise(shape: tuple[int, int, int, int], resolution: int, std: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise drawn on a ``resolution × resolution`` grid and linearly upsampled to
    ``shape = (n, size, size, channels)`` (the same noise on every channel), float32."""
    n, h, w, c = shape
    low = rng.normal(0.0, std, size=(n, resolution, resolution)).astype(np.float32)
    ry = resample_matrix(resolution, h).toarray().astype(np.float32)
    rx = resample_matrix(resolution, w).toarray().astype(np.float32)
    up = np.einsum("ij,njk,lk->nil", ry, low, rx)
    return np.repeat(up[..., None], c, axis=-1)


class SliceDataset(keras.utils.PyDataset):
    """Batches of ``(input, target)`` from a :class:`SliceStore` subset.

    The target is the clean centre slice; the input is the (augmented) slice stack, plus coarse noise
    when ``noise_std > 0`` (denoising training). Shuffled per epoch from ``seed`` and the epoch
    number, so a resumed run sees the same batches as an uninterrupted one. ``same_each_epoch``
    (validation) draws the same noise and augmentation every epoch, so the validation loss of one
    epoch compares with the next and does not depend on where a resumed run started.
    """

    def __init__(
        self,
        store: SliceStore,
        indices: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        augment: Augment | None = None,
        noise_std: float = 0.0,
        noise_resolution: int = 16,
        start_epoch: int = 0,
        same_each_epoch: bool = False,
    ):
        super().__init__(workers=1, use_multiprocessing=False)
        self.same_each_epoch = bool(same_each_epoch)
        self.store = store
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.augment = augment
        self.noise_std = float(noise_std)
        self.noise_resolution = int(noise_resolution)
        self.epoch = int(start_epoch)
        self._order = self._make_order()

    def _make_order(self) -> np.ndarray:
        if not self.shuffle:
            return self.indices
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.indices)

    def __len__(self) -> int:
        return int(np.ceil(len(self.indices) / self.batch_size))

    def __getitem__(self, idx: int):
        sel = np.sort(self._order[idx * self.batch_size : (idx + 1) * self.batch_size])
        x = self.store.read(sel)
        rng = np.random.default_rng([self.seed, 0 if self.same_each_epoch else self.epoch, idx, 1])
        if self.augment is not None:
            x = self.augment.apply(x, rng)
        c = x.shape[-1] // 2
        target = x[..., c : c + 1].copy()
        if self.noise_std > 0:
            x = x + coarse_noise(x.shape, self.noise_resolution, self.noise_std, rng)
        return x, target

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._order = self._make_order()
