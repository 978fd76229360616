"""The `ppe_vision` model: hard-hat and safety-vest compliance from a camera frame.

A fully-convolutional Keras network on EfficientNet-Lite0 (ImageNet-pretrained, shipped inside an
installed package: `efficientnet_lite`) turns a frame into probability maps at 1/8 of its
resolution (hard hat, no hard hat, safety vest, no safety vest, person, machinery, vehicle) and a
frame head into whole-frame probabilities. The maps learn from the YOLO boxes of the labelled frames
(each box paints its cells), so every labelled box is a training signal, not just the frame's
verdict. The backbone stays as shipped by default: on 500 frames, fine-tuning it lost more than it
gained (benchmarks/results/models_ppe.md); a small pyramid and the heads learn on top of it. Trained
on random zoomed/flipped crops, it is run on the whole frame at inference, where:

- the frame's violation, no-hard-hat and no-vest probabilities are the mean of the frame head's and
  of the highest cell of each "no" map (`frame_score`: "mean", "head" or "maps"); the verdict
  compares them with a threshold chosen at training time on held-out training frames
  (`steady_threshold`); two networks (`members`) are trained from different seeds, each holding
  out its own slice for the threshold, and the model averages their outputs: one network's F1 moves
  by up to 0.05 with its seed, the average's stays near the better one's;
- regions are the connected blobs of the person map, each with its own hard-hat and vest verdict
  from the maps inside it (and blobs of a "no" map that no person blob covers);
- a labelled box is classified (the crop classifier that `crop_accuracy` scores) as the PPE map
  with the highest mean inside the box.

Plain functions and one model class, no Dagster. TensorFlow is imported only where a network is
built, trained or loaded.
"""

from __future__ import annotations

import base64
import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc
import numpy as np
import pandas as pd  # the pyfunc boundary: MLflow hands frames over as pandas
import polars as pl
from scipy import ndimage, stats

from factory_pipelines import efficientnet_lite
from factory_pipelines.model_registry import pinned_requirements
from factory_pipelines.ppe_images import (
    FrameInput,
    LabelledFrames,
    PpeClass,
    dataset_folders,
    decode_image,
    held_out_frame_ids,
    load_square_images,
    read_yolo_folders,
    resize_square,
    synthetic_camera_frame,
)

if TYPE_CHECKING:
    import keras

MODEL_NAME = "ppe_vision"
PRIMARY_METRIC = "f1"
HIGHER_IS_BETTER = True

# Output channels of the network, in order.
MAP_CLASSES: tuple[PpeClass, ...] = (
    PpeClass.HARDHAT,
    PpeClass.NO_HARDHAT,
    PpeClass.SAFETY_VEST,
    PpeClass.NO_SAFETY_VEST,
    PpeClass.PERSON,
    PpeClass.MACHINERY,
    PpeClass.VEHICLE,
)
CROP_CLASSES: tuple[PpeClass, ...] = MAP_CLASSES[:4]  # what the crop classifier tells apart
CHANNEL = {cls: index for index, cls in enumerate(MAP_CLASSES)}
OUTPUT_STRIDE = 8
TARGET_STRIDE = 4  # targets are painted at this stride, then pooled to OUTPUT_STRIDE after augmentation
# Share of a box's width/height that paints target cells: people overlap, so only the middle of a
# person box counts as "person"; PPE boxes are small and tight, so nearly all of them counts.
PAINTED_SHARE: dict[PpeClass, tuple[float, float]] = {
    PpeClass.HARDHAT: (0.8, 0.8),
    PpeClass.NO_HARDHAT: (0.8, 0.8),
    PpeClass.SAFETY_VEST: (0.8, 0.8),
    PpeClass.NO_SAFETY_VEST: (0.8, 0.8),
    PpeClass.PERSON: (0.5, 0.7),
    PpeClass.MACHINERY: (0.8, 0.8),
    PpeClass.VEHICLE: (0.8, 0.8),
}
# What the frame head says about a whole frame (or a training crop), in order. Besides the verdicts,
# it learns what is in the picture: a frame of machinery with a driver in the cab is labelled
# "person" but is no violation, and only the whole picture tells the two apart.
FRAME_OUTPUTS: tuple[str, ...] = ("violation", "no_hardhat", "no_vest", "person", "hardhat", "vest", "machinery")
FRAME_SCORES: tuple[str, ...] = ("mean", "head", "maps")  # where a frame's probabilities come from
PRESENCE_LEVEL = 0.2  # a crop holds a class when its pooled target reaches this (a far head covers 1/4 cell)
WORN, MISSING, UNKNOWN = "worn", "missing", "unknown"
CONFIG_FILE = "ppe_config.json"
NETWORK_FILE = "ppe_network.keras"
PRETRAINED_BACKBONE, SCRATCH_BACKBONE = "efficientnet_lite0", "scratch"


@dataclass(frozen=True)
class PpeParams:
    """Hyper-parameters of `ppe_vision` (all shown in the launchpad)."""

    image_size: int = 320  # side (px) a whole frame is resized to for inference
    crop_size: int = 256  # side (px) of the random training crops (cost grows with its square)
    zoom_min: float = 0.8  # training crops see the frame at zoom_min..zoom_max x the inference scale
    zoom_max: float = 1.4
    backbone: str = PRETRAINED_BACKBONE  # "efficientnet_lite0" (ImageNet-pretrained, shipped) or "scratch"
    tuned_blocks: int = 0  # the pretrained backbone's last N of 16 blocks fine-tune too; 0: it stays as shipped
    base_filters: int = 32  # width unit of the feature pyramid (and of the scratch backbone's stages)
    epochs: int = 45  # passes over the training frames
    batch_size: int = 16  # crops per gradient step
    learning_rate: float = 1e-3  # Adam's initial rate, cosine-decayed to zero over the epochs
    positive_weight: float = 3.0  # weight of a painted (positive) cell in the loss, against 1 for background
    frame_weight: float = 0.2  # weight of the frame head's loss against the maps' loss
    dropout: float = 0.3  # dropout before the frame head's output layer
    frame_score: str = "mean"  # frame verdict from the frame "head", the "maps" (their top cell), or the "mean" of both
    smoothing_cells: int = 2  # frame score = max of the map averaged over this many cells square
    calibration_fraction: float = 0.2  # share of training frames (clips whole) held out for the threshold (0: none)
    threshold: float = 0.5  # verdict threshold used when calibration_fraction is 0
    violation_prior: float = 0.5  # share of violating frames the threshold is tuned for (0: as in the training data)
    mirror_at_inference: bool = True  # average each frame's outputs with those of its mirror image
    region_threshold: float = 0.4  # person-map level that outlines a person region
    members: int = 2  # networks trained (seeds seed, seed+1, ...), each holding out its own threshold slice; averaged
    seed: int = 42  # seeds the split, the crops and the initial weights

    def __post_init__(self) -> None:
        if self.frame_score not in FRAME_SCORES:
            raise ValueError(f"frame_score must be one of {FRAME_SCORES}, got {self.frame_score!r}")
        if self.members < 1:
            raise ValueError(f"members must be 1 or more, got {self.members}")
        if self.calibration_fraction * self.members > 0.6:
            raise ValueError(
                f"members={self.members} hold out calibration_fraction={self.calibration_fraction} each: "
                "their slices must make up at most 0.6 of the frames together"
            )


# ---- data -----------------------------------------------------------------------------------


def load_frames(data_dir: Path) -> LabelledFrames:
    """The labelled frames of a YOLO folder, or of its split folders (train, train_subset, valid)."""
    return read_yolo_folders(dataset_folders(Path(data_dir)))


def split_frames(
    data: LabelledFrames, validation_fraction: float = 0.2, seed: int = 42
) -> tuple[LabelledFrames, LabelledFrames]:
    """A seeded train/validation split, stratified on the frame verdict so both keep its share, that
    keeps each clip on one side (`ppe_images.source_group`)."""
    counts = {verdict: int(data.frames["violation"].eq(verdict).sum()) for verdict in (False, True)}
    room = {verdict: int(round(count * validation_fraction)) for verdict, count in counts.items()}
    held = held_out_frame_ids(data.frames, room, seed)
    kept = [frame_id for frame_id in data.frames["frame_id"] if frame_id not in held]
    validation = [frame_id for frame_id in data.frames["frame_id"] if frame_id in held]
    return data.select(kept), data.select(validation)


def calibration_slices(data: LabelledFrames, fraction: float, count: int, seed: int) -> list[LabelledFrames]:
    """`count` disjoint held-out slices of `fraction` of the frames each, clips whole, stratified.

    The first is the slice `split_frames(data, fraction, seed)` holds out, so one member calibrates
    exactly as a single network does.
    """
    slices: list[LabelledFrames] = []
    rest = data
    for index in range(count):
        rest, held_out = split_frames(rest, fraction / (1.0 - index * fraction), seed + index)
        slices.append(held_out)
    return slices


def target_maps(boxes: np.ndarray, grid: int) -> np.ndarray:
    """(grid, grid, len(MAP_CLASSES)) maps: 1 on cells whose centre lies in the painted part of a box.

    A box too small to cover any cell centre still paints the cell holding its centre, so far-away
    heads are not lost.
    """
    maps = np.zeros((grid, grid, len(MAP_CLASSES)), np.float32)
    centres = (np.arange(grid, dtype=np.float32) + 0.5) / grid
    for class_id, x, y, w, h in boxes:
        cls = PpeClass(int(class_id))
        if cls not in CHANNEL:
            continue
        share_w, share_h = PAINTED_SHARE[cls]
        cols = np.abs(centres - x) <= w * share_w / 2
        rows = np.abs(centres - y) <= h * share_h / 2
        channel = maps[:, :, CHANNEL[cls]]
        channel[np.ix_(rows, cols)] = 1.0
        channel[min(int(y * grid), grid - 1), min(int(x * grid), grid - 1)] = 1.0
    return maps


# ---- the network ----------------------------------------------------------------------------


def build_network(params: PpeParams) -> keras.Model:
    """A backbone down to 1/32 (EfficientNet-Lite0 as shipped, or conv stages from scratch), a small
    feature pyramid back up to 1/8 where the class maps come out, and a frame head on the pooled
    1/32 features and map peaks.

    Any input side that is a multiple of 32 works: inference runs on whole frames, training on crops.
    Outputs a dict: "maps" (N, H/8, W/8, len(MAP_CLASSES)) and "frame" (N, len(FRAME_OUTPUTS)).
    """
    import keras
    from keras import layers

    def conv(x: Any, filters: int, strides: int = 1, kernel: int = 3) -> Any:
        x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        return layers.ReLU()(x)

    def up_and_merge(coarse: Any, fine: Any, filters: int) -> Any:
        coarse = layers.UpSampling2D(interpolation="bilinear")(conv(coarse, filters, kernel=1))
        merged = layers.Add()([coarse, conv(fine, filters, kernel=1)])
        return conv(merged, filters)

    width = params.base_filters
    frames = keras.Input((None, None, 3), name="frames")
    if params.backbone == PRETRAINED_BACKBONE:
        features = efficientnet_lite.build_features(frames)
        eighth, sixteenth, thirty_second = features[8], features[16], features[32]
    elif params.backbone == SCRATCH_BACKBONE:
        x = layers.Rescaling(1.0 / 255)(frames)
        x = conv(x, width, 2)
        x = conv(x, 2 * width, 2)
        x = conv(x, 2 * width)
        x = conv(x, 4 * width, 2)
        eighth = conv(x, 4 * width)
        x = conv(eighth, 8 * width, 2)
        sixteenth = conv(x, 8 * width)
        x = conv(sixteenth, 8 * width, 2)
        x = conv(x, 8 * width)
        thirty_second = conv(x, 8 * width)
    else:
        raise ValueError(f"backbone must be {PRETRAINED_BACKBONE!r} or {SCRATCH_BACKBONE!r}, not {params.backbone!r}")
    x = up_and_merge(thirty_second, sixteenth, 8 * width)
    x = up_and_merge(x, eighth, 4 * width)
    maps = layers.Conv2D(len(MAP_CLASSES), 1, activation="sigmoid", name="maps")(x)
    pooled = layers.Concatenate()(
        [
            layers.GlobalAveragePooling2D()(thirty_second),
            layers.GlobalMaxPooling2D()(thirty_second),
            layers.GlobalMaxPooling2D()(maps),
        ]
    )
    hidden = layers.Dropout(params.dropout, seed=params.seed)(layers.Dense(8 * width, activation="relu")(pooled))
    frame = layers.Dense(len(FRAME_OUTPUTS), activation="sigmoid", name="frame")(hidden)
    network = keras.Model(frames, {"maps": maps, "frame": frame}, name=MODEL_NAME)
    if params.backbone == PRETRAINED_BACKBONE:
        efficientnet_lite.load_pretrained(network)
        efficientnet_lite.freeze(network, tuned_blocks=params.tuned_blocks)
    return network


def averaged_network(members: Sequence[keras.Model]) -> keras.Model:
    """One network whose maps and frame head are the mean of its members' (each runs in full)."""
    import keras
    from keras import layers

    frames = keras.Input((None, None, 3), name="frames")
    # uncompiled views of the members (the same layers, named apart): a compiled member inside a
    # saved model would need its custom loss to load
    views = [
        keras.Model(member.input, member.output, name=f"{MODEL_NAME}_member_{index}")
        for index, member in enumerate(members, start=1)
    ]
    outputs = [view(frames) for view in views]
    maps = layers.Average(name="maps")([output["maps"] for output in outputs])
    frame = layers.Average(name="frame")([output["frame"] for output in outputs])
    return keras.Model(frames, {"maps": maps, "frame": frame}, name=MODEL_NAME)


def weighted_map_loss(positive_weight: float) -> Callable[[Any, Any], Any]:
    """Binary cross-entropy per cell and map, painted cells weighted up (they are a small minority)."""
    from keras import ops

    def loss(target: Any, predicted: Any) -> Any:
        predicted = ops.clip(predicted, 1e-6, 1.0 - 1e-6)
        per_cell = -(positive_weight * target * ops.log(predicted) + (1.0 - target) * ops.log(1.0 - predicted))
        return ops.mean(per_cell)

    return loss


def _augmented_crops(
    images: np.ndarray, targets: np.ndarray, params: PpeParams
) -> Any:  # a tf.data.Dataset of (crop, target) batches, endless
    """Random zoom (in or out), offset and mirror, with mild brightness/contrast/saturation changes.

    A crop at zoom 1 sees the frame at the scale inference sees it (`image_size`); crops reaching
    past the frame are padded with grey. Targets are resampled with the same box and pooled to
    the output stride, so a cell's target is the painted share of it.
    """
    import tensorflow as tf

    crop, out = params.crop_size, params.crop_size // OUTPUT_STRIDE
    base_fraction = params.crop_size / params.image_size
    n = images.shape[0]

    def frame_labels(crop_target: Any) -> Any:
        present = tf.cast(tf.reduce_max(crop_target, axis=(0, 1)) >= PRESENCE_LEVEL, tf.float32)
        channel = {cls: present[index] for cls, index in CHANNEL.items()}
        no_hardhat, no_vest = channel[PpeClass.NO_HARDHAT], channel[PpeClass.NO_SAFETY_VEST]
        by_name = {
            "violation": tf.maximum(no_hardhat, no_vest),
            "no_hardhat": no_hardhat,
            "no_vest": no_vest,
            "person": channel[PpeClass.PERSON],
            "hardhat": channel[PpeClass.HARDHAT],
            "vest": channel[PpeClass.SAFETY_VEST],
            "machinery": tf.maximum(channel[PpeClass.MACHINERY], channel[PpeClass.VEHICLE]),
        }
        return tf.stack([by_name[name] for name in FRAME_OUTPUTS])

    def one(index: Any, seed: Any) -> tuple[Any, Any]:
        seeds = tf.random.split(seed, 6)
        zoom = tf.random.stateless_uniform([], seeds[0], params.zoom_min, params.zoom_max)
        fraction = base_fraction / zoom
        offset = tf.random.stateless_uniform([2], seeds[1], 0.0, 1.0) * (1.0 - fraction)
        y0, x0 = offset[0], offset[1]
        x_start, x_end = x0, x0 + fraction
        mirror = tf.random.stateless_uniform([], seeds[2]) < 0.5
        x_start, x_end = tf.where(mirror, x_end, x_start), tf.where(mirror, x_start, x_end)
        box = tf.stack([y0, x_start, y0 + fraction, x_end])[None]
        image = tf.cast(tf.gather(images_tensor, index), tf.float32)[None]
        crop_image = tf.image.crop_and_resize(image, box, [0], [crop, crop], extrapolation_value=127.0)[0]
        target = tf.gather(targets_tensor, index)[None]
        crop_target = tf.image.crop_and_resize(target, box, [0], [2 * out, 2 * out], extrapolation_value=0.0)
        crop_target = tf.nn.avg_pool2d(crop_target, 2, 2, "VALID")[0]
        pixels = crop_image / 255.0
        pixels = tf.image.stateless_random_brightness(pixels, 0.12, seeds[3])
        pixels = tf.image.stateless_random_contrast(pixels, 0.75, 1.25, seeds[4])
        pixels = tf.image.stateless_random_saturation(pixels, 0.7, 1.3, seeds[5])
        targets = {"maps": crop_target, "frame": frame_labels(crop_target)}
        return tf.clip_by_value(pixels, 0.0, 1.0) * 255.0, targets

    images_tensor = tf.constant(images)
    targets_tensor = tf.constant(targets)
    indices = tf.data.Dataset.range(n).shuffle(n, seed=params.seed, reshuffle_each_iteration=True).repeat()
    seeds = tf.data.Dataset.counter().map(lambda i: tf.stack([tf.cast(params.seed, tf.int64), i]))
    pairs = tf.data.Dataset.zip((indices, seeds)).map(one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return pairs.batch(params.batch_size, drop_remainder=True).prefetch(2)


def _train_network(
    data: LabelledFrames, params: PpeParams, progress: Callable[[str], None] | None
) -> tuple[keras.Model, float]:
    """The fitted network and the seconds its training took (image loading excluded)."""
    import keras

    keras.utils.set_random_seed(params.seed)
    load_size = _multiple_of(params.image_size * max(params.zoom_max, 1.0), TARGET_STRIDE * 2)
    images = load_square_images(data.frames["image_path"].to_list(), load_size)
    grid = load_size // TARGET_STRIDE
    targets = np.stack([target_maps(boxes, grid) for boxes in data.boxes_by_frame()])
    dataset = _augmented_crops(images, targets, params)
    steps = max(1, math.ceil(data.n_frames / params.batch_size))
    network = build_network(params)
    schedule = keras.optimizers.schedules.CosineDecay(params.learning_rate, decay_steps=steps * params.epochs)
    network.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss={"maps": weighted_map_loss(params.positive_weight), "frame": keras.losses.BinaryCrossentropy()},
        loss_weights={"maps": 1.0, "frame": params.frame_weight},
    )
    callbacks = []
    if progress is not None:

        def report(epoch: int, logs: dict[str, float] | None) -> None:
            progress(f"epoch {epoch + 1}/{params.epochs}: loss {(logs or {}).get('loss', float('nan')):.4f}")

        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=report))
    started = time.perf_counter()
    network.fit(dataset, epochs=params.epochs, steps_per_epoch=steps, verbose=0, callbacks=callbacks)
    return network, time.perf_counter() - started


def _multiple_of(value: float, step: int) -> int:
    return max(step, int(round(value / step)) * step)


# ---- verdicts ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PersonRegion:
    """One person (or one unexplained violation blob) in a frame, with its own PPE verdicts."""

    box: tuple[float, float, float, float]  # x_min, y_min, x_max, y_max as fractions of the frame
    person_score: float
    hardhat_probability: float
    no_hardhat_probability: float
    vest_probability: float
    no_vest_probability: float
    hardhat: str  # WORN, MISSING or UNKNOWN
    vest: str


@dataclass(frozen=True, slots=True)
class FrameVerdict:
    """The model's answer for one frame."""

    violation_probability: float
    violation: bool
    no_hardhat_probability: float
    no_hardhat: bool
    no_vest_probability: float
    no_vest: bool
    threshold: float
    regions: tuple[PersonRegion, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class NetworkOutput:
    maps: np.ndarray  # (N, H/8, W/8, len(MAP_CLASSES)) probabilities
    frame: np.ndarray  # (N, len(FRAME_OUTPUTS)) probabilities of the frame head


@dataclass(frozen=True, slots=True)
class FrameScores:
    violation: np.ndarray
    no_hardhat: np.ndarray
    no_vest: np.ndarray


@dataclass
class PpeModel:
    """The trained network with what turns its maps into verdicts."""

    network: keras.Model
    params: PpeParams
    threshold: float
    calibration: dict[str, float] = field(default_factory=dict)  # figures from choosing the threshold

    # -- maps and scores --

    def frame_batch(self, images: Sequence[FrameInput]) -> np.ndarray:
        """Frames (arrays, JPEG/PNG bytes or paths) as one (N, S, S, 3) batch at the inference size."""
        size = self.params.image_size
        batch = np.zeros((len(images), size, size, 3), np.uint8)
        for index, image in enumerate(images):
            batch[index] = resize_square(decode_image(image), size)
        return batch

    def predict_batch(self, batch: np.ndarray, chunk: int = 16) -> NetworkOutput:
        """Maps and frame-head probabilities for a (N, S, S, 3) batch (averaged with its mirror image
        when `params.mirror_at_inference`: a cheap, steady gain for a network this small)."""
        maps, frame = [], []
        for start in range(0, len(batch), chunk):
            part = batch[start : start + chunk].astype(np.float32)
            output = self.network.predict_on_batch(part)
            part_maps, part_frame = np.asarray(output["maps"]), np.asarray(output["frame"])
            if self.params.mirror_at_inference:
                mirrored = self.network.predict_on_batch(part[:, :, ::-1])
                part_maps = (part_maps + np.asarray(mirrored["maps"])[:, :, ::-1]) / 2
                part_frame = (part_frame + np.asarray(mirrored["frame"])) / 2
            maps.append(part_maps)
            frame.append(part_frame)
        if not maps:
            grid = self.params.image_size // OUTPUT_STRIDE
            return NetworkOutput(np.zeros((0, grid, grid, len(MAP_CLASSES))), np.zeros((0, len(FRAME_OUTPUTS))))
        return NetworkOutput(maps=np.concatenate(maps), frame=np.concatenate(frame))

    def scores(self, output: NetworkOutput) -> FrameScores:
        """Per frame: violation, no-hard-hat and no-vest probabilities, from the head, the maps or both.

        The head sees the whole frame and misses one bare head in a crowd; the maps' top cell finds
        it but also fires on a lone ambiguous patch. Their mean ranks frames better than either on
        all three development splits (benchmarks/results/models_ppe.md).
        """
        column = {name: index for index, name in enumerate(FRAME_OUTPUTS)}
        head = FrameScores(
            violation=output.frame[:, column["violation"]],
            no_hardhat=output.frame[:, column["no_hardhat"]],
            no_vest=output.frame[:, column["no_vest"]],
        )
        if self.params.frame_score == "head":
            return head
        cells = self.params.smoothing_cells
        smoothed = _box_smooth(output.maps, cells) if cells > 1 else output.maps
        top = smoothed.max(axis=(1, 2))
        no_hardhat, no_vest = top[:, CHANNEL[PpeClass.NO_HARDHAT]], top[:, CHANNEL[PpeClass.NO_SAFETY_VEST]]
        maps = FrameScores(violation=np.maximum(no_hardhat, no_vest), no_hardhat=no_hardhat, no_vest=no_vest)
        if self.params.frame_score == "maps":
            return maps
        return FrameScores(
            violation=(head.violation + maps.violation) / 2,
            no_hardhat=(head.no_hardhat + maps.no_hardhat) / 2,
            no_vest=(head.no_vest + maps.no_vest) / 2,
        )

    def predict_data(self, data: LabelledFrames) -> NetworkOutput:
        """Network outputs for the frames of a labelled set, in order."""
        return self.predict_batch(load_square_images(data.frames["image_path"].to_list(), self.params.image_size))

    def frame_scores(self, data: LabelledFrames) -> np.ndarray:
        """Violation probability of each frame of `data`, in order."""
        return self.scores(self.predict_data(data)).violation

    # -- verdicts --

    def predict_frames(self, images: Sequence[FrameInput]) -> list[FrameVerdict]:
        """One verdict per frame (HxWx3 uint8 arrays, JPEG/PNG bytes or paths), with person regions."""
        return self.verdicts(self.predict_batch(self.frame_batch(images)))

    def verdicts(self, output: NetworkOutput) -> list[FrameVerdict]:
        scores = self.scores(output)
        return [
            FrameVerdict(
                violation_probability=float(scores.violation[index]),
                violation=bool(scores.violation[index] >= self.threshold),
                no_hardhat_probability=float(scores.no_hardhat[index]),
                no_hardhat=bool(scores.no_hardhat[index] >= self.threshold),
                no_vest_probability=float(scores.no_vest[index]),
                no_vest=bool(scores.no_vest[index] >= self.threshold),
                threshold=self.threshold,
                regions=self.regions(output.maps[index]),
            )
            for index in range(len(output.maps))
        ]

    def regions(self, maps: np.ndarray) -> tuple[PersonRegion, ...]:
        """Blobs of the person map, then blobs of a "no" map outside every person blob."""
        level = self.params.region_threshold
        found: list[PersonRegion] = []
        person = maps[:, :, CHANNEL[PpeClass.PERSON]] >= level
        labels, count = ndimage.label(person)
        covered = person.copy()
        for blob in ndimage.find_objects(labels)[:count]:
            rows, cols = _grown(blob, maps.shape[:2], up=2)  # a head sits above the middle of its body
            covered[rows, cols] = True
            found.append(self._region(maps, rows, cols))
        no_maps = maps[:, :, [CHANNEL[PpeClass.NO_HARDHAT], CHANNEL[PpeClass.NO_SAFETY_VEST]]].max(axis=2)
        stray, stray_count = ndimage.label((no_maps >= self.threshold) & ~covered)
        for blob in ndimage.find_objects(stray)[:stray_count]:
            found.append(self._region(maps, *_grown(blob, maps.shape[:2], up=1)))
        return tuple(found)

    def _region(self, maps: np.ndarray, rows: slice, cols: slice) -> PersonRegion:
        inside = maps[rows, cols].reshape(-1, len(MAP_CLASSES)).max(axis=0)
        grid_h, grid_w = maps.shape[:2]

        def verdict(worn: float, missing: float) -> str:
            if missing >= self.threshold:
                return MISSING
            return WORN if worn >= 0.5 else UNKNOWN

        hardhat, no_hardhat = float(inside[CHANNEL[PpeClass.HARDHAT]]), float(inside[CHANNEL[PpeClass.NO_HARDHAT]])
        vest, no_vest = float(inside[CHANNEL[PpeClass.SAFETY_VEST]]), float(inside[CHANNEL[PpeClass.NO_SAFETY_VEST]])
        return PersonRegion(
            box=(cols.start / grid_w, rows.start / grid_h, cols.stop / grid_w, rows.stop / grid_h),
            person_score=float(inside[CHANNEL[PpeClass.PERSON]]),
            hardhat_probability=hardhat,
            no_hardhat_probability=no_hardhat,
            vest_probability=vest,
            no_vest_probability=no_vest,
            hardhat=verdict(hardhat, no_hardhat),
            vest=verdict(vest, no_vest),
        )

    # -- the crop classifier --

    def classify_boxes(self, maps: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Class ids (of CROP_CLASSES) for boxes `class, x, y, w, h` of one frame: the PPE map highest inside."""
        grid = maps.shape[0]
        predicted = np.zeros(len(boxes), np.int64)
        for index, (_, x, y, w, h) in enumerate(boxes):
            rows, cols = _box_cells(x, y, w, h, grid)
            means = maps[rows, cols, : len(CROP_CLASSES)].reshape(-1, len(CROP_CLASSES)).mean(axis=0)
            predicted[index] = int(CROP_CLASSES[int(np.argmax(means))])
        return predicted

    # -- persistence --

    def config(self) -> dict[str, Any]:
        return {
            "model_name": MODEL_NAME,
            "params": asdict(self.params),
            "threshold": self.threshold,
            "calibration": self.calibration,
            "map_classes": [int(c) for c in MAP_CLASSES],
            "output_stride": OUTPUT_STRIDE,
        }

    def save(self, directory: Path) -> tuple[Path, Path]:
        """Writes the network and the JSON config into `directory`; their paths."""
        directory.mkdir(parents=True, exist_ok=True)
        network_path, config_path = directory / NETWORK_FILE, directory / CONFIG_FILE
        self.network.save(network_path)
        config_path.write_text(json.dumps(self.config(), indent=2))
        return network_path, config_path

    @classmethod
    def load(cls, network_path: Path, config_path: Path) -> PpeModel:
        import keras

        config = json.loads(Path(config_path).read_text())
        config["params"].setdefault("members", 1)  # saved before members existed: one network
        known = {f.name for f in fields(PpeParams)}
        params = PpeParams(**{k: v for k, v in config["params"].items() if k in known})
        network = keras.models.load_model(network_path, compile=False)
        return cls(
            network=network, params=params, threshold=float(config["threshold"]), calibration=config["calibration"]
        )


def _box_smooth(maps: np.ndarray, cells: int) -> np.ndarray:
    """Mean over a cells x cells window (valid positions only), per frame and channel."""
    return ndimage.uniform_filter(maps, size=(1, cells, cells, 1), mode="nearest")


def _grown(blob: tuple[slice, slice], shape: tuple[int, int], up: int) -> tuple[slice, slice]:
    rows, cols = blob
    return slice(max(rows.start - up, 0), rows.stop), slice(cols.start, min(cols.stop, shape[1]))


def _box_cells(x: float, y: float, w: float, h: float, grid: int) -> tuple[slice, slice]:
    """Cells whose centre lies in the box; the cell holding its centre when there is none."""

    def span(centre: float, extent: float) -> slice:
        first = math.ceil((centre - extent / 2) * grid - 0.5)
        last = math.floor((centre + extent / 2) * grid - 0.5)
        if first > last:
            first = last = int(centre * grid)
        first, last = min(max(first, 0), grid - 1), min(max(last, 0), grid - 1)
        return slice(first, last + 1)

    return span(y, h), span(x, w)


# ---- fit and evaluate -------------------------------------------------------------------------


def best_f1_threshold(scores: np.ndarray, truth: np.ndarray, prior: float = 0.0) -> tuple[float, float]:
    """The cut on `scores` with the best F1 against `truth` (ties: the higher cut), and that F1.

    With `prior` in (0, 1), violating and compliant frames are re-weighted as if violations made up
    that share of the frames: the training folders hold far more violating frames (80 %) than a
    camera or the evaluation folders see (about half), and the F1-best cut moves with that share.
    Cuts sit half-way between neighbouring scores, so they do not hinge on one frame.
    """
    truth = truth.astype(bool)
    if not truth.any() or truth.all():
        return 0.5, 0.0
    positive_weight, negative_weight = 1.0, 1.0
    if 0.0 < prior < 1.0:
        share = float(truth.mean())
        positive_weight, negative_weight = prior / share, (1.0 - prior) / (1.0 - share)
    order = np.sort(np.unique(scores))
    candidates = np.concatenate([[order[0] - 1e-6], (order[1:] + order[:-1]) / 2, [order[-1] + 1e-6]])
    best, best_f1 = 0.5, -1.0
    for cut in candidates:
        predicted = scores >= cut
        true_positive = positive_weight * float(np.sum(predicted & truth))
        false_positive = negative_weight * float(np.sum(predicted & ~truth))
        false_negative = positive_weight * float(np.sum(~predicted & truth))
        f1 = 2 * true_positive / max(2 * true_positive + false_positive + false_negative, 1e-12)
        if f1 >= best_f1:
            best, best_f1 = float(cut), f1
    return best, best_f1


def steady_threshold(
    scores: np.ndarray, truth: np.ndarray, prior: float = 0.0, resamples: int = 200, seed: int = 0
) -> float:
    """The median of the F1-best cuts over bootstrap resamples of the held-out frames.

    A hundred held-out frames with twenty compliant ones among them put the single F1-best cut
    wherever a few frames happen to fall (0.45 or 0.82 for two seeds of the same network); the
    median over resamples sits where most of them agree.
    """
    rng = np.random.default_rng(seed)
    cuts = []
    for _ in range(resamples):
        picked = rng.integers(0, len(scores), len(scores))
        cuts.append(best_f1_threshold(scores[picked], truth[picked], prior)[0])
    return float(np.median(cuts)) if cuts else 0.5


def ranking_auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """ROC AUC of `scores` against `truth`: the chance a violating frame outscores a compliant one
    (ties count half). It judges the network apart from its threshold; 0.5 when a class is missing."""
    truth = truth.astype(bool)
    positive, negative = scores[truth], scores[~truth]
    if not positive.size or not negative.size:
        return 0.5
    ranks = stats.rankdata(scores)  # ties share their mean rank
    return float((ranks[truth].sum() - positive.size * (positive.size + 1) / 2) / (positive.size * negative.size))


def violation_metrics(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of the frame verdict `violation` (1 = the frame violates)."""
    predicted, truth = predicted.astype(bool), truth.astype(bool)
    true_positive = float(np.sum(predicted & truth))
    precision = true_positive / max(float(predicted.sum()), 1.0)
    recall = true_positive / max(float(truth.sum()), 1.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def fit(train: LabelledFrames, params: PpeParams, progress: Callable[[str], None] | None = None) -> PpeModel:
    """Train the network on `train`; the threshold comes from a held-out slice of it (F1-best).

    With `members` > 1 each member network holds out its own slice and scores it, so the threshold
    is placed on that many times more frames, none seen by the network scoring it; the model
    averages the members.
    """
    say = progress or (lambda _message: None)
    if params.image_size % 32 or params.crop_size % 32:
        raise ValueError("image_size and crop_size must be multiples of 32")
    if params.calibration_fraction > 0:
        held_out = calibration_slices(train, params.calibration_fraction, params.members, params.seed)
    else:  # no threshold to place: every member learns from every frame
        held_out = [train.select([])] * params.members
    networks: list[keras.Model] = []
    scores: list[np.ndarray] = []  # each member's scores on its own slice, and the slice's verdicts
    truth: list[np.ndarray] = []
    seconds, fitted = 0.0, 0
    for index, member_held_out in enumerate(held_out):
        held_ids = set(member_held_out.frames["frame_id"])
        fitting = train.select([frame_id for frame_id in train.frames["frame_id"] if frame_id not in held_ids])
        member = f"member {index + 1}/{params.members}: " if params.members > 1 else ""
        say(f"{member}training on {fitting.n_frames} frames ({params.epochs} epochs, crops {params.crop_size} px)")
        member_params = replace(params, seed=params.seed + index)
        network, member_seconds = _train_network(fitting, member_params, progress)
        networks.append(network)
        seconds += member_seconds
        fitted = max(fitted, fitting.n_frames)
        if member_held_out.n_frames:
            single = PpeModel(network=network, params=params, threshold=params.threshold)
            scores.append(single.frame_scores(member_held_out))
            truth.append(member_held_out.frames["violation"].to_numpy())
    network = networks[0] if len(networks) == 1 else averaged_network(networks)
    model = PpeModel(network=network, params=params, threshold=params.threshold)
    calibration: dict[str, float] = {}
    if scores:
        all_scores, all_truth = np.concatenate(scores), np.concatenate(truth)
        model.threshold = steady_threshold(all_scores, all_truth, params.violation_prior, seed=params.seed)
        f1 = violation_metrics(all_scores >= model.threshold, all_truth)["f1"]
        calibration = {"calibration_frames": float(all_scores.size), "calibration_f1": f1}
        say(f"threshold {model.threshold:.3f} (F1 {f1:.3f} on {all_scores.size} held-out training frames)")
    model.calibration = {**calibration, "training_frames": float(fitted), "network_seconds": seconds}
    return model


def evaluate(model: PpeModel, validation: LabelledFrames) -> dict[str, float]:
    """Frame-level violation precision/recall/F1, crop-classifier accuracy, and their counts."""
    output = model.predict_data(validation)
    scores = model.scores(output)
    frames = validation.frames
    threshold = model.threshold
    metrics = violation_metrics(scores.violation >= threshold, frames["violation"].to_numpy())
    no_hardhat = violation_metrics(scores.no_hardhat >= threshold, frames["no_hardhat"].to_numpy())
    no_vest = violation_metrics(scores.no_vest >= threshold, frames["no_vest"].to_numpy())
    metrics |= {"no_hardhat_f1": no_hardhat["f1"], "no_vest_f1": no_vest["f1"]}
    # how well the frame score ranks the frames, whatever the threshold: the network's own quality
    metrics["violation_auc"] = ranking_auc(scores.violation, frames["violation"].to_numpy())
    metrics["best_f1"] = best_f1_threshold(scores.violation, frames["violation"].to_numpy())[1]
    truth_classes, predicted_classes = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    crop_ids = [int(c) for c in CROP_CLASSES]
    for frame_maps, boxes in zip(output.maps, validation.boxes_by_frame(), strict=True):
        labelled = boxes[np.isin(boxes[:, 0].astype(np.int64), crop_ids)]
        truth_classes.append(labelled[:, 0].astype(np.int64))
        predicted_classes.append(model.classify_boxes(frame_maps, labelled))
    truth, predicted = np.concatenate(truth_classes), np.concatenate(predicted_classes)
    metrics["crop_accuracy"] = float(np.mean(truth == predicted)) if truth.size else 0.0
    metrics["n_crops"] = float(truth.size)
    metrics["n_frames"] = float(frames.height)
    metrics["violation_share"] = float(frames["violation"].mean() or 0.0) if frames.height else 0.0  # type: ignore[arg-type]
    metrics["threshold"] = model.threshold
    return metrics


def benchmark_ppe(train_dir: Path, test_dir: Path, params: PpeParams | None = None) -> dict[str, float]:
    """Train on `train_dir` (a YOLO folder or its split folders), score frames and boxes of `test_dir`."""
    params = params or PpeParams()
    train = load_frames(Path(train_dir))
    test = load_frames(Path(test_dir))
    started = time.perf_counter()
    model = fit(train, params)
    train_seconds = time.perf_counter() - started
    metrics = evaluate(model, test)
    return {**metrics, "train_seconds": train_seconds, "train_frames": float(train.n_frames)}


# ---- MLflow ---------------------------------------------------------------------------------

PYFUNC_OUTPUT_COLUMNS: tuple[str, ...] = (
    "violation_probability",
    "violation",
    "no_hardhat_probability",
    "no_hardhat",
    "no_vest_probability",
    "no_vest",
    "regions_json",
)


class PpeVisionPyfunc(mlflow.pyfunc.PythonModel):
    """Frames in (a column `image` of JPEG/PNG bytes), one verdict row out per frame."""

    def load_context(self, context: Any) -> None:
        self.model = PpeModel.load(Path(context.artifacts["network"]), Path(context.artifacts["config"]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        images = [_as_bytes(value) for value in model_input["image"]]
        return verdict_frame(self.model.predict_frames(images)).to_pandas()


def _as_bytes(value: Any) -> bytes:
    """Bytes as given, or base64 text (how JSON payloads and stored input examples carry them)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return base64.b64decode(value)


def verdict_frame(verdicts: Sequence[FrameVerdict]) -> pl.DataFrame:
    """Verdicts as rows (regions as JSON text), the pyfunc's output."""
    return pl.DataFrame(
        {
            "violation_probability": [v.violation_probability for v in verdicts],
            "violation": [v.violation for v in verdicts],
            "no_hardhat_probability": [v.no_hardhat_probability for v in verdicts],
            "no_hardhat": [v.no_hardhat for v in verdicts],
            "no_vest_probability": [v.no_vest_probability for v in verdicts],
            "no_vest": [v.no_vest for v in verdicts],
            "regions_json": [json.dumps([asdict(r) for r in v.regions]) for v in verdicts],
        },
        schema={
            "violation_probability": pl.Float64(),
            "violation": pl.Boolean(),
            "no_hardhat_probability": pl.Float64(),
            "no_hardhat": pl.Boolean(),
            "no_vest_probability": pl.Float64(),
            "no_vest": pl.Boolean(),
            "regions_json": pl.String(),
        },
    )


def example_input() -> pd.DataFrame:
    """A one-frame input (a small synthetic JPEG) for the signature and the stored input example."""
    return pd.DataFrame({"image": [synthetic_camera_frame(seed=7).jpeg]})


def log_model(model: PpeModel, *, registered_name: str) -> str:
    """Log `model` as a pyfunc (network + JSON config) into the active run, register it; the version."""
    from mlflow.models import infer_signature

    example = example_input()
    output = verdict_frame(model.predict_frames(list(example["image"]))).to_pandas()
    with tempfile.TemporaryDirectory() as tmp:
        network_path, config_path = model.save(Path(tmp))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=PpeVisionPyfunc(),
            artifacts={"network": str(network_path), "config": str(config_path)},
            signature=infer_signature(example, output),
            input_example=example,
            pip_requirements=pinned_requirements(
                "tensorflow-cpu", "keras", "numpy", "scipy", "pillow", "polars", "pandas", "mlflow"
            ),
            registered_model_name=registered_name,
        )
    if info.registered_model_version is None:
        raise RuntimeError(f"MLflow did not register a version of {registered_name}")
    return str(info.registered_model_version)


def load_model(model_uri: str) -> PpeModel:
    """The `PpeModel` behind a model URI (`models:/ppe_vision/3`, `models:/ppe_vision@champion`, runs:/...)."""
    wrapper = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    return wrapper.model  # type: ignore[no-any-return]
