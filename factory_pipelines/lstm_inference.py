"""rul_lstm's inference pass as a lean TensorFlow graph: Keras's numbers with fewer graph operations.

On a CPU, at the batch a prediction asset scores (one window: tens of robots), calling the
ensemble costs about as much in dispatching its ~5,600 graph operations as in arithmetic. Keras's
unrolled LSTM cell spends about 16 operations per time step and member, its input's projection
among them. Here each LSTM layer projects every time step's input in one matrix product before the
loop, and a step is 12 operations (the first, from the zero state, 8). The members stay separate
chains, so TensorFlow still runs them side by side on the cores. For 20 robots the call takes
about a quarter less than the Keras graph; at 200, where arithmetic dominates, about the same
(benchmarks/README.md).

Only the layers `rul_model` builds are written out (LSTM with tanh and sigmoid, Dense with relu or
none, the averaging of members; noise and dropout are off at inference). For any other network,
or if the lean graph disagrees with Keras on a probe batch, `inference_pass` traces Keras's own
call instead: a model never scores through arithmetic that was not checked against its network.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

InferencePass = Callable[[np.ndarray], np.ndarray]

PROBE_TOLERANCE = 1e-4  # largest difference from Keras's own call allowed on the probe batch (outputs ~0-1)


@dataclass(frozen=True, slots=True)
class _Lstm:
    kernel: Any  # tf.Tensor (inputs, 4 units), gates in Keras's order: input, forget, cell, output
    recurrent: Any  # (units, 4 units)
    bias: Any  # (4 units,)
    units: int
    sequences: bool  # return every step's state, not only the last


@dataclass(frozen=True, slots=True)
class _Dense:
    kernel: Any
    bias: Any | None
    relu: bool


_Layer = _Lstm | _Dense


def inference_pass(network: keras.Model) -> InferencePass:
    """The network's inference pass for any batch size, traced once: the lean graph where it applies."""
    lean = lean_pass(network)
    if lean is not None:
        return lean
    log.info("rul_lstm network %s: no lean graph, tracing Keras's own call", network.name)
    return keras_pass(network)


def keras_pass(network: keras.Model) -> InferencePass:
    """Keras's own inference call traced into one graph: what `predict_on_batch` runs, without its Python."""
    import tensorflow as tf

    spec = tf.TensorSpec((None, *network.input_shape[1:]), tf.float32)
    traced = tf.function(lambda x: network(x, training=False)).get_concrete_function(spec)
    return lambda x: traced(tf.convert_to_tensor(x, tf.float32)).numpy()


def lean_pass(network: keras.Model) -> InferencePass | None:
    """The lean graph, or None when the network has a layer it does not write out or it fails the probe."""
    import tensorflow as tf

    members = _member_layers(network)
    if members is None:
        return None
    _, steps, features = network.input_shape
    if steps is None:
        return None
    spec = tf.TensorSpec((None, steps, features), tf.float32)
    graph = tf.function(lambda x: _ensemble(x, members, steps)).get_concrete_function(spec)

    def run(x: np.ndarray) -> np.ndarray:
        return graph(tf.convert_to_tensor(x, tf.float32)).numpy()

    probe = np.random.default_rng(0).normal(size=(3, steps, features)).astype(np.float32)
    difference = float(np.max(np.abs(run(probe) - np.asarray(network(probe, training=False)))))
    if not difference <= PROBE_TOLERANCE:
        log.warning("rul_lstm network %s: lean graph off from Keras by %g on the probe", network.name, difference)
        return None
    return run


def _member_layers(network: keras.Model) -> list[list[_Layer]] | None:
    """Each member's layers as weights (an ensemble averages member models; a lone member is the network)."""
    import keras

    top = [layer for layer in network.layers if not isinstance(layer, keras.layers.InputLayer)]
    members = [layer for layer in top if isinstance(layer, keras.Model)]
    if not members:
        layers = _chain(network)
        return None if layers is None else [layers]
    if top != [*members, top[-1]] or not isinstance(top[-1], keras.layers.Average):
        return None
    chains = [_chain(member) for member in members]
    return None if any(chain is None for chain in chains) else chains  # type: ignore[return-value]


def _chain(model: keras.Model) -> list[_Layer] | None:
    """A member's layers in order, each fed by the one before; None at anything else."""
    import keras
    import tensorflow as tf

    layers: list[_Layer] = []
    previous = None
    rank = 3  # (batch, steps, features) until an LSTM returns its last state only
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            previous = layer
            continue
        if previous is None or layer.input is not previous.output:
            return None  # not a plain chain
        previous = layer
        if isinstance(layer, (keras.layers.GaussianNoise, keras.layers.Dropout)):
            continue  # off at inference
        config = layer.get_config()
        if isinstance(layer, keras.layers.LSTM) and rank == 3:
            plain = (
                config["activation"] == "tanh"
                and config["recurrent_activation"] == "sigmoid"
                and config["use_bias"]
                and not (config["go_backwards"] or config["stateful"] or config["return_state"])
            )
            if not plain:
                return None
            cell = layer.cell
            layers.append(
                _Lstm(
                    tf.constant(cell.kernel.numpy()),
                    tf.constant(cell.recurrent_kernel.numpy()),
                    tf.constant(cell.bias.numpy()),
                    layer.units,
                    bool(config["return_sequences"]),
                )
            )
            rank = 3 if config["return_sequences"] else 2
        elif isinstance(layer, keras.layers.Dense) and rank == 2 and config["activation"] in ("relu", "linear"):
            bias = tf.constant(layer.bias.numpy()) if config["use_bias"] else None
            layers.append(_Dense(tf.constant(layer.kernel.numpy()), bias, config["activation"] == "relu"))
        else:
            return None
    return layers if rank == 2 and layers else None


def _ensemble(x: Any, members: list[list[_Layer]], steps: int) -> Any:
    import tensorflow as tf

    outputs = [_member(x, layers, steps) for layers in members]
    return outputs[0] if len(outputs) == 1 else tf.add_n(outputs) / len(outputs)


def _member(x: Any, layers: list[_Layer], steps: int) -> Any:
    import tensorflow as tf

    batch = tf.shape(x)[0]
    for layer in layers:
        if isinstance(layer, _Dense):
            x = tf.matmul(x, layer.kernel)
            x = x if layer.bias is None else x + layer.bias
            x = tf.nn.relu(x) if layer.relu else x
            continue
        # every step's input projection in one product, then the recurrence step by step
        projected = tf.matmul(tf.reshape(x, (-1, x.shape[-1])), layer.kernel) + layer.bias
        inputs = tf.unstack(tf.reshape(projected, (batch, steps, 4 * layer.units)), axis=1)
        states = []
        state = carry = None
        for step in range(steps):
            z = inputs[step] if state is None else inputs[step] + tf.matmul(state, layer.recurrent)
            gate_in, gate_forget, candidate, gate_out = tf.split(z, 4, axis=-1)
            written = tf.sigmoid(gate_in) * tf.tanh(candidate)
            carry = written if carry is None else tf.sigmoid(gate_forget) * carry + written
            state = tf.sigmoid(gate_out) * tf.tanh(carry)
            if layer.sequences:
                states.append(state)
        x = tf.stack(states, axis=1) if layer.sequences else state
    return x
