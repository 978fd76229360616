"""The `ppe_vision` model: the YOLO folder reader (real data), the synthetic generator, and a tiny
network trained on generated frames that must beat trivial baselines on held-out generated frames
and survive a round trip through a real MLflow registry."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import polars as pl
import pytest

from factory_pipelines import ppe_images as pi
from factory_pipelines import ppe_model as pm
from factory_pipelines.model_registry import ensure_experiment, set_alias, use_tracking_uri

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PPE_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ppe"
# Small enough to train in seconds, big enough to learn hats and vests from 128 px frames.
TINY_PARAMS = pm.PpeParams(
    image_size=128,
    crop_size=96,
    zoom_min=0.9,
    zoom_max=1.2,
    base_filters=8,
    epochs=12,
    batch_size=16,
    learning_rate=4e-3,
    calibration_fraction=0.25,
    members=1,  # two members: test_members_calibrate_on_frames_they_did_not_see_...
    seed=3,
)


def ppe_folder(name: str) -> Path:
    folder = PPE_DATA / name
    if not (folder / "images").is_dir():
        raise FileNotFoundError(f"{folder} is missing: the PPE tests read the shared data set (see data/README.md)")
    return folder


# ---- reading labelled folders -----------------------------------------------------------------


def test_reader_takes_the_real_yolo_layout() -> None:
    valid = pi.read_yolo_folder(ppe_folder("valid"))

    assert dict(valid.frames.schema) == pi.FRAME_SCHEMA and dict(valid.boxes.schema) == pi.BOX_SCHEMA
    assert valid.n_frames == len(list((ppe_folder("valid") / "images").glob("*.jpg")))
    assert set(valid.boxes["class_id"].unique()) <= set(range(10))
    # the frame verdict is exactly "holds a NO-Hardhat or NO-Safety Vest box"
    violating = valid.boxes.filter(pl.col("class_id").is_in([pi.PpeClass.NO_HARDHAT, pi.PpeClass.NO_SAFETY_VEST]))
    flagged = set(valid.frames.filter(pl.col("violation"))["frame_id"])
    assert flagged == set(violating["frame_id"]) and 0 < len(flagged) < valid.n_frames
    boxes = valid.boxes_by_frame()
    assert len(boxes) == valid.n_frames and sum(len(b) for b in boxes) == valid.boxes.height


def test_dataset_root_reads_its_split_folders_once() -> None:
    root = ppe_folder("valid").parent
    assert [f.name for f in pi.dataset_folders(root)] == ["train_subset", "valid"]
    assert pi.dataset_folders(ppe_folder("valid")) == [ppe_folder("valid")]
    twice = pi.read_yolo_folders([ppe_folder("valid"), ppe_folder("valid")])
    once = pi.read_yolo_folder(ppe_folder("valid"))
    assert twice.n_frames == once.n_frames and twice.boxes.height == once.boxes.height


def test_split_is_seeded_disjoint_and_stratified() -> None:
    data = pi.read_yolo_folder(ppe_folder("valid"))
    train, validation = pm.split_frames(data, 0.25, seed=5)
    again_train, _ = pm.split_frames(data, 0.25, seed=5)
    other_train, _ = pm.split_frames(data, 0.25, seed=6)

    assert train.frames["frame_id"].to_list() == again_train.frames["frame_id"].to_list()
    assert train.frames["frame_id"].to_list() != other_train.frames["frame_id"].to_list()
    assert set(train.frames["frame_id"]).isdisjoint(validation.frames["frame_id"])
    assert train.n_frames + validation.n_frames == data.n_frames
    assert set(validation.boxes["frame_id"]) <= set(validation.frames["frame_id"])
    share = float(data.frames["violation"].mean())  # type: ignore[arg-type]
    assert float(validation.frames["violation"].mean()) == pytest.approx(share, abs=0.05)  # type: ignore[arg-type]


def test_split_keeps_each_clip_on_one_side() -> None:
    data = pi.read_yolo_folder(ppe_folder("valid"))
    groups = data.frames["frame_id"].map_elements(pi.source_group, return_dtype=pl.String)
    assert groups.n_unique() < data.n_frames  # the folder holds clips of several frames

    train, validation = pm.split_frames(data, 0.3, seed=3)
    train_groups = {pi.source_group(frame_id) for frame_id in train.frames["frame_id"]}
    validation_groups = {pi.source_group(frame_id) for frame_id in validation.frames["frame_id"]}
    assert validation_groups and train_groups.isdisjoint(validation_groups)
    assert (
        pi.source_group("youtube-236_jpg.rf.a1")
        == pi.source_group("youtube-271_jpg.rf.b2")
        != pi.source_group("youtube-301_jpg.rf.c3")
    )
    assert pi.source_group("IMG_3103_mp4-15_jpg.rf.x") == pi.source_group("IMG_3103_mp4-2_jpg.rf.y")


def test_target_maps_paint_boxes_and_keep_tiny_ones() -> None:
    boxes = np.array(
        [
            [pi.PpeClass.NO_SAFETY_VEST, 0.5, 0.5, 0.5, 0.5],
            [pi.PpeClass.HARDHAT, 0.1, 0.1, 0.01, 0.01],
            [8, 0.5, 0.5, 1, 1],
        ],
        np.float32,
    )
    maps = pm.target_maps(boxes, 16)
    painted = maps[:, :, pm.CHANNEL[pi.PpeClass.NO_SAFETY_VEST]]
    assert painted[8, 8] == 1 and painted[0, 0] == 0 and 16 <= painted.sum() <= 64
    assert maps[:, :, pm.CHANNEL[pi.PpeClass.HARDHAT]].sum() == 1  # a box smaller than a cell still counts
    assert maps[:, :, pm.CHANNEL[pi.PpeClass.PERSON]].sum() == 0  # machinery paints nothing


def test_ranking_auc_counts_ordered_pairs_and_ties_half() -> None:
    truth = np.array([0, 1, 0, 1])
    assert pm.ranking_auc(np.array([0.1, 0.2, 0.3, 0.9]), truth) == pytest.approx(0.75)
    assert pm.ranking_auc(np.array([0.1, 0.2, 0.2, 0.9]), truth) == pytest.approx(0.875)  # a tie counts half
    assert pm.ranking_auc(np.array([0.0, 1.0, 0.0, 1.0]), truth) == 1.0
    assert pm.ranking_auc(np.array([0.3, 0.4]), np.array([1, 1])) == 0.5  # no compliant frame: no ranking


# ---- the synthetic generator --------------------------------------------------------------------


def test_synthetic_folder_is_deterministic_and_reads_back(tmp_path: Path) -> None:
    first = pi.read_yolo_folder(pi.write_synthetic_folder(tmp_path / "a", 12, seed=4, size=96))
    second_dir = pi.write_synthetic_folder(tmp_path / "b", 12, seed=4, size=96)
    for name in ("images", "labels"):
        assert [p.read_bytes() for p in sorted((tmp_path / "a" / name).iterdir())] == [
            p.read_bytes() for p in sorted((second_dir / name).iterdir())
        ]
    rng = np.random.default_rng(4)
    drawn = [pi.draw_synthetic_frame(rng, 96) for _ in range(12)]
    assert first.frames["violation"].to_list() == [frame.violation for frame in drawn]
    assert first.boxes.height == sum(len(frame.boxes) for frame in drawn)
    assert set(first.boxes["class_id"].unique()) <= {0, 2, 4, 5, 6, 7}


def test_synthetic_frames_mix_compliant_violating_and_empty() -> None:
    rng = np.random.default_rng(0)
    frames = [pi.draw_synthetic_frame(rng, 64) for _ in range(200)]
    people = [sum(box.class_id == pi.PpeClass.PERSON for box in frame.boxes) for frame in frames]
    violations = sum(frame.violation for frame in frames)
    assert 0.1 < people.count(0) / 200 < 0.35
    assert 0.4 < violations / 200 < 0.8
    assert all(frame.image.shape == (64, 64, 3) and frame.image.dtype == np.uint8 for frame in frames)


def test_camera_frame_is_a_small_deterministic_jpeg() -> None:
    frame = pi.synthetic_camera_frame(seed=11, width=128)
    assert frame.jpeg == pi.synthetic_camera_frame(seed=11, width=128).jpeg
    assert frame.jpeg[:2] == b"\xff\xd8" and 1_000 < len(frame.jpeg) < 10_000
    assert pi.decode_image(frame.jpeg).shape == (128, 128, 3)
    assert frame.violation == (frame.no_hardhat or frame.no_vest)


def test_calibration_slices_are_disjoint_whole_clips_and_the_first_is_the_single_split() -> None:
    data = pi.read_yolo_folder(ppe_folder("valid"))
    slices = pm.calibration_slices(data, 0.2, 3, seed=5)

    ids = [set(part.frames["frame_id"]) for part in slices]
    assert all(ids) and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert ids[0] == set(pm.split_frames(data, 0.2, seed=5)[1].frames["frame_id"])
    groups = [{pi.source_group(frame_id) for frame_id in part} for part in ids]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    for part in slices:  # each about a fifth of the frames, with the folder's share of violations
        assert part.n_frames == pytest.approx(0.2 * data.n_frames, abs=4)
        share = float(data.frames["violation"].mean())  # type: ignore[arg-type]
        assert float(part.frames["violation"].mean()) == pytest.approx(share, abs=0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="members must be 1 or more"):
        pm.PpeParams(members=0)
    with pytest.raises(ValueError, match="at most 0.6 of the frames"):
        pm.PpeParams(members=4, calibration_fraction=0.2)


# ---- a tiny model on generated frames -----------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[pi.LabelledFrames, pi.LabelledFrames]:
    root = tmp_path_factory.mktemp("ppe-synthetic")
    train = pm.load_frames(pi.write_synthetic_folder(root / "train", 240, seed=1, size=128))
    held_out = pm.load_frames(pi.write_synthetic_folder(root / "held_out", 100, seed=2, size=128))
    return train, held_out


@pytest.fixture(scope="module")
def tiny_model(synthetic_sets: tuple[pi.LabelledFrames, pi.LabelledFrames]) -> pm.PpeModel:
    messages: list[str] = []
    model = pm.fit(synthetic_sets[0], TINY_PARAMS, progress=messages.append)
    assert sum(m.startswith("epoch ") for m in messages) == TINY_PARAMS.epochs
    return model


def test_tiny_model_beats_trivial_baselines_on_held_out_frames(
    tiny_model: pm.PpeModel, synthetic_sets: tuple[pi.LabelledFrames, pi.LabelledFrames]
) -> None:
    held_out = synthetic_sets[1]
    metrics = tiny_model.calibration | pm.evaluate(tiny_model, held_out)
    truth = held_out.frames["violation"].to_numpy()

    every_frame = pm.violation_metrics(np.ones_like(truth), truth)["f1"]  # call every frame a violation
    assert metrics[pm.PRIMARY_METRIC] > every_frame + 0.03, metrics
    crops = held_out.boxes.filter(pl.col("class_id").is_in([int(c) for c in pm.CROP_CLASSES]))
    majority = crops["class_id"].value_counts()["count"].max() / crops.height
    assert metrics["crop_accuracy"] > majority + 0.15, metrics
    assert metrics["n_frames"] == held_out.n_frames and metrics["n_crops"] == crops.height
    assert {"precision", "recall", "f1", "crop_accuracy", "n_frames", "violation_auc", "best_f1"} <= metrics.keys()


def test_predict_frames_takes_arrays_and_jpegs_and_gives_regions(tiny_model: pm.PpeModel) -> None:
    camera = [pi.synthetic_camera_frame(seed) for seed in range(6)]
    from_jpeg = tiny_model.predict_frames([frame.jpeg for frame in camera])
    from_array = tiny_model.predict_frames([pi.decode_image(frame.jpeg) for frame in camera])

    assert [v.violation_probability for v in from_jpeg] == pytest.approx([v.violation_probability for v in from_array])
    for verdict in from_jpeg:
        assert verdict.violation == (verdict.violation_probability >= tiny_model.threshold)
        assert verdict.no_hardhat == (verdict.no_hardhat_probability >= tiny_model.threshold)
        assert verdict.no_vest == (verdict.no_vest_probability >= tiny_model.threshold)
        assert 0 <= verdict.no_hardhat_probability <= 1 and 0 <= verdict.no_vest_probability <= 1
        for region in verdict.regions:
            x0, y0, x1, y1 = region.box
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
            assert {region.hardhat, region.vest} <= {pm.WORN, pm.MISSING, pm.UNKNOWN}
    # frames with people get person regions more often than empty ones
    with_people = [v for v, f in zip(from_jpeg, camera, strict=True) if any(b.class_id == 5 for b in f.boxes)]
    assert with_people and any(v.regions for v in with_people)


def test_frame_score_is_the_mean_of_head_and_maps(
    tiny_model: pm.PpeModel, synthetic_sets: tuple[pi.LabelledFrames, pi.LabelledFrames]
) -> None:
    output = tiny_model.predict_data(pm.split_frames(synthetic_sets[1], 0.2, seed=0)[1])

    def scored(frame_score: str) -> pm.FrameScores:
        params = dataclasses.replace(tiny_model.params, frame_score=frame_score)
        return dataclasses.replace(tiny_model, params=params).scores(output)

    assert tiny_model.params.frame_score == "mean"
    head, maps, mean = scored("head"), scored("maps"), scored("mean")
    assert not np.allclose(head.violation, maps.violation)  # two different views of the frame
    for name in ("violation", "no_hardhat", "no_vest"):
        np.testing.assert_allclose(getattr(mean, name), (getattr(head, name) + getattr(maps, name)) / 2)
    with pytest.raises(ValueError, match="frame_score must be one of"):
        pm.PpeParams(frame_score="average")  # refused before any training or scoring


def test_members_calibrate_on_frames_they_did_not_see_and_the_model_averages_them(
    synthetic_sets: tuple[pi.LabelledFrames, pi.LabelledFrames], tmp_path: Path
) -> None:
    params = dataclasses.replace(TINY_PARAMS, members=2, epochs=3, calibration_fraction=0.2)
    train, held_out = synthetic_sets
    messages: list[str] = []
    model = pm.fit(train, params, progress=messages.append)

    slices = pm.calibration_slices(train, 0.2, 2, params.seed)
    assert model.calibration["calibration_frames"] == sum(part.n_frames for part in slices)
    assert [m for m in messages if m.startswith("member ")] == [
        f"member {k}/2: training on {train.n_frames - part.n_frames} frames (3 epochs, crops 96 px)"
        for k, part in enumerate(slices, start=1)
    ]
    members = [layer for layer in model.network.layers if layer.name.startswith(f"{pm.MODEL_NAME}_member_")]
    assert len(members) == 2
    batch = pi.load_square_images(held_out.frames["image_path"].to_list()[:6], params.image_size).astype("float32")
    outputs = [member.predict_on_batch(batch) for member in members]
    averaged = model.network.predict_on_batch(batch)
    assert not np.allclose(outputs[0]["frame"], outputs[1]["frame"])  # two networks, not one twice
    for name in ("maps", "frame"):
        np.testing.assert_allclose(averaged[name], (outputs[0][name] + outputs[1][name]) / 2, rtol=1e-5, atol=1e-6)

    loaded = pm.PpeModel.load(*model.save(tmp_path / "saved"))
    assert loaded.params.members == 2 and loaded.threshold == model.threshold
    np.testing.assert_allclose(loaded.frame_scores(held_out), model.frame_scores(held_out), rtol=1e-5, atol=1e-6)


def test_a_model_saved_before_members_existed_loads_as_one_network(tiny_model: pm.PpeModel, tmp_path: Path) -> None:
    network_path, config_path = tiny_model.save(tmp_path / "saved")
    config = json.loads(config_path.read_text())
    del config["params"]["members"]
    config_path.write_text(json.dumps(config))

    assert pm.PpeParams().members == 2
    assert pm.PpeModel.load(network_path, config_path).params.members == 1


@pytest.fixture
def mlflow_store(tmp_path: Path) -> Iterator[str]:
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    use_tracking_uri(tracking_uri)
    ensure_experiment(tracking_uri, pm.MODEL_NAME, tmp_path / "artifacts")
    yield tracking_uri
    mlflow.set_tracking_uri(None)


def test_log_and_load_round_trip_through_mlflow(
    tiny_model: pm.PpeModel, synthetic_sets: tuple[pi.LabelledFrames, pi.LabelledFrames], mlflow_store: str
) -> None:
    experiment = mlflow.get_experiment_by_name(pm.MODEL_NAME)
    assert experiment is not None
    with mlflow.start_run(experiment_id=experiment.experiment_id):
        version = pm.log_model(tiny_model, registered_name="ppe_vision_test")
    set_alias(mlflow_store, "ppe_vision_test", version, decided_by="test", reason="round trip")

    _, sample = pm.split_frames(synthetic_sets[1], 0.3, seed=0)  # 30 frames: the same figures, less waiting
    expected, expected_f1 = tiny_model.frame_scores(sample), pm.evaluate(tiny_model, sample)["f1"]
    for uri in (f"models:/ppe_vision_test/{version}", "models:/ppe_vision_test@champion"):
        loaded = pm.load_model(uri)
        assert isinstance(loaded, pm.PpeModel)
        assert loaded.params == tiny_model.params and loaded.threshold == tiny_model.threshold
        np.testing.assert_allclose(loaded.frame_scores(sample), expected, rtol=1e-5, atol=1e-6)
        assert pm.evaluate(loaded, sample)["f1"] == pytest.approx(expected_f1)

    # the generic pyfunc view: signature, input example, one verdict row per frame
    pyfunc = mlflow.pyfunc.load_model(f"models:/ppe_vision_test/{version}")
    assert pyfunc.metadata.get_input_schema().input_names() == ["image"]
    rows = pyfunc.predict(pm.example_input())
    assert list(rows.columns) == list(pm.PYFUNC_OUTPUT_COLUMNS) and len(rows) == 1
    assert bool(rows["violation"][0]) == (rows["violation_probability"][0] >= tiny_model.threshold)


def test_steady_threshold_moves_less_between_held_out_draws_than_one_best_cut() -> None:
    rng = np.random.default_rng(11)
    plain, steady = [], []
    for draw in range(30):  # held-out sets like the training folders': 100 frames, 80 % violating
        scores = np.concatenate([rng.normal(0.65, 0.2, 80), rng.normal(0.4, 0.2, 20)])
        truth = np.concatenate([np.ones(80, bool), np.zeros(20, bool)])
        plain.append(pm.best_f1_threshold(scores, truth, prior=0.5)[0])
        steady.append(pm.steady_threshold(scores, truth, prior=0.5, resamples=100, seed=draw))

    assert np.std(steady) < 0.9 * np.std(plain), (np.std(steady), np.std(plain))
    assert 0.35 < np.median(steady) < 0.6
    again = pm.steady_threshold(scores, truth, prior=0.5, resamples=100, seed=29)
    assert again == steady[-1]
