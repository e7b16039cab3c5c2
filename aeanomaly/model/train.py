"""Training loop: Adam with a cosine learning-rate schedule, early stopping on validation loss,
a checkpoint every epoch and exact resume after an interruption (Ctrl-C, kill).

Batches stream through ``tf.data`` with prefetch (:meth:`~aeanomaly.model.data.SliceDataset.as_tf_dataset`),
augmentation and noise run in the TF graph, and a progress bar shows slices/s and the ETA
(``verbose=1``; ``verbose=0`` is silent). Per-epoch wall, training-step and checkpoint times are kept
in the run state (``state["timing"]``)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
from tqdm.auto import tqdm

from ..config import TrainConfig  # noqa: F401  (the training settings; re-exported here)
from .autoencoder import reconstruction_loss
from .data import Augment, SliceDataset, SliceStore

CHECKPOINT = "checkpoint.keras"
BEST_WEIGHTS = "best.weights.h5"
STATE = "state.json"


class RunState(keras.callbacks.Callback):
    """Per-epoch checkpoint, history, best weights and early stopping, all restorable from disk."""

    def __init__(self, work_dir: Path, patience: int, state: dict | None = None, slices_per_epoch: int = 0):
        super().__init__()
        self.work_dir = Path(work_dir)
        self.patience = int(patience)
        self.slices_per_epoch = int(slices_per_epoch)
        self.state = state or {"epoch": 0, "history": {}, "best": None, "wait": 0, "stopped_early": False}
        self.state.setdefault("timing", [])
        self._t0 = self._t_val = None

    def on_epoch_begin(self, epoch, logs=None):
        self._t0, self._t_val = time.perf_counter(), None

    def on_test_begin(self, logs=None):
        self._t_val = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        t_end = time.perf_counter()
        logs = dict(logs or {})
        hist = self.state["history"]
        for k, v in logs.items():
            hist.setdefault(k, []).append(float(v))
        monitor = logs.get("val_loss", logs.get("loss"))
        if self.state["best"] is None or monitor < self.state["best"]:
            self.state["best"] = float(monitor)
            self.state["wait"] = 0
            _atomic_save(lambda p: self.model.save_weights(p), self.work_dir / BEST_WEIGHTS)
        else:
            self.state["wait"] += 1
        self.state["epoch"] = epoch + 1
        if self.state["wait"] >= self.patience:
            self.state["stopped_early"] = True
            self.model.stop_training = True
        t_ckpt = time.perf_counter()
        _atomic_save(lambda p: self.model.save(p), self.work_dir / CHECKPOINT)
        t0 = self._t0 if self._t0 is not None else t_end
        t_train = (self._t_val or t_end) - t0
        self.state["timing"].append({
            "epoch": epoch + 1, "epoch_s": round(time.perf_counter() - t0, 4), "train_s": round(t_train, 4),
            "val_s": round(t_end - (self._t_val or t_end), 4), "checkpoint_s": round(time.perf_counter() - t_ckpt, 4),
            "train_slices": self.slices_per_epoch,
            "train_slices_per_s": round(self.slices_per_epoch / t_train, 3) if t_train > 0 else None,
        })
        tmp = self.work_dir / (STATE + ".tmp")
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, self.work_dir / STATE)


class FitProgress(keras.callbacks.Callback):
    """A tqdm bar per epoch counted in slices (shows slices/s and the epoch's ETA), with the loss and
    the ETA of the whole run; one summary line per epoch."""

    def __init__(self, batch_sizes: np.ndarray, epochs: int):
        super().__init__()
        self.batch_sizes = np.asarray(batch_sizes, int)
        self.epochs = int(epochs)
        self.bar = None
        self.epoch_times: list[float] = []
        self._t0 = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()
        self._epoch = epoch
        left = self.epochs - epoch
        eta = f", run ETA {_hms(left * self.epoch_times[-1])}" if self.epoch_times else ""
        self.bar = tqdm(total=int(self.batch_sizes.sum()), desc=f"epoch {epoch + 1}/{self.epochs}{eta}",
                        unit="slice", leave=False, dynamic_ncols=True)

    def on_train_batch_end(self, batch, logs=None):
        if self.bar is not None:
            self.bar.update(int(self.batch_sizes[min(batch, len(self.batch_sizes) - 1)]))
            if logs and "loss" in logs and batch % 5 == 0:
                self.bar.set_postfix(loss=f"{float(logs['loss']):.4f}", refresh=False)

    def on_epoch_end(self, epoch, logs=None):
        dt = time.perf_counter() - self._t0
        self.epoch_times.append(dt)
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        logs = logs or {}
        vals = " ".join(f"{k}={float(v):.4f}" for k, v in logs.items() if k in ("loss", "val_loss"))
        left = self.epochs - epoch - 1
        tqdm.write(f"epoch {epoch + 1}/{self.epochs}: {vals} | {self.batch_sizes.sum() / dt:.1f} slices/s, "
                   f"{dt:.1f} s" + (f", ETA {_hms(left * dt)}" if left > 0 else ""))

    def on_train_end(self, logs=None):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _atomic_save(save, path: Path) -> None:
    tmp = path.with_name(".tmp-" + path.name)
    save(str(tmp))
    os.replace(tmp, path)


def load_state(work_dir: Path) -> dict | None:
    """The saved run state of an interrupted run in ``work_dir``, or None."""
    p = Path(work_dir) / STATE
    if p.is_file() and (Path(work_dir) / CHECKPOINT).is_file():
        return json.loads(p.read_text())
    return None


def train_autoencoder(
    config: TrainConfig,
    store: SliceStore,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    work_dir: str | os.PathLike,
    *,
    resume: bool = False,
    verbose: int = 1,
    callbacks: list | None = None,
    prefetch: int = 2,
    strategy=None,
) -> tuple[keras.Model, dict]:
    """Train (or resume training) and return the model with its best weights and the run state.

    Parameters
    ----------
    verbose : int
        0: silent; 1: a progress bar in slices with slices/s and ETA, and a line per epoch; 2: Keras'
        one line per epoch.
    callbacks : list of keras.callbacks.Callback, optional
        Extra callbacks (e.g. benchmarks' timers), called after the run's own.
    prefetch : int
        Batches prepared ahead of the training step by the ``tf.data`` pipeline.
    strategy : tf.distribute.Strategy, optional
        Data-parallel training (:func:`aeanomaly.distributed.strategy.make_strategy`): the model is built
        under its scope, ``config.batch_size`` stays the global batch (split across replicas, gradients
        summed), so the loss curve is the single-device one. Under MultiWorkerMirroredStrategy only the
        chief keeps its checkpoints, and training runs in the equivalent synchronous loop of
        :func:`aeanomaly.distributed.strategy.fit_replicated` (Keras 3's ``fit`` does not support it).

    Returns
    -------
    model, state
        The run state holds ``epoch`` (completed epochs), ``history`` (per-epoch metrics), ``best``
        validation loss, ``stopped_early``, ``resumed_from`` (the epoch a resume started at) and
        ``timing`` (per epoch: ``epoch_s``, ``train_s``, ``val_s``, ``checkpoint_s``, ``train_slices``,
        ``train_slices_per_s``).
    """
    import tensorflow as tf

    work_dir = Path(work_dir)
    strategy = strategy or tf.distribute.get_strategy()
    multiworker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    if multiworker:
        from ..distributed.strategy import is_chief

        if not is_chief():  # every worker checkpoints (collectively); only the chief's are kept
            work_dir = Path(tempfile.mkdtemp(prefix="aeanomaly-worker-"))
    keras.utils.set_random_seed(config.seed)
    state = load_state(work_dir) if resume else None
    with strategy.scope():  # build, compile and load under the scope
        if state is not None:
            model = keras.models.load_model(work_dir / CHECKPOINT, safe_mode=True)
            state["resumed_from"] = state["epoch"]
        else:
            model = config.build()
            model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=reconstruction_loss(config.loss))
    start = int(state["epoch"]) if state else 0
    run_state = RunState(work_dir, config.patience, state, slices_per_epoch=len(train_idx))
    done = (state or {}).get("stopped_early", False) or start >= config.epochs
    if not done:
        augment = Augment(**config.augment_params) if config.augment else None
        train_ds = SliceDataset(
            store, train_idx, config.batch_size, shuffle=True, seed=config.seed, augment=augment,
            noise_std=config.noise_std, noise_resolution=config.noise_resolution, start_epoch=start,
        )
        val_ds = SliceDataset(
            store, val_idx, config.batch_size, shuffle=False, seed=config.seed,
            noise_std=config.noise_std, noise_resolution=config.noise_resolution, same_each_epoch=True,
        ) if len(val_idx) else None
        own = [keras.callbacks.LearningRateScheduler(config.lr_at), run_state]
        if verbose == 1:
            own.append(FitProgress(train_ds.batch_sizes(), config.epochs))
        train_tf = train_ds.as_tf_dataset(epochs=config.epochs - start, prefetch=prefetch)
        val_tf = val_ds.as_tf_dataset(prefetch=prefetch) if val_ds is not None else None
        if multiworker:
            from ..distributed.strategy import fit_replicated

            run_state.set_model(model)

            def begin(epoch):
                model.optimizer.learning_rate = config.lr_at(epoch)
                run_state.on_epoch_begin(epoch)

            fit_replicated(model, train_tf, strategy, epochs=config.epochs, initial_epoch=start,
                           steps_per_epoch=len(train_ds), validation_data=val_tf, loss=reconstruction_loss(config.loss),
                           optimizer=model.optimizer, on_epoch_begin=begin, on_epoch_end=run_state.on_epoch_end)
        else:
            model.fit(
                train_tf,
                steps_per_epoch=len(train_ds),
                validation_data=val_tf,
                epochs=config.epochs,
                initial_epoch=start,
                verbose=2 if verbose == 2 else 0,
                shuffle=False,  # the dataset shuffles per epoch from (seed, epoch)
                callbacks=own + list(callbacks or []),
            )
    best = work_dir / BEST_WEIGHTS
    if best.is_file():
        model.load_weights(best)
    if not multiworker and strategy.num_replicas_in_sync == 1:
        # the inputs the weights were fitted to: the training stream (augmentation and noise included)
        stream = SliceDataset(store, train_idx, config.batch_size, shuffle=True, seed=config.seed + 1,
                              augment=Augment(**config.augment_params) if config.augment else None,
                              noise_std=config.noise_std, noise_resolution=config.noise_resolution)
        recompute_batchnorm_statistics(model, (stream[i][0] for i in range(min(len(stream), BN_STAT_BATCHES))))
    return model, run_state.state


#: Training batches that :func:`recompute_batchnorm_statistics` averages after a run.
BN_STAT_BATCHES = 64


def recompute_batchnorm_statistics(model: keras.Model, batches) -> int:
    """Set every BatchNormalization layer's moving mean and variance to the average of its batch
    statistics over ``batches`` (in order): "precise BN".

    Keras keeps exponential moving averages (momentum 0.99) that after a short run still hold most of
    their initial values (0 and 1), so a model trained for a few hundred steps normalises wrongly at
    inference. A forward pass in training mode with the momentum set to ``i / (i + 1)`` for batch ``i``
    makes the moving statistics the running mean of the batch statistics; no weight changes. Pass
    batches drawn as in training (augmented, noisy): on real CT, statistics of clean slices instead
    ranked real nodules worse (benchmarks/real_ct.py, fold LIDC-IDRI-0003: 0.70 against 0.76). Models without
    BatchNormalization are left alone. Returns the number of batches used.
    """
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not bns:
        return 0
    saved = [layer.momentum for layer in bns]
    n = 0
    try:
        for i, x in enumerate(batches):
            for layer in bns:
                layer.momentum = i / (i + 1.0)
            model(np.asarray(x, np.float32), training=True)
            n += 1
    finally:
        for layer, m in zip(bns, saved):
            layer.momentum = m
    return n
