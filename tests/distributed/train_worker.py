"""Subprocess helper of test_strategy.py: trains the tiny autoencoder a few steps and prints the
per-epoch losses as JSON. Usage: python train_worker.py STRATEGY [LOGICAL_CPUS]

STRATEGY "compare" trains with no strategy and then with MirroredStrategy over LOGICAL_CPUS logical
CPU devices in the same process (the logical devices must be configured before TensorFlow starts).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SIZE, N, BATCH, EPOCHS, SEED = 32, 32, 8, 3, 0


def data():
    import numpy as np
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(SEED)
    x = gaussian_filter(rng.random((N, SIZE, SIZE)), sigma=(0, 2, 2))
    x = ((x - x.min()) / (x.max() - x.min())).astype("float32")[..., None]
    return x


def train(strategy=None, loop: str = "fit") -> list[float]:
    import keras
    import tensorflow as tf

    from aeanomaly.model.autoencoder import build_autoencoder

    x = data()
    keras.utils.set_random_seed(SEED)
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = build_autoencoder(size=SIZE, depth=3, base_filters=8, latent_dim=16)
        model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mae")
    from aeanomaly.distributed.strategy import with_data_sharding

    ds = with_data_sharding(tf.data.Dataset.from_tensor_slices((x, x)).batch(BATCH))
    if loop == "generator":  # as train_autoencoder feeds fit: one generator-backed tf.data stream of every
        def batches():      # epoch's batches (SliceDataset.as_tf_dataset) with steps_per_epoch given
            for _ in range(EPOCHS):
                for i in range(N // BATCH):
                    b = x[i * BATCH:(i + 1) * BATCH]
                    yield b, b

        spec = tf.TensorSpec((None, SIZE, SIZE, 1), tf.float32)
        gen = tf.data.Dataset.from_generator(batches, output_signature=(spec, spec))
        hist = model.fit(gen, epochs=EPOCHS, steps_per_epoch=N // BATCH, verbose=0, shuffle=False)
        return [float(v) for v in hist.history["loss"]]
    if loop == "fit":  # Keras fit (default and mirrored)
        hist = model.fit(ds, epochs=EPOCHS, verbose=0, shuffle=False)
        return [float(v) for v in hist.history["loss"]]
    from aeanomaly.distributed.strategy import fit_replicated

    hist = fit_replicated(model, ds, strategy, epochs=EPOCHS, loss="mean_absolute_error",
                          optimizer=model.optimizer)
    return hist["loss"]


def main(argv: list[str]) -> None:
    from aeanomaly.distributed.strategy import make_strategy, replicas

    name = argv[0]
    if name == "compare":
        n = int(argv[1])
        mirrored = make_strategy("mirrored", logical_cpus=n)  # first: before TensorFlow starts
        out = {"default": train(), "mirrored": train(mirrored), "default_loop": train(loop="replicated"),
               "mirrored_generator": train(mirrored, loop="generator"),
               "replicas": replicas(mirrored)}
    else:
        strategy = make_strategy(name)  # "multiworker": TF_CONFIG names the cluster and this task
        out = {name: train(strategy, loop="replicated"), "replicas": replicas(strategy)}
        if name == "multiworker":
            from aeanomaly.distributed.strategy import is_chief

            out["chief"] = is_chief()
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
