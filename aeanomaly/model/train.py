"""Training loop: Adam with a cosine learning-rate schedule, early stopping on validation loss,
a checkpoint every epoch and exact resume after an interruption (Ctrl-C, kill)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np

from .autoencoder import build_autoencoder, reconstruction_loss
from .data import Augment, SliceDataset, SliceStore

CHECKPOINT = "checkpoint.keras"
BEST_WEIGHTS = "best.weights.h5"
STATE = "state.json"


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in the bundle)."""

    size: int = 128
    channels: int = 1
    depth: int = 4
    base_filters: int = 16
    latent: str = "spatial"
    latent_dim: int = 64
    skip: bool = True
    norm: str = "group"
    loss: str = "mae"
    noise_std: float = 0.2
    noise_resolution: int = 16
    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 1e-3
    patience: int = 8
    augment: bool = True
    seed: int = 0
    augment_params: dict = field(default_factory=lambda: asdict(Augment()))

    def build(self) -> keras.Model:
        return build_autoencoder(
            size=self.size, channels=self.channels, depth=self.depth, base_filters=self.base_filters,
            latent=self.latent, latent_dim=self.latent_dim, skip=self.skip, norm=self.norm,
        )

    def lr_at(self, epoch: int) -> float:
        """Cosine decay from ``learning_rate`` to 5% of it over ``epochs`` (stateless, so resumable)."""
        t = min(1.0, epoch / max(1, self.epochs - 1))
        return float(self.learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))))


class RunState(keras.callbacks.Callback):
    """Per-epoch checkpoint, history, best weights and early stopping, all restorable from disk."""

    def __init__(self, work_dir: Path, patience: int, state: dict | None = None):
        super().__init__()
        self.work_dir = Path(work_dir)
        self.patience = int(patience)
        self.state = state or {"epoch": 0, "history": {}, "best": None, "wait": 0, "stopped_early": False}

    def on_epoch_end(self, epoch, logs=None):
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
        _atomic_save(lambda p: self.model.save(p), self.work_dir / CHECKPOINT)
        tmp = self.work_dir / (STATE + ".tmp")
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, self.work_dir / STATE)


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
) -> tuple[keras.Model, dict]:
    """Train (or resume training) and return the model with its best weights and the run state.

    The run state holds ``epoch`` (completed epochs), ``history`` (per-epoch metrics), ``best``
    validation loss, ``stopped_early`` and ``resumed_from`` (the epoch a resume started at).
    """
    work_dir = Path(work_dir)
    keras.utils.set_random_seed(config.seed)
    state = load_state(work_dir) if resume else None
    if state is not None:
        model = keras.models.load_model(work_dir / CHECKPOINT, safe_mode=True)
        state["resumed_from"] = state["epoch"]
    else:
        model = config.build()
        model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=reconstruction_loss(config.loss))
    start = int(state["epoch"]) if state else 0
    run_state = RunState(work_dir, config.patience, state)
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
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=config.epochs,
            initial_epoch=start,
            verbose=verbose,
            callbacks=[keras.callbacks.LearningRateScheduler(config.lr_at), run_state],
        )
    best = work_dir / BEST_WEIGHTS
    if best.is_file():
        model.load_weights(best)
    return model, run_state.state
