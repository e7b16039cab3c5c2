"""tf.distribute: the tiny autoencoder trains to the same loss curve with MultiWorkerMirroredStrategy
across 2 local worker processes (TF_CONFIG), and the product's fit with MirroredStrategy over 2 logical
CPU devices, as on one device. Training runs in subprocesses: logical devices and the worker
cluster must be set up before TensorFlow starts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aeanomaly.distributed.strategy import is_chief, make_strategy, parse_tf_config
from aeanomaly.errors import ConfigError

WORKER = Path(__file__).with_name("train_worker.py")
REPO = Path(__file__).resolve().parents[2]
# The all-reduce sums the two workers' gradients in another order than one device sums the whole batch:
# float32 rounding that training amplifies step by step (4e-4 relative seen at epoch 3 on an idle machine).
RTOL = 2e-3


def _env(**extra) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    env.pop("TF_CONFIG", None)  # only the multi-worker processes get one
    return {**env, **extra}


def _result(stdout: str) -> dict:
    lines = [x for x in stdout.splitlines() if x.startswith("RESULT ")]
    assert lines, stdout[-2000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_bad_strategy_and_tf_config_are_one_clear_error(monkeypatch):
    with pytest.raises(ConfigError, match="strategy must be one of"):
        make_strategy("horovod")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="needs TF_CONFIG"):
        make_strategy("multiworker")
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_tf_config("{cluster")
    with pytest.raises(ConfigError, match='no "task"'):
        parse_tf_config('{"cluster": {"worker": ["a:1"]}}')
    with pytest.raises(ConfigError, match="not in its cluster"):
        parse_tf_config('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}')
    cfg = parse_tf_config('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}')
    assert not is_chief(cfg) and is_chief({**cfg, "task": {"type": "worker", "index": 0}})
    assert is_chief()  # no TF_CONFIG: a single process is its own chief


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_multiworker_across_two_local_processes_matches_the_default_loss_curve():
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs = [subprocess.Popen([sys.executable, str(WORKER), "multiworker"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env=_env(TF_CONFIG=json.dumps({"cluster": cluster,
                                                             "task": {"type": "worker", "index": i}})))
             for i in range(2)]
    outs = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=600)
            assert p.returncode == 0, stderr[-3000:]
            outs.append(_result(stdout))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [o["replicas"] for o in outs] == [2, 2]
    assert [o["chief"] for o in outs] == [True, False]
    np.testing.assert_array_equal(outs[0]["multiworker"], outs[1]["multiworker"])  # in sync
    single = subprocess.run([sys.executable, str(WORKER), "default"], capture_output=True, text=True, env=_env(),
                            timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    np.testing.assert_allclose(outs[0]["multiworker"], _result(single.stdout)["default"], rtol=RTOL)


PRODUCT_FIT = r"""
import json, sys
from aeanomaly.distributed.strategy import make_strategy
strat = make_strategy("mirrored", logical_cpus=2)
from aeanomaly.detector import AnomalyDetector
from aeanomaly.datasets.synthetic import write_phantom_set
from aeanomaly.io import find_scans
data = write_phantom_set(sys.argv[1], 8, 0, region="chest", seed=1, shape=(4, 32, 32), spacing=(6.0, 11.0, 11.0))
kw = dict(size=32, depth=2, base_filters=4, latent_dim=8, epochs=2, batch_size=8, calib_fraction=0.3,
          target_fpr=0.2, seed=0, augment=False)
paths = find_scans(data.parent / "normal")
plain = AnomalyDetector(**kw).fit(paths, verbose=0)
mirrored = AnomalyDetector(**kw).fit(paths, verbose=0, strategy=strat)
print("RESULT " + json.dumps({"replicas": strat.num_replicas_in_sync, "plain": plain.history_["loss"],
                              "mirrored": mirrored.history_["loss"]}))
"""


@pytest.mark.slow
def test_the_products_fit_trains_under_mirrored_strategy_to_the_same_losses(tmp_path):
    r = subprocess.run([sys.executable, "-c", PRODUCT_FIT, str(tmp_path / "data")], capture_output=True, text=True,
                       env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = _result(r.stdout)
    assert res["replicas"] == 2
    np.testing.assert_allclose(res["mirrored"], res["plain"], rtol=1e-3)
