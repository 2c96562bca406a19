"""Input that every method gets through one gate: numpy and float64 converted exactly, a missing batch axis, a
wrong feature width, integer inputs and fractional labels refused in words that name the expected shape and the
fix; a cfg.json whose sizes differ from the weights refused naming both files. Run over every registered method."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_methods import (
    CLASSIFIERS,
    COVERED_ELSEWHERE,
    IN_FEATURES,
    LABELS,
    TABULAR,
    TARGETS,
    TINY,
    X,
    data_for,
    fitted,
    make,
)

from credo.data.base import ArrayDataset
from credo.uncertainty import METHODS, CheckpointError, Prediction, UncertaintyMethod

ALL = TABULAR


def test_every_method_is_covered():
    assert set(TINY) | set(COVERED_ELSEWHERE) == set(METHODS) and not set(TINY) & set(COVERED_ELSEWHERE)
    assert all(make(name).is_classifier == (name in CLASSIFIERS) for name in ALL)


def predict_seeded(method: UncertaintyMethod, x) -> Prediction:
    torch.manual_seed(11)  # MC dropout and MFVI sample; the same seed draws the same samples
    return method.predict(x)


def assert_same_prediction(a: Prediction, b: Prediction) -> None:
    for name in ("uncertainty", "probs", "mean", "std", "quantiles", "quantile_levels"):
        u, v = getattr(a, name), getattr(b, name)
        assert (u is None) == (v is None), name
        if u is not None:
            assert u.dtype == v.dtype and torch.equal(u, v), name


@pytest.mark.parametrize("name", ALL)
def test_numpy_and_float64_inputs_predict_exactly_as_float32_tensors(name):
    method = fitted(name)
    x = X[:7]
    reference = predict_seeded(method, x)
    assert reference.uncertainty.dtype == torch.float32
    assert_same_prediction(
        predict_seeded(method, x.double()), reference
    )  # float32 -> float64 -> float32 is exact
    assert_same_prediction(predict_seeded(method, x.numpy()), reference)
    assert_same_prediction(predict_seeded(method, x.double().numpy()), reference)


@pytest.mark.parametrize("name", ALL)
def test_one_example_without_its_batch_axis_is_refused_with_the_fix(name):
    with pytest.raises(ValueError, match=r"predict got one example of shape \(6,\); pass a batch shaped "
                       r"\[B, 6\] \(x\[None\] for one example\)"):  # fmt: skip
        fitted(name).predict(X[0])
    assert len(fitted(name).predict(X[0][None])) == 1


@pytest.mark.parametrize("name", ALL)
def test_a_wrong_feature_width_is_refused_naming_both_widths(name):
    with pytest.raises(ValueError, match=r"shape \(4, 5\), 5 values per example.*\[B, 6\]"):
        fitted(name).predict(torch.randn(4, IN_FEATURES - 1))


@pytest.mark.parametrize("name", ALL)
def test_integer_and_non_finite_inputs_are_refused(name):
    method = fitted(name)
    with pytest.raises(ValueError, match="dtype int64; pass floating-point values"):
        method.predict(torch.ones(3, IN_FEATURES, dtype=torch.long))
    with pytest.raises(ValueError, match=r"x.float\(\) / 255"):
        method.predict(np.ones((3, IN_FEATURES), dtype=np.uint8))
    with pytest.raises(ValueError, match="NaN or infinite"):
        method.predict(torch.full((3, IN_FEATURES), float("nan")))
    with pytest.raises(ValueError, match="NaN or infinite"):  # finite in float64, infinite in float32
        method.predict(torch.full((3, IN_FEATURES), 1e300, dtype=torch.float64))
    with pytest.raises(TypeError, match="torch.Tensor or numpy array"):
        method.predict(X[:3].tolist())


def test_examples_of_the_right_size_in_another_shape_are_reshaped():
    method = fitted("softmax")
    assert_same_prediction(predict_seeded(method, X[:4].reshape(4, 2, 3)), predict_seeded(method, X[:4]))


def final_state(name: str, x, y) -> dict[str, torch.Tensor]:
    method = make(name)
    method.fit(ArrayDataset(x, y).loader(32, shuffle=True), ArrayDataset(x, y).loader(32))
    return method.model.state_dict()


@pytest.mark.parametrize("name", ALL)
def test_float64_inputs_and_integer_valued_float_labels_train_exactly_as_float32_and_int64(name):
    y = LABELS if name in CLASSIFIERS else TARGETS
    reference = final_state(name, X, y)
    y_converted = y.double()  # class labels 0., 1., 2. or float64 regression targets
    for k, v in final_state(name, X.double(), y_converted).items():
        assert v.dtype == reference[k].dtype and torch.equal(v, reference[k]), k


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_fractional_float_labels_are_refused(name):
    y = LABELS.float()
    y[5] = 0.5
    with pytest.raises(
        ValueError, match=r"labels must be integer class indices 0..2, got float values like 0.5"
    ):
        make(name).fit(ArrayDataset(X, y).loader(32), data_for(name).loader(32))


@pytest.mark.parametrize("bad", [3, -1])
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_labels_outside_the_classes_are_refused_naming_the_range(name, bad):
    y = LABELS.clone()
    y[7] = bad
    lo, hi = min(bad, int(LABELS.min())), max(bad, int(LABELS.max()))
    with pytest.raises(
        ValueError, match=rf"training batch 0 has labels in \[{lo}, {hi}\] but the model has 3"
    ):
        make(name).fit(ArrayDataset(X, y).loader(32), data_for(name).loader(32))


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_one_hot_labels_are_refused_with_the_argmax_fix(name):
    onehot = torch.nn.functional.one_hot(LABELS, 3).float()
    with pytest.raises(
        ValueError, match=r"labels of shape \(32, 3\); pass class indices shaped \[B\].*argmax"
    ):
        make(name).fit(ArrayDataset(X, onehot).loader(32), data_for(name).loader(32))


@pytest.mark.parametrize("name", ALL)
def test_a_wrong_feature_width_in_fit_is_refused_naming_both_widths(name):
    method = make(name)
    data = data_for(name)
    with pytest.raises(
        ValueError, match=r"5 values per example, but the model takes batches shaped \[B, 6\]"
    ):
        method.fit(ArrayDataset(data.x[:, :5], data.y).loader(32), data.loader(32))


def edit_config(directory, **backbone) -> None:
    path = directory / "cfg.json"
    meta = json.loads(path.read_text())
    meta["config"]["backbone"].update(backbone)
    if "target_shape" in meta["config"] and "num_outputs" in backbone:
        meta["config"]["target_shape"] = None
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("name", ALL)
def test_a_config_whose_sizes_differ_from_the_weights_names_both_files(name, tmp_path):
    fitted(name).save(tmp_path)
    edit_config(tmp_path, in_shape=[IN_FEATURES + 2])
    message = (
        r"cfg.json and .*model.safetensors do not belong together: cfg.json says in_shape \(8,\) but "
        r"model.safetensors holds weights for 6 inputs; the two files come from different saves"
    )
    with pytest.raises(CheckpointError, match=message):
        UncertaintyMethod.load(tmp_path)


def test_a_config_with_another_number_of_outputs_names_the_tensor_and_both_shapes(tmp_path):
    fitted("softmax").save(tmp_path)
    edit_config(tmp_path, num_outputs=4)
    message = r"num_outputs 4\) builds head.weight with shape \[4, 8\] but model.safetensors holds \[3, 8\]"
    with pytest.raises(CheckpointError, match=message):
        UncertaintyMethod.load(tmp_path)
