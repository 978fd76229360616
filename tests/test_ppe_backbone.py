"""The pretrained EfficientNet-Lite0 backbone of `ppe_vision`: the weights file read without
PyTorch, copied into the Keras layers, and the result still recognising what ImageNet taught it."""

from __future__ import annotations

import collections
import io
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from factory_pipelines import efficientnet_lite as el
from factory_pipelines.ppe_images import load_square_images

if TYPE_CHECKING:
    import keras

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# keras is imported inside the tests, as everywhere else in the suite. Building Keras models in a
# test body (not through Dagster) before tests/test_model_commands.py ran crashed that file's CLI
# tests under pytest's capture; this file sorts after it, like test_ppe_model.py.

PPE_VALID = Path(__file__).resolve().parents[2] / "shared" / "data" / "ppe" / "valid" / "images"
# ImageNet classes a construction-site photo plausibly shows: crane, crash helmet, forklift,
# wheelbarrow, lumbermill, shovel, tractor, trailer truck, garbage truck, harvester, container
# ship, mobile home, hammer.
SITE_CLASSES = {517, 518, 561, 428, 634, 792, 866, 867, 569, 595, 510, 660, 587}


@pytest.fixture(scope="module")
def tensors() -> dict[str, np.ndarray]:
    return el.read_legacy_state_dict(el.weights_path())


def imagenet_classifier(tensors: dict[str, np.ndarray] | None) -> keras.Model:
    """The backbone plus the checkpoint's 1000-class layer (pretrained when `tensors`)."""
    import keras
    from keras import layers

    pixels = keras.Input((224, 224, 3))
    pooled = layers.GlobalAveragePooling2D()(el.build_features(pixels)[32])
    model = keras.Model(pixels, layers.Dense(1000, name="imagenet")(pooled))
    if tensors is not None:
        el.load_pretrained(model, tensors)
        model.get_layer("imagenet").set_weights([tensors["_fc.weight"].T, tensors["_fc.bias"]])
    return model


def test_every_backbone_layer_takes_its_checkpoint_tensor(tensors: dict[str, np.ndarray]) -> None:
    import keras

    pixels = keras.Input((64, 64, 3))
    features = el.build_features(pixels)
    model = keras.Model(pixels, features)

    loaded = el.load_pretrained(model, tensors)

    assert {stride: tuple(f.shape[1:]) for stride, f in features.items()} == {
        8: (8, 8, 40),
        16: (4, 4, 112),
        32: (2, 2, 1280),
    }
    # stem conv + bn, block 0 without expansion (4), 15 blocks with it (6 each), head conv + bn
    assert loaded == 2 + 4 + 15 * 6 + 2
    stem = model.get_layer("lite0._conv_stem").get_weights()[0]
    np.testing.assert_array_equal(stem, tensors["_conv_stem.weight"].transpose(2, 3, 1, 0))
    depthwise = model.get_layer("lite0._blocks.3._depthwise_conv").get_weights()[0]
    assert depthwise.shape == (5, 5, 144, 1)
    np.testing.assert_array_equal(
        depthwise[:, :, :, 0], tensors["_blocks.3._depthwise_conv.weight"][:, 0].transpose(1, 2, 0)
    )


def test_reader_refuses_anything_but_tensors() -> None:
    stream = io.BytesIO()
    for header in (1, 1001, {}):
        pickle.dump(header, stream)
    pickle.dump(collections.Counter(a=1), stream)  # a class the weights file has no business holding
    stream.seek(0)

    with pytest.raises(pickle.UnpicklingError, match="collections.Counter"):
        el.read_legacy_state_dict(stream)


def test_ported_network_still_sees_construction_sites(tensors: dict[str, np.ndarray]) -> None:
    import keras

    paths = sorted(str(p) for p in PPE_VALID.glob("*.jpg"))[:60]
    if not paths:
        raise FileNotFoundError(f"{PPE_VALID} is missing: this test reads the shared PPE images")
    frames = load_square_images(paths, 224).astype(np.float32)

    def site_share(model: keras.Model) -> float:
        top5 = np.argsort(-model.predict(frames, verbose=0), axis=1)[:, :5]
        return float(np.mean([bool(SITE_CLASSES & set(row.tolist())) for row in top5]))

    keras.utils.set_random_seed(0)
    pretrained, untrained = site_share(imagenet_classifier(tensors)), site_share(imagenet_classifier(None))

    # a wrong transpose, padding or input scale scrambles the classes; the port keeps them
    assert pretrained >= 0.25, pretrained
    assert untrained <= 0.1, untrained


def test_only_the_last_blocks_fine_tune_and_batch_norms_never(tensors: dict[str, np.ndarray]) -> None:
    import keras

    pixels = keras.Input((64, 64, 3))
    model = keras.Model(pixels, el.build_features(pixels))
    el.load_pretrained(model, tensors)

    el.freeze(model, tuned_blocks=5)

    trainable = {layer.name for layer in model.layers if layer.name.startswith("lite0.") and layer.trainable}
    assert "lite0._conv_stem" not in trainable and "lite0._blocks.10._project_conv" not in trainable
    assert {"lite0._blocks.11._expand_conv", "lite0._blocks.15._project_conv"} <= trainable
    assert not any("_bn" in name for name in trainable)
    tuned_blocks = {int(name.split(".")[2]) for name in trainable}
    assert tuned_blocks == set(range(11, 16))
