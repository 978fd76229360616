"""The lean inference graph against Keras's own call, on networks built the way `rul_model.fit` builds them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from factory_pipelines import lstm_inference
from factory_pipelines import rul_model as rm

WINDOW, FEATURES = 12, 5
SMALL = rm.RulParams(window=WINDOW, lstm_units=16, dense_units=8, dropout=0.2, unroll=False, seed=1)


def network(params: rm.RulParams) -> keras.Model:
    """An untrained network of `params` (fresh weights: the graph's arithmetic, not the fit, is under test)."""
    keras.utils.set_random_seed(params.seed)
    members = [rm._build_member(WINDOW, FEATURES, params) for _ in range(params.ensemble_size)]
    return rm._ensemble(members, WINDOW, FEATURES)


def windows(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, WINDOW, FEATURES))  # float64, as the platform builds them


@pytest.mark.parametrize(
    "params",
    [
        pytest.param(SMALL, id="three members, two LSTM layers (the default shape)"),
        pytest.param(replace(SMALL, ensemble_size=1), id="one member"),
        pytest.param(replace(SMALL, lstm_layers=3, unroll=True), id="three LSTM layers, unrolled"),
        pytest.param(replace(SMALL, input_noise=0.3), id="input noise (off at inference)"),
    ],
)
def test_lean_graph_gives_keras_numbers_for_any_batch(params: rm.RulParams) -> None:
    net = network(params)
    lean = lstm_inference.lean_pass(net)
    assert lean is not None, "rul_model's own layers must get the lean graph"
    for batch in (1, 7, 40):
        x = windows(batch, seed=batch)
        expected = np.asarray(net.predict_on_batch(x.astype(np.float32)))
        out = lean(x)
        assert out.shape == expected.shape == (batch, 1)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(lean(x), out)  # dropout and noise stay off


def test_a_layer_it_does_not_write_out_gets_keras_own_call() -> None:
    net = network(replace(SMALL, conv_filters=4))  # a causal convolution before the LSTMs
    assert lstm_inference.lean_pass(net) is None
    x = windows(9)
    expected = np.asarray(net.predict_on_batch(x.astype(np.float32)))
    np.testing.assert_allclose(lstm_inference.inference_pass(net)(x), expected, rtol=1e-5, atol=1e-6)


class _ShiftedLstm(keras.layers.LSTM):
    """An LSTM by type whose call is not the plain cell's: only the probe can tell."""

    def call(
        self, sequences: object, initial_state: object = None, mask: object = None, training: bool = False
    ) -> object:
        return super().call(sequences, initial_state=initial_state, mask=mask, training=training) + 0.5


def test_the_probe_refuses_a_lean_graph_that_disagrees_with_keras(caplog: pytest.LogCaptureFixture) -> None:
    inputs = keras.Input(shape=(WINDOW, FEATURES))
    hidden = _ShiftedLstm(8)(inputs)
    net = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Dense(4, activation="relu")(hidden)))
    with caplog.at_level("WARNING", logger=lstm_inference.__name__):
        assert lstm_inference.lean_pass(net) is None
    assert "off from Keras" in caplog.text
    x = windows(6)
    expected = np.asarray(net.predict_on_batch(x.astype(np.float32)))
    np.testing.assert_allclose(lstm_inference.inference_pass(net)(x), expected, rtol=1e-5, atol=1e-6)


def test_a_network_saved_and_loaded_keeps_the_lean_graph(tmp_path: Path) -> None:
    """What a prediction asset scores with: the network as `RulModel.load` reads it back from its file."""
    net = network(SMALL)
    path = tmp_path / "network.keras"
    net.save(path)
    loaded = keras.models.load_model(path, compile=False)
    lean = lstm_inference.lean_pass(loaded)
    assert lean is not None
    x = windows(20)
    np.testing.assert_allclose(lean(x), np.asarray(net.predict_on_batch(x.astype(np.float32))), rtol=1e-5, atol=1e-6)
