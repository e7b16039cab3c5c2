"""aeanomaly.model.head_train: paired image/mask augmentation, the head's batches (HeadDataset), its
losses and the p-value/probability fusion model."""

import json

import numpy as np
import pytest

from aeanomaly.errors import ConfigError, NotFittedError
from aeanomaly.model.head_train import (
    CCEDiceLoss, DiceBCELoss, FusionModel, HeadDataset, augment_pair, fusion_features,
)

S = 32


# ---------------------------------------------------------------------------------------------
# losses


def test_losses_are_near_zero_for_a_perfect_prediction_and_large_otherwise(organs):
    y = organs(2)[1]
    binary = (y > 0).astype("float32")[..., None]
    bce = DiceBCELoss()
    assert float(bce(binary, binary)) == pytest.approx(0.0, abs=1e-4)
    assert float(bce(binary, 1.0 - binary)) > 1.0
    onehot = np.eye(3, dtype="float32")[y]
    cce = CCEDiceLoss(2)
    assert float(cce(y, onehot)) == pytest.approx(0.0, abs=1e-4)
    assert float(cce(y, np.roll(onehot, 1, axis=-1))) > 1.0
    assert float(cce(y, np.full_like(onehot, 1 / 3))) > float(cce(y, 0.8 * onehot + 0.2 / 3))
    assert CCEDiceLoss.from_config(cce.get_config()).n_classes == 2


# ---------------------------------------------------------------------------------------------
# augmentation and batches


@pytest.mark.parametrize("seed", range(4))
def test_augmentation_moves_image_and_mask_together(seed):
    image = np.full((S, S, 2), 0.1, np.float32)
    mask = np.zeros((S, S), np.uint8)
    mask[8:20, 10:24] = 3
    image[mask > 0] = 0.9  # the mask drawn on the image, in both channels
    before = (image.copy(), mask.copy())
    out, m = augment_pair(image, mask, np.random.default_rng(seed), rotate_deg=25, scale=0.15, elastic=0.05)
    np.testing.assert_array_equal(image, before[0])  # inputs untouched
    np.testing.assert_array_equal(mask, before[1])
    assert out.shape == image.shape and out.dtype == image.dtype and m.dtype == mask.dtype
    assert set(np.unique(m)) <= {0, 3}  # nearest neighbour: labels stay labels
    assert not np.array_equal(m, mask)  # something moved
    drawn = out[..., 0] > 0.5
    agree = np.mean(drawn == (m > 0))
    dice = 2 * np.sum(drawn & (m > 0)) / (drawn.sum() + (m > 0).sum())
    assert agree > 0.98 and dice > 0.95
    np.testing.assert_allclose(out[..., 0], out[..., 1])


def test_flip_only_mirrors_left_right():
    image = np.random.default_rng(0).random((S, S)).astype(np.float32)
    out, m = augment_pair(image, image > 0.5, np.random.default_rng(0), flip=1.0, rotate_deg=0, scale=0, elastic=0)
    np.testing.assert_allclose(out, image[:, ::-1], atol=1e-6)
    np.testing.assert_array_equal(m, (image > 0.5)[:, ::-1])


def test_dataset_augments_reproducibly_and_not_without_augment(organs):
    x, y = organs(10)
    plain = HeadDataset(x, y, 4, kind="unet", n_classes=2, seed=0, augment=None, shuffle=False)
    xb, yb = plain[0]
    np.testing.assert_array_equal(xb, x[:4]) and np.testing.assert_array_equal(yb, y[:4])
    aug = dict(flip=0.5, rotate_deg=10.0, scale=0.1, elastic=0.02, elastic_sigma=0.08)
    a = HeadDataset(x, y, 4, kind="unet", n_classes=1, seed=3, augment=aug)
    b = HeadDataset(x, y, 4, kind="unet", n_classes=1, seed=3, augment=aug)
    (xa, ya), (xb2, yb2) = a[1], b[1]
    np.testing.assert_array_equal(xa, xb2)
    assert ya.shape == (4, S, S, 1) and set(np.unique(ya)) <= {0.0, 1.0}
    assert len(a) == 3
    np.testing.assert_array_equal(x, organs(10)[0])  # the source arrays are never modified


# ---------------------------------------------------------------------------------------------
# fusion


def _fusion_data(n, seed):
    from scipy.stats import norm

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = norm.sf(rng.normal(1.2 * y, 1.0))  # autoencoder p-values: small when abnormal
    prob = 1 / (1 + np.exp(-rng.normal(1.2 * y - 0.6, 1.0)))  # independent classifier evidence
    return p, prob, y


def test_fusion_beats_either_input_and_round_trips_through_json():
    from sklearn.metrics import roc_auc_score

    fm = FusionModel().fit(*_fusion_data(400, 0))
    assert fm.coef_.shape == (2,) and (fm.coef_ > 0).all()
    p, prob, y = _fusion_data(2000, 1)
    fused = fm.predict_proba(p, prob)
    auc = roc_auc_score(y, fused)
    assert auc > roc_auc_score(y, -p) + 0.03 and auc > roc_auc_score(y, prob) + 0.03
    again = FusionModel.from_dict(json.loads(json.dumps(fm.to_dict())))
    np.testing.assert_allclose(again.predict_proba(p, prob), fused)
    assert fusion_features([0.0], [1.0]).tolist() == [[12.0, pytest.approx(13.8155, abs=1e-3)]]


def test_fusion_errors():
    with pytest.raises(NotFittedError):
        FusionModel().predict_proba([0.5], [0.5])
    with pytest.raises(ConfigError, match="both classes"):
        FusionModel().fit([0.1, 0.2], [0.3, 0.4], [1, 1])
    with pytest.raises(ConfigError):
        FusionModel().fit([0.1, 0.2], [0.3], [0, 1])
