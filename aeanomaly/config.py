"""The defaults of every training and fitting parameter, in one table (stdlib only, so that the CLI
can show them in ``--help`` without importing numpy or TensorFlow).

:class:`TrainConfig` defines a training run (the autoencoder and its optimisation); :data:`FIT_DEFAULTS`
the rest of ``fit`` (window, splits, calibration, inference arithmetic). The scoring parameters and
their defaults are :class:`aeanomaly.scoring.ScoringParams`. :class:`aeanomaly.detector.AnomalyDetector`
and ``aeanomaly fit`` take their defaults from here.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields

#: Defaults of ``fit`` that are not training settings.
FIT_DEFAULTS = {
    "window": "lung",
    "val_fraction": 0.15,
    "calib_fraction": 0.3,
    "target_fpr": 0.05,
    "calib_method": "auto",
    # bfloat16 where the machine computes it natively, else float32 (AnomalyDetector.fit resolves it): on the
    # real-CT benchmark bfloat16 moved no detection figure by more than 0.002, and it scores a 300-slice CT in
    # 7.2 s against 11.3 s on an AVX512-BF16 CPU (benchmarks/results/real_ct_defaults.json, speed.json)
    "precision": "auto",
    "model_kind": "dae",
    "seg_epochs": 16,
    "seg_filters": 16,
}

#: The hardware that computes bfloat16 natively (aeanomaly.model.autoencoder.native_bfloat16), as messages say it.
BFLOAT16_HARDWARE = "a CPU with AVX512-BF16 or AMX, or a GPU of compute capability 8.0 or later"

#: Fewest training steps per ``dae+seg`` segmenter epoch (:func:`aeanomaly.model.selfsup.train_discriminator`).
#: On real CT (about 200 training slices, 13 batches) 5 such short epochs left the Dice loss at 1.0; the
#: loss kept falling past 400 steps (benchmarks/real_ct.py).
SEG_MIN_STEPS_PER_EPOCH = 50


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in the bundle through the detector's parameters).

    ``augment_params`` overrides :class:`aeanomaly.model.data.Augment`'s defaults (empty: all defaults).
    """

    size: int = 128
    channels: int = 1
    depth: int = 4
    base_filters: int = 16
    latent: str = "spatial"
    latent_dim: int = 64
    skip: bool = True
    norm: str = "batch"  # folded into the convolutions at inference; see README "Benchmarks"
    upsample: str = "transpose"
    loss: str = "mae"
    # Denoising noise, chosen on the real-CT benchmark's tune split (tuning lesion kinds injected into whole
    # LIDC volumes; README "Detection on real CT"): 0.5 on a 64 x 64 grid over the field of view beat the
    # coarse 0.2 on 16 x 16 of Kascenas et al. (slice AUROC 0.73 vs 0.58, pixel AUPRC 0.19 vs 0.04).
    noise_std: float = 0.5
    noise_resolution: int = 64
    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 1e-3
    patience: int = 8
    augment: bool = True
    seed: int = 0
    augment_params: dict = field(default_factory=dict)

    def build(self):
        """The autoencoder these settings describe (a new, uncompiled ``keras.Model``)."""
        from .model.autoencoder import build_autoencoder

        return build_autoencoder(
            size=self.size, channels=self.channels, depth=self.depth, base_filters=self.base_filters,
            latent=self.latent, latent_dim=self.latent_dim, skip=self.skip, norm=self.norm,
            upsample=self.upsample,
        )

    def lr_at(self, epoch: int) -> float:
        """Cosine decay from ``learning_rate`` to 5% of it over ``epochs`` (stateless, so resumable)."""
        t = min(1.0, epoch / max(1, self.epochs - 1))
        return float(self.learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))))


#: The plain defaults of :class:`TrainConfig` by name.
TRAIN_DEFAULTS = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
