"""Streaming training input: an on-disk slice store and a Keras ``PyDataset`` over it.

Scans are preprocessed one at a time and appended to one flat float16 file; batches are read back
with positional reads (``os.pread``), never memory-mapped, so the process's memory stays flat
whatever the number of scans. Augmentation and coarse denoising noise are applied per batch, in the
TensorFlow graph (one projective-transform kernel call per batch, one einsum for the noise): the
random parameters are drawn in numpy from ``(seed, epoch, batch)``, so batches are reproducible and a
resumed run sees the same ones. :meth:`SliceDataset.as_tf_dataset` streams them through ``tf.data``
with prefetch, so reading and augmenting the next batches overlaps the training step.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

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

    def draw(self, n: int, h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Random parameters of ``n`` slices of ``h × w``: projective transforms ``(n, 8)`` (output
        pixel → input pixel, in the layout of ``tf.raw_ops.ImageProjectiveTransformV3``), gains and
        offsets ``(n,)``, float32.

        Per slice, in this order: flip draw, rotation, scale, shift (2), gain, offset — the order of
        earlier releases' per-sample loop, so the same ``rng`` gives the same augmentation.
        """
        transforms = np.zeros((n, 8), np.float64)
        gains = np.empty(n, np.float64)
        offsets = np.empty(n, np.float64)
        centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
        for i in range(n):
            flip = rng.random() < self.flip
            ang = np.deg2rad(rng.uniform(-self.rotate_deg, self.rotate_deg))
            s = 1.0 + rng.uniform(-self.scale, self.scale)
            rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]]) / s
            shift = rng.uniform(-self.shift, self.shift, size=2) * np.array([h, w])
            off = centre - rot @ (centre + shift)
            # (row, col) output → (row, col) input: in = rot @ out + off; TF's transform is in (x=col, y=row)
            t = np.array([rot[1, 1], rot[1, 0], off[1], rot[0, 1], rot[0, 0], off[0], 0.0, 0.0])
            if flip:  # sample the left-right mirrored slice: col_in → (w - 1) - col_in
                t[:3] = -t[:3]
                t[2] += w - 1
            transforms[i] = t
            gains[i] = 1.0 + rng.uniform(-self.gain, self.gain)
            offsets[i] = rng.uniform(-self.offset, self.offset)
        return transforms.astype(np.float32), gains.astype(np.float32), offsets.astype(np.float32)

    def apply(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment ``(n, h, w, c)`` slices (one random flip / rotation / scale / shift / intensity
        jitter per slice, the same on all its channels; bilinear, zero outside), float32 in [0, 1]."""
        n, h, w, _ = batch.shape
        t, g, o = self.draw(n, h, w, rng)
        return warp_batch(tf.convert_to_tensor(batch, tf.float32), t, g, o).numpy()


def warp_batch(x, transforms, gains, offsets):
    """Apply :meth:`Augment.draw` parameters to a ``(n, h, w, c)`` float32 tensor (TF ops, graph- or
    eager-mode): bilinear projective warp with zero fill, then ``clip(x·gain + offset, 0, 1)``."""
    y = tf.raw_ops.ImageProjectiveTransformV3(
        images=x, transforms=tf.cast(transforms, tf.float32), output_shape=tf.shape(x)[1:3],
        fill_value=tf.constant(0.0, tf.float32), interpolation="BILINEAR", fill_mode="CONSTANT")
    g = tf.reshape(tf.cast(gains, tf.float32), (-1, 1, 1, 1))
    o = tf.reshape(tf.cast(offsets, tf.float32), (-1, 1, 1, 1))
    return tf.clip_by_value(y * g + o, 0.0, 1.0)


def noise_matrices(resolution: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``(h, resolution)`` and ``(w, resolution)`` linear-upsampling matrices of :func:`coarse_noise`."""
    return (resample_matrix(resolution, h).toarray().astype(np.float32),
            resample_matrix(resolution, w).toarray().astype(np.float32))


def coarse_noise(shape: tuple[int, int, int, int], resolution: int, std: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise drawn on a ``resolution × resolution`` grid and linearly upsampled to
    ``shape = (n, size, size, channels)`` (the same noise on every channel), float32."""
    n, h, w, c = shape
    low = rng.normal(0.0, std, size=(n, resolution, resolution)).astype(np.float32)
    ry, rx = noise_matrices(resolution, h, w)
    up = ry @ low @ rx.T  # (h, r) @ (n, r, r) @ (r, w): two batched GEMMs, not a 3-operand einsum loop
    return np.repeat(up[..., None], c, axis=-1)


class SliceDataset(keras.utils.PyDataset):
    """Batches of ``(input, target)`` from a :class:`SliceStore` subset.

    The target is the clean centre slice; the input is the (augmented) slice stack, plus coarse noise
    when ``noise_std > 0`` (denoising training). Shuffled per epoch from ``seed`` and the epoch
    number, so a resumed run sees the same batches as an uninterrupted one. ``same_each_epoch``
    (validation) draws the same noise and augmentation every epoch, so the validation loss of one
    epoch compares with the next and does not depend on where a resumed run started.

    Indexing (``ds[i]``, the Keras ``PyDataset`` protocol) and :meth:`as_tf_dataset` (what training
    uses) give the same batches: both read with :meth:`raw_batch` and transform with the same TF ops.
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
        self._ry, self._rx = noise_matrices(self.noise_resolution, store.size, store.size)

    def _make_order(self, epoch: int | None = None) -> np.ndarray:
        if not self.shuffle:
            return self.indices
        return np.random.default_rng([self.seed, self.epoch if epoch is None else epoch]).permutation(self.indices)

    def __len__(self) -> int:
        return int(np.ceil(len(self.indices) / self.batch_size))

    def batch_sizes(self) -> np.ndarray:
        """Slices in each batch of an epoch."""
        n, bs = len(self.indices), self.batch_size
        return np.minimum(bs, n - np.arange(len(self)) * bs)

    def raw_batch(self, idx: int, epoch: int | None = None, order: np.ndarray | None = None) -> tuple:
        """The inputs of batch ``idx`` of ``epoch`` (default: the current one) before the TF transform:
        ``(slices, transforms, gains, offsets, low_noise)`` as float32 numpy arrays (slices as read from
        the store; identity augmentation and zero noise when disabled)."""
        epoch = self.epoch if epoch is None else int(epoch)
        order = self._make_order(epoch) if order is None else order
        sel = np.sort(order[idx * self.batch_size : (idx + 1) * self.batch_size])
        x = self.store.read(sel)
        n, h, w, _ = x.shape
        rng = np.random.default_rng([self.seed, 0 if self.same_each_epoch else epoch, idx, 1])
        if self.augment is not None:
            t, g, o = self.augment.draw(n, h, w, rng)
        else:
            t = np.tile(np.array([1, 0, 0, 0, 1, 0, 0, 0], np.float32), (n, 1))
            g, o = np.ones(n, np.float32), np.zeros(n, np.float32)
        r = self.noise_resolution
        low = (rng.normal(0.0, self.noise_std, size=(n, r, r)).astype(np.float32) if self.noise_std > 0
               else np.zeros((n, r, r), np.float32))
        return x, t, g, o, low

    def transform(self, x, transforms, gains, offsets, low):
        """TF ops: augmentation, target = clean centre slice, input + upsampled coarse noise."""
        if self.augment is not None:
            x = warp_batch(x, transforms, gains, offsets)
        c = self.store.channels // 2
        target = x[..., c : c + 1]
        if self.noise_std > 0:
            up = tf.einsum("ij,njk,lk->nil", tf.constant(self._ry), low, tf.constant(self._rx))
            x = x + up[..., None]
        return x, target

    def __getitem__(self, idx: int):
        x, t, g, o, low = self.raw_batch(idx)
        xi, y = self.transform(tf.constant(x), t, g, o, tf.constant(low))
        return np.asarray(xi), np.asarray(y)

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._order = self._make_order()

    def as_tf_dataset(self, epochs: int | None = None, prefetch: int = 2) -> "tf.data.Dataset":
        """A ``tf.data`` pipeline of ``epochs`` epochs from the current one (training: pass
        ``steps_per_epoch=len(self)`` to ``fit``), or of the current epoch's batches repeated as
        ``same_each_epoch`` defines when ``epochs`` is None (validation: one pass per iteration).

        Store reads and parameter draws run in the generator thread, the transform in the TF graph,
        and ``prefetch`` batches are prepared ahead of the training step. The dataset does not move
        :attr:`epoch`; batch ``i`` of epoch ``e`` equals ``ds[i]`` when ``ds.epoch == e``.
        """
        first = self.epoch
        n_epochs = 1 if epochs is None else int(epochs)
        fixed = epochs is None

        def gen():
            for e in range(first, first + n_epochs):
                order = self._make_order(first if fixed else e)
                for i in range(len(self)):
                    yield self.raw_batch(i, first if fixed else e, order)

        size, ch, r = self.store.size, self.store.channels, self.noise_resolution
        sig = (tf.TensorSpec((None, size, size, ch), tf.float32), tf.TensorSpec((None, 8), tf.float32),
               tf.TensorSpec((None,), tf.float32), tf.TensorSpec((None,), tf.float32),
               tf.TensorSpec((None, r, r), tf.float32))
        ds = tf.data.Dataset.from_generator(gen, output_signature=sig)
        ds = ds.apply(tf.data.experimental.assert_cardinality(n_epochs * len(self)))
        ds = ds.map(self.transform, num_parallel_calls=1, deterministic=True)
        return ds.prefetch(max(1, int(prefetch)))
