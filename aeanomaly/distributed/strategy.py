"""tf.distribute strategies for training the autoencoder on several devices or machines.

``make_strategy(name)``:

* ``"default"`` — the default (single-device) strategy: training exactly as without this module.
* ``"mirrored"`` — :class:`tf.distribute.MirroredStrategy` over this machine's GPUs, or over its
  logical CPU devices when there is no GPU (``logical_cpus=N`` splits the CPU into N devices first;
  that must happen before TensorFlow initialises its devices, so call it first thing).
* ``"multiworker"`` — :class:`tf.distribute.MultiWorkerMirroredStrategy`; the cluster and this
  process's role come from the ``TF_CONFIG`` environment variable (validated here, so a typo is one
  clear error instead of a hang).

How training uses it (the hook in :func:`aeanomaly.model.train.train_autoencoder`): build and compile
the model under ``strategy.scope()`` (also ``keras.models.load_model`` on resume) and call
``model.fit`` as usual. Keras splits each batch across the replicas and averages the gradients, so
``TrainConfig.batch_size`` stays the *global* batch and the loss curve is the single-device one (up
to float rounding); :func:`per_replica_batch_size` says what each device sees. Under
``multiworker`` every worker runs the same command; only the chief (``task.index`` 0) should write
the checkpoint and bundle (:func:`is_chief`).

TensorFlow is imported inside the functions only.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..errors import ConfigError

STRATEGIES = ("default", "mirrored", "multiworker")


def parse_tf_config(text: str | None = None) -> dict:
    """The parsed and checked ``TF_CONFIG`` (``{"cluster": {"worker": [...], ...}, "task": {...}}``).

    Raises
    ------
    ConfigError
        Unset, not JSON, or without a cluster / a task that names one of its members.
    """
    text = os.environ.get("TF_CONFIG") if text is None else text
    if not text:
        raise ConfigError("--strategy multiworker needs TF_CONFIG (the cluster and this worker's task) in the "
                          "environment; see the README 'Scaling out'")
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({err.msg} at character {err.pos})") from None
    cluster, task = cfg.get("cluster") if isinstance(cfg, dict) else None, cfg.get("task") if isinstance(cfg, dict) else None
    if not isinstance(cluster, dict) or not cluster:
        raise ConfigError('TF_CONFIG has no "cluster" (e.g. {"worker": ["host1:12345", "host2:12345"]})')
    for role, members in cluster.items():
        if not isinstance(members, list) or not all(isinstance(m, str) and ":" in m for m in members):
            raise ConfigError(f'TF_CONFIG cluster "{role}" must be a list of "host:port" strings')
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ConfigError('TF_CONFIG has no "task" with "type" and "index" (e.g. {"type": "worker", "index": 0})')
    members = cluster.get(task["type"])
    if members is None or not isinstance(task["index"], int) or not 0 <= task["index"] < len(members):
        raise ConfigError(f"TF_CONFIG task {task['type']}/{task['index']} is not in its cluster")
    return cfg


def is_chief(tf_config: dict | None = None) -> bool:
    """True for the process that should write checkpoints and the bundle: the ``chief`` task, or
    ``worker`` 0 when the cluster has no chief, or any process without ``TF_CONFIG``."""
    if tf_config is None:
        if not os.environ.get("TF_CONFIG"):
            return True
        tf_config = parse_tf_config()
    task = tf_config["task"]
    if "chief" in tf_config["cluster"]:
        return task["type"] == "chief"
    return task["type"] == "worker" and task["index"] == 0


def configure_logical_cpus(n: int) -> list[str]:
    """Split the first physical CPU into ``n`` logical devices (for MirroredStrategy without a GPU).

    Must run before TensorFlow initialises its devices (before any op or model is created).
    Returns the logical CPU device names.
    """
    import tensorflow as tf

    if n < 1:
        raise ConfigError(f"logical_cpus must be ≥ 1, got {n}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is None or len(current) != n:
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
        except RuntimeError:
            raise ConfigError(f"cannot split the CPU into {n} logical devices: TensorFlow is already initialised "
                              "(configure the strategy before building any model)") from None
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def make_strategy(name: str = "default", *, logical_cpus: int | None = None, devices: list[str] | None = None) -> Any:
    """A tf.distribute strategy by name.

    Parameters
    ----------
    name : {"default", "mirrored", "multiworker"}
    logical_cpus : int, optional
        ``mirrored`` without a GPU: split the CPU into this many logical devices first.
    devices : list of str, optional
        ``mirrored``: explicit device names (default: every GPU, else every logical CPU).

    Returns
    -------
    tf.distribute.Strategy
        Use ``with strategy.scope():`` around building and compiling the model.

    Raises
    ------
    ConfigError
        Unknown name, or a bad ``TF_CONFIG`` for ``multiworker``.
    """
    if name not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    if name == "multiworker":
        parse_tf_config()  # before TensorFlow: a bad TF_CONFIG is one clear error
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if logical_cpus is not None:
            configure_logical_cpus(logical_cpus)
        if devices is None:
            gpus = tf.config.list_logical_devices("GPU")
            devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        on_cpu = all("CPU" in d.upper() for d in devices)
        # NCCL (the default all-reduce) needs GPUs; on CPUs reduce through one device
        ops = tf.distribute.ReductionToOneDevice() if on_cpu else None
        return tf.distribute.MirroredStrategy(devices=devices, cross_device_ops=ops)
    return tf.distribute.MultiWorkerMirroredStrategy()


def fit_replicated(model, dataset, strategy, *, epochs: int, loss, optimizer, initial_epoch: int = 0,
                   steps_per_epoch: int | None = None, validation_data=None, on_epoch_begin=None,
                   on_epoch_end=None) -> dict[str, list[float]]:
    """Synchronous data-parallel training with ``strategy.run`` (works with every strategy here).

    Keras 3's ``model.fit`` trains under ``default`` and ``mirrored`` but not under
    MultiWorkerMirroredStrategy (keras-team/keras#20585: it fails building the model from a
    distributed batch), so ``multiworker`` training uses this loop. Each replica computes the
    loss of its part of the global batch, scaled by the global batch size
    (``tf.nn.compute_average_loss``); the optimizer sums the gradients across replicas and workers,
    so one step equals a single-device step on the global batch.

    Parameters
    ----------
    model : keras.Model
        Built (and its ``optimizer`` created) under ``strategy.scope()``.
    dataset : tf.data.Dataset
        Yields ``(x, y)`` global batches (the same on every worker; each worker takes its shard).
    loss : str, callable or keras.losses.Loss
        What :func:`aeanomaly.model.autoencoder.reconstruction_loss` returns: a Keras loss name, a
        function ``loss(y_true, y_pred)`` of per-sample or per-pixel values, or a Loss object.
    optimizer : keras.optimizers.Optimizer
        Created under ``strategy.scope()``.
    initial_epoch : int
        First epoch (a resumed run).
    validation_data : tf.data.Dataset, optional
        ``(x, y)`` batches; their mean loss is ``val_loss``.
    on_epoch_begin : callable, optional
        ``on_epoch_begin(epoch)`` (e.g. set ``optimizer.learning_rate`` from a schedule).
    on_epoch_end : callable, optional
        ``on_epoch_end(epoch, logs)`` with ``logs = {"loss": ..., "val_loss": ...}`` after each epoch,
        e.g. ``RunState.on_epoch_end`` (a Keras callback: ``cb.set_model(model)`` first); it may set
        ``model.stop_training = True`` to stop early.

    Returns
    -------
    dict
        ``{"loss": [...], "val_loss": [...]}`` per epoch (as ``History.history``).
    """
    import keras
    import tensorflow as tf

    if isinstance(loss, str):  # "mean_absolute_error" as reconstruction_loss gives it
        loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):  # its unreduced values; the reduction is done here
        loss = loss.call
    dist = strategy.experimental_distribute_dataset(with_data_sharding(dataset))

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            vals = tf.cast(loss(y, pred), tf.float32)
            per_sample = tf.reduce_mean(tf.reshape(vals, [tf.shape(vals)[0], -1]), axis=1)
            scaled = tf.nn.compute_average_loss(per_sample)
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return scaled

    @tf.function
    def step(x, y):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_step, args=(x, y)), axis=None)

    def replica_eval(x, y):
        vals = tf.cast(loss(y, model(x, training=False)), tf.float32)
        return tf.nn.compute_average_loss(tf.reduce_mean(tf.reshape(vals, [tf.shape(vals)[0], -1]), axis=1))

    @tf.function
    def eval_step(x, y):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_eval, args=(x, y)), axis=None)

    def mean_over(ds, fn, limit=None) -> float:
        total, n = 0.0, 0
        for k, (x, y) in enumerate(ds):
            if limit is not None and k >= limit:
                break
            total += float(fn(x, y))
            n += 1
        return total / max(n, 1)

    val = (strategy.experimental_distribute_dataset(with_data_sharding(validation_data))
           if validation_data is not None else None)
    history: dict[str, list[float]] = {"loss": []}
    model.stop_training = False
    for epoch in range(int(initial_epoch), int(epochs)):
        if on_epoch_begin is not None:
            on_epoch_begin(epoch)
        logs = {"loss": mean_over(dist, step, steps_per_epoch)}
        if val is not None:
            logs["val_loss"] = mean_over(val, eval_step)
        for k, v in logs.items():
            history.setdefault(k, []).append(v)
        if on_epoch_end is not None:
            on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    return history


def with_data_sharding(dataset):
    """``dataset`` with auto-sharding by element (``AutoShardPolicy.DATA``): the right policy for
    generator- or tensor-backed datasets (no files to shard), and the one TensorFlow would fall back
    to with a warning."""
    import tensorflow as tf

    opts = tf.data.Options()
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(opts)


def replicas(strategy) -> int:
    """Replicas that train in sync (devices × workers)."""
    return int(strategy.num_replicas_in_sync)


def per_replica_batch_size(global_batch: int, strategy) -> int:
    """What each replica sees of a global batch (the global batch must divide evenly)."""
    n = replicas(strategy)
    if global_batch % n:
        raise ConfigError(f"batch size {global_batch} does not divide across {n} replicas; use a multiple of {n}")
    return global_batch // n
