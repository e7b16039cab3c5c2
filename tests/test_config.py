"""aeanomaly.config: the one table of training and fitting defaults (stdlib only)."""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import subprocess
import sys

import pytest

from aeanomaly.config import FIT_DEFAULTS, TRAIN_DEFAULTS, TrainConfig

#: TrainConfig fields that AnomalyDetector does not take as constructor parameters (fixed in the detector).
NOT_DETECTOR_PARAMS = {"upsample"}


def test_train_config_defaults_are_the_table():
    cfg = TrainConfig()
    for name, value in TRAIN_DEFAULTS.items():
        assert getattr(cfg, name) == value, name
    assert cfg.size == 128 and cfg.depth == 4 and cfg.base_filters == 16 and cfg.latent == "spatial"
    assert cfg.epochs == 30 and cfg.batch_size == 16 and cfg.learning_rate == 1e-3 and cfg.patience == 8
    assert cfg.augment is True and cfg.seed == 0
    # augment_params has a factory default: not in the plain table, and never shared between configs
    assert "augment_params" not in TRAIN_DEFAULTS and cfg.augment_params == {}
    assert TrainConfig().augment_params is not cfg.augment_params
    assert set(TRAIN_DEFAULTS) | {"augment_params"} == {f.name for f in dataclasses.fields(TrainConfig)}
    assert FIT_DEFAULTS == {"window": "lung", "val_fraction": 0.15, "calib_fraction": 0.3, "target_fpr": 0.05,
                            "calib_method": "auto", "precision": "auto", "model_kind": "dae", "seg_epochs": 16,
                            "seg_filters": 16}
    assert not set(FIT_DEFAULTS) & set(TRAIN_DEFAULTS)


@pytest.mark.parametrize("lr, epochs", [(1e-3, 30), (3e-3, 8), (0.5, 2)])
def test_lr_at_cosine_from_full_to_five_percent(lr, epochs):
    cfg = TrainConfig(learning_rate=lr, epochs=epochs)
    assert cfg.lr_at(0) == pytest.approx(lr)
    assert cfg.lr_at(epochs - 1) == pytest.approx(0.05 * lr)
    assert cfg.lr_at(epochs + 10) == pytest.approx(0.05 * lr)  # clamped after the last epoch
    rates = [cfg.lr_at(e) for e in range(epochs)]
    assert all(a > b for a, b in zip(rates, rates[1:]))  # strictly decreasing
    if epochs % 2 == 1:  # the middle epoch sits half-way between the endpoints
        assert cfg.lr_at((epochs - 1) // 2) == pytest.approx(lr * (0.05 + 0.95 * 0.5))
    assert isinstance(cfg.lr_at(1), float)


def test_lr_at_one_epoch_is_stateless_and_safe():
    cfg = TrainConfig(learning_rate=2e-3, epochs=1)
    assert cfg.lr_at(0) == pytest.approx(2e-3)  # no division by zero when epochs - 1 == 0
    assert cfg.lr_at(0) == cfg.lr_at(0)
    assert math.isfinite(cfg.lr_at(5))


def test_detector_constructor_defaults_come_from_the_table():
    from aeanomaly.detector import AnomalyDetector

    params = inspect.signature(AnomalyDetector.__init__).parameters
    table = {**TRAIN_DEFAULTS, **FIT_DEFAULTS}
    missing = {k for k in table if k not in params}
    assert missing == NOT_DETECTOR_PARAMS, missing
    for name, value in table.items():
        if name in params:
            assert params[name].default == value, (name, params[name].default, value)


def _help_default(text: str, option: str) -> str:
    m = re.search(rf"{re.escape(option)}\b(?:(?! --[a-z]).)*?\[default: ([^;\]]+)", text)
    assert m, (option, text)
    return m.group(1).strip()


def test_fit_help_shows_the_table(monkeypatch):
    from click.testing import CliRunner

    from aeanomaly.cli import main

    monkeypatch.setenv("COLUMNS", "400")
    res = CliRunner().invoke(main, ["fit", "--help"], terminal_width=400)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    cli = {"--size": "size", "--channels": "channels", "--depth": "depth", "--base-filters": "base_filters",
           "--latent-dim": "latent_dim", "--latent-kind": "latent", "--loss": "loss", "--norm": "norm",
           "--epochs": "epochs", "--batch-size": "batch_size", "--learning-rate": "learning_rate",
           "--patience": "patience", "--seed": "seed"}
    for option, name in cli.items():
        assert _help_default(text, option) == str(TRAIN_DEFAULTS[name]), option
    for option, name in {"--val-fraction": "val_fraction", "--calib-fraction": "calib_fraction",
                         "--target-fpr": "target_fpr", "--calib-method": "calib_method",
                         "--precision": "precision"}.items():
        assert _help_default(text, option) == str(FIT_DEFAULTS[name]), option


def test_config_imports_only_the_standard_library():
    code = ("import sys, aeanomaly.config; heavy = {'numpy', 'tensorflow', 'keras', 'scipy', 'nibabel'} & "
            "set(sys.modules); assert not heavy, heavy")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
