"""Camera frames with YOLO labels for the `ppe_vision` model: the folder reader and a synthetic generator.

A labelled folder holds `images/*.jpg` and `labels/*.txt` (one `class x_center y_center width height`
line per box, coordinates as fractions of the frame), the layout of the Roboflow construction-site-
safety export. The synthetic generator draws frames in exactly that layout, with the same class ids,
so tests, the simulator's cameras and the real data all go through one reader.

Images are decoded, resized and encoded with Pillow, not TensorFlow: the simulator's camera and the
REST layer handle JPEGs without paying for a TensorFlow import.
"""

from __future__ import annotations

import io
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image, ImageDraw


class PpeClass(IntEnum):
    """Class ids of the construction-site-safety labels."""

    HARDHAT = 0
    MASK = 1
    NO_HARDHAT = 2
    NO_MASK = 3
    NO_SAFETY_VEST = 4
    PERSON = 5
    SAFETY_CONE = 6
    SAFETY_VEST = 7
    MACHINERY = 8
    VEHICLE = 9


CLASS_NAMES: dict[int, str] = {
    PpeClass.HARDHAT: "Hardhat",
    PpeClass.MASK: "Mask",
    PpeClass.NO_HARDHAT: "NO-Hardhat",
    PpeClass.NO_MASK: "NO-Mask",
    PpeClass.NO_SAFETY_VEST: "NO-Safety Vest",
    PpeClass.PERSON: "Person",
    PpeClass.SAFETY_CONE: "Safety Cone",
    PpeClass.SAFETY_VEST: "Safety Vest",
    PpeClass.MACHINERY: "machinery",
    PpeClass.VEHICLE: "vehicle",
}
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png")
# Split folders a dataset root may hold, in reading order; a frame seen twice (e.g. `train_subset`
# cut from `train`) is kept once.
SPLIT_FOLDER_NAMES: tuple[str, ...] = ("train", "train_subset", "valid")

FRAME_SCHEMA: dict[str, pl.DataType] = {
    "frame_id": pl.String(),
    "image_path": pl.String(),
    "n_boxes": pl.Int64(),
    "no_hardhat": pl.Boolean(),
    "no_vest": pl.Boolean(),
    "violation": pl.Boolean(),
}
BOX_SCHEMA: dict[str, pl.DataType] = {
    "frame_id": pl.String(),
    "class_id": pl.Int64(),
    "x_center": pl.Float64(),
    "y_center": pl.Float64(),
    "width": pl.Float64(),
    "height": pl.Float64(),
}


@dataclass(frozen=True, slots=True)
class LabelledFrames:
    """Frames (one row each, with their frame-level verdicts) and their boxes (one row per YOLO line)."""

    frames: pl.DataFrame
    boxes: pl.DataFrame

    @property
    def n_frames(self) -> int:
        return self.frames.height

    def select(self, frame_ids: Iterable[str]) -> LabelledFrames:
        """The frames with these ids, in the given order, and their boxes."""
        ids = pl.DataFrame({"frame_id": list(frame_ids)}, schema={"frame_id": pl.String()})
        frames = ids.join(self.frames, on="frame_id", how="inner", maintain_order="left")
        return LabelledFrames(frames=frames, boxes=self.boxes.join(ids, on="frame_id", how="semi"))

    def boxes_by_frame(self) -> list[np.ndarray]:
        """Per frame (in `frames` order): an array of rows `class_id, x_center, y_center, width, height`."""
        grouped = {
            key[0]: group.select("class_id", "x_center", "y_center", "width", "height").to_numpy().astype(np.float32)
            for key, group in self.boxes.group_by("frame_id")
        }
        empty = np.zeros((0, 5), np.float32)
        return [grouped.get(frame_id, empty) for frame_id in self.frames["frame_id"]]


def frame_verdicts(boxes: pl.DataFrame) -> pl.DataFrame:
    """Per frame id: does it hold a NO-Hardhat box, a NO-Safety Vest box, either (a violation)."""
    return boxes.group_by("frame_id").agg(
        (pl.col("class_id") == PpeClass.NO_HARDHAT).any().alias("no_hardhat"),
        (pl.col("class_id") == PpeClass.NO_SAFETY_VEST).any().alias("no_vest"),
        pl.len().cast(pl.Int64).alias("n_boxes"),
    )


def _read_label_file(path: Path, frame_id: str) -> list[tuple[str, int, float, float, float, float]]:
    rows: list[tuple[str, int, float, float, float, float]] = []
    if not path.is_file():
        return rows  # an unlabelled image is a frame with nothing in it, as YOLO tools read it
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5:
            raise ValueError(f"{path}:{line_number}: expected 'class x y w h', got {line!r}")
        class_id, x, y, w, h = int(parts[0]), *(float(p) for p in parts[1:])
        rows.append((frame_id, class_id, x, y, w, h))
    return rows


def label_file(image_path: Path) -> Path:
    """The YOLO label file of an image: `labels/<stem>.txt` beside its `images/` folder."""
    return image_path.parent.parent / "labels" / f"{image_path.stem}.txt"


def read_yolo_folder(folder: Path) -> LabelledFrames:
    """Every image of `folder/images` with the boxes of its `folder/labels/<stem>.txt`."""
    images_dir = Path(folder) / "images"
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{images_dir} does not exist: expected a YOLO folder with images/ and labels/")
    image_paths = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    box_rows: list[tuple[str, int, float, float, float, float]] = []
    for path in image_paths:
        box_rows += _read_label_file(label_file(path), path.stem)
    boxes = pl.DataFrame(box_rows, schema=BOX_SCHEMA, orient="row")
    frames = pl.DataFrame(
        {"frame_id": [p.stem for p in image_paths], "image_path": [str(p) for p in image_paths]},
        schema={"frame_id": pl.String(), "image_path": pl.String()},
    )
    frames = frames.join(frame_verdicts(boxes), on="frame_id", how="left").with_columns(
        pl.col("n_boxes").fill_null(0),
        pl.col("no_hardhat").fill_null(False),
        pl.col("no_vest").fill_null(False),
    )
    frames = frames.with_columns((pl.col("no_hardhat") | pl.col("no_vest")).alias("violation"))
    return LabelledFrames(frames=frames.select(list(FRAME_SCHEMA)), boxes=boxes)


def dataset_folders(root: Path) -> list[Path]:
    """`root` itself when it is a YOLO folder, else its split folders (train, train_subset, valid) present."""
    root = Path(root)
    if (root / "images").is_dir():
        return [root]
    folders = [root / name for name in SPLIT_FOLDER_NAMES if (root / name / "images").is_dir()]
    if not folders:
        raise FileNotFoundError(f"{root} holds neither images/ nor any of the split folders {SPLIT_FOLDER_NAMES}")
    return folders


def read_yolo_folders(folders: Sequence[Path]) -> LabelledFrames:
    """Several YOLO folders as one set; a frame id met again in a later folder is skipped."""
    parts = [read_yolo_folder(folder) for folder in folders]
    frames = pl.concat([p.frames.with_columns(pl.lit(i).alias("_part")) for i, p in enumerate(parts)])
    frames = frames.unique("frame_id", keep="first", maintain_order=True)
    boxes = pl.concat([p.boxes.with_columns(pl.lit(i).alias("_part")) for i, p in enumerate(parts)])
    boxes = boxes.join(frames.select("frame_id", "_part"), on=["frame_id", "_part"], how="semi")
    frames = frames.drop("_part")
    return LabelledFrames(frames=frames, boxes=boxes.select(list(BOX_SCHEMA)))


# ---- frames that stay together -------------------------------------------------------------

YOUTUBE_FRAME = re.compile(r"youtube-(\d+)")
YOUTUBE_BLOCK = 100  # neighbouring video frames are near-duplicates: held out or kept together
VIDEO_FRAME = re.compile(r"(?P<video>.+_(?:mp4|mov))-\d+_", re.IGNORECASE)  # e.g. IMG_3103_mp4-15_jpg...


def source_group(frame_id: str) -> str:
    """The group a frame must stay in: a block of the YouTube frames, a video clip, else its source image.

    A frame held out while its neighbour in the same clip is trained on scores as if seen: a
    threshold chosen on such frames sits too low for frames from scenes never seen.
    """
    youtube = YOUTUBE_FRAME.match(frame_id)
    if youtube:
        return f"youtube-block-{int(youtube.group(1)) // YOUTUBE_BLOCK}"
    clip = VIDEO_FRAME.match(frame_id)
    return clip.group("video") if clip else frame_id.split(".rf.")[0]


def held_out_frame_ids(frames: pl.DataFrame, room: dict[bool, int], seed: int) -> set[str]:
    """Frame ids of whole source groups, taken in a seeded order while each verdict has room left.

    `room` is how many violating (True) and compliant (False) frames to hold out at most.
    """
    groups: dict[str, list[tuple[str, bool]]] = {}
    for frame_id, violation in frames.select("frame_id", "violation").iter_rows():
        groups.setdefault(source_group(frame_id), []).append((frame_id, bool(violation)))
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    room = dict(room)
    held: set[str] = set()
    for name in order:
        members = groups[name]
        needed = {verdict: sum(member_violates == verdict for _, member_violates in members) for verdict in room}
        if all(needed[verdict] <= room[verdict] for verdict in room):
            held.update(frame_id for frame_id, _ in members)
            room = {verdict: room[verdict] - needed[verdict] for verdict in room}
        if not any(room.values()):
            break
    return held


# ---- decoding and resizing ----------------------------------------------------------------

FrameInput = np.ndarray | bytes | str | Path


def decode_image(image: FrameInput) -> np.ndarray:
    """An RGB uint8 array (H, W, 3) from JPEG/PNG bytes, a path, or an array (grey or RGBA accepted)."""
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
        if array.ndim != 3 or array.shape[2] not in (3, 4):
            raise ValueError(f"expected an (H, W, 3) image array, got shape {array.shape}")
        return np.ascontiguousarray(array[:, :, :3], dtype=np.uint8)
    source = io.BytesIO(image) if isinstance(image, bytes) else Path(image)
    with Image.open(source) as opened:
        return np.asarray(opened.convert("RGB"), dtype=np.uint8)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """The frame stretched to size x size (YOLO coordinates are fractions, so boxes stay valid)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0))


def load_square_images(paths: Sequence[str], size: int) -> np.ndarray:
    """The images at `paths` decoded and resized to (N, size, size, 3) uint8."""
    batch = np.zeros((len(paths), size, size, 3), np.uint8)
    for index, path in enumerate(paths):
        with Image.open(path) as opened:
            opened.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when that is enough
            batch[index] = resize_square(np.asarray(opened.convert("RGB"), dtype=np.uint8), size)
    return batch


def encode_jpeg(image: np.ndarray, quality: int = 85) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# ---- synthetic frames -----------------------------------------------------------------------

# Colours chosen so that a hard hat and a hi-vis vest are the cues, as on a site: hats in the usual
# shell colours, vests fluorescent with reflective bands, clothes and hair in muted colours.
RGB = tuple[int, int, int]
HAT_COLOURS: tuple[RGB, ...] = ((245, 245, 240), (250, 210, 20), (240, 120, 20), (200, 30, 30), (30, 80, 200))
VEST_COLOURS: tuple[RGB, ...] = ((200, 255, 40), (255, 110, 0))
CLOTHES_COLOURS: tuple[RGB, ...] = (
    (40, 50, 90), (70, 70, 75), (110, 80, 60), (30, 30, 30),
    (150, 150, 160), (60, 90, 60), (120, 30, 40), (90, 110, 140),
)  # fmt: skip
SKIN_COLOURS: tuple[RGB, ...] = ((240, 200, 170), (200, 150, 110), (140, 95, 60), (90, 60, 40))
HAIR_COLOURS: tuple[RGB, ...] = ((20, 15, 10), (70, 45, 25), (130, 100, 60), (160, 160, 160))
REFLECTIVE = (225, 225, 225)
CONE_ORANGE = (250, 90, 10)


@dataclass(frozen=True, slots=True)
class YoloBox:
    class_id: int
    x_center: float
    y_center: float
    width: float
    height: float

    def line(self) -> str:
        return f"{self.class_id} {self.x_center:.6f} {self.y_center:.6f} {self.width:.6f} {self.height:.6f}"


@dataclass(frozen=True, slots=True)
class SyntheticFrame:
    image: np.ndarray  # (size, size, 3) uint8
    boxes: tuple[YoloBox, ...]

    @property
    def no_hardhat(self) -> bool:
        return any(b.class_id == PpeClass.NO_HARDHAT for b in self.boxes)

    @property
    def no_vest(self) -> bool:
        return any(b.class_id == PpeClass.NO_SAFETY_VEST for b in self.boxes)

    @property
    def violation(self) -> bool:
        return self.no_hardhat or self.no_vest


def _pick(rng: np.random.Generator, colours: Sequence[RGB]) -> RGB:
    return colours[int(rng.integers(len(colours)))]


def _jitter(rng: np.random.Generator, colour: RGB, amount: int = 18) -> RGB:
    r, g, b = (int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)
    return (r, g, b)


def _yolo(class_id: int, box: tuple[float, float, float, float], size: int) -> YoloBox:
    x0, y0, x1, y1 = (min(max(v, 0.0), float(size)) for v in box)
    return YoloBox(class_id, (x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size)


def _draw_background(rng: np.random.Generator, size: int) -> Image.Image:
    """Sky over ground at a random horizon, a few blocks (buildings, machines), then noise."""
    horizon = int(size * rng.uniform(0.2, 0.6))
    sky, ground = _jitter(rng, (150, 180, 210), 50), _jitter(rng, (120, 110, 95), 45)
    rows = np.empty((size, 3), np.float32)
    rows[:horizon] = sky
    rows[horizon:] = ground
    rows *= np.linspace(0.85, 1.1, size, dtype=np.float32)[:, None]
    canvas = Image.fromarray(np.repeat(np.clip(rows, 0, 255).astype(np.uint8)[:, None, :], size, axis=1))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(0, 5))):
        w, h = size * rng.uniform(0.08, 0.35), size * rng.uniform(0.08, 0.45)
        x0, y1 = rng.uniform(-0.1, 0.9) * size, horizon + rng.uniform(-0.05, 0.3) * size
        grey = int(rng.integers(60, 200))
        draw.rectangle((x0, y1 - h, x0 + w, y1), fill=_jitter(rng, (grey, grey, grey - 10), 25))
    return canvas


def _draw_cone(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> YoloBox:
    h = size * rng.uniform(0.06, 0.14)
    cx, base = rng.uniform(0.05, 0.95) * size, rng.uniform(0.6, 0.98) * size
    draw.polygon([(cx - h * 0.35, base), (cx + h * 0.35, base), (cx, base - h)], fill=_jitter(rng, CONE_ORANGE, 10))
    draw.rectangle((cx - h * 0.2, base - h * 0.55, cx + h * 0.2, base - h * 0.4), fill=REFLECTIVE)
    return _yolo(PpeClass.SAFETY_CONE, (cx - h * 0.35, base - h, cx + h * 0.35, base), size)


def _draw_person(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    size: int,
    *,
    cx: float,
    height: float,
    hardhat: bool,
    vest: bool,
) -> list[YoloBox]:
    """A standing figure centred at `cx`, feet at a random level; its Person, head and torso boxes."""
    feet = min(size * rng.uniform(0.55, 1.05), size + height * 0.2)
    top = feet - height
    head_r = height * 0.075
    head_cy = top + height * 0.05 + head_r
    shoulder, hip = head_cy + head_r * 1.2, top + height * 0.55
    half_w = height * 0.13
    clothes, trousers = _pick(rng, CLOTHES_COLOURS), _jitter(rng, _pick(rng, CLOTHES_COLOURS[:4]), 10)
    # legs, arms, torso, head
    draw.rectangle((cx - half_w * 0.9, hip, cx - half_w * 0.1, feet), fill=trousers)
    draw.rectangle((cx + half_w * 0.1, hip, cx + half_w * 0.9, feet), fill=trousers)
    arm = half_w * 0.35
    draw.rectangle((cx - half_w - arm, shoulder, cx - half_w, hip + height * 0.05), fill=clothes)
    draw.rectangle((cx + half_w, shoulder, cx + half_w + arm, hip + height * 0.05), fill=clothes)
    draw.rectangle((cx - half_w, shoulder, cx + half_w, hip), fill=clothes)
    if vest:
        colour = _jitter(rng, _pick(rng, VEST_COLOURS), 12)
        draw.rectangle((cx - half_w, shoulder, cx + half_w, hip - (hip - shoulder) * 0.05), fill=colour)
        band = (hip - shoulder) * 0.08
        for level in (0.45, 0.75):
            y = shoulder + (hip - shoulder) * level
            draw.rectangle((cx - half_w, y, cx + half_w, y + band), fill=REFLECTIVE)
    skin = _jitter(rng, _pick(rng, SKIN_COLOURS), 10)
    draw.ellipse((cx - head_r, head_cy - head_r, cx + head_r, head_cy + head_r), fill=skin)
    head_top = head_cy - head_r
    if hardhat:
        hat_r = head_r * 1.2
        colour = _jitter(rng, _pick(rng, HAT_COLOURS), 8)
        draw.pieslice((cx - hat_r, head_cy - hat_r * 1.25, cx + hat_r, head_cy + hat_r * 0.75), 180, 360, fill=colour)
        brim = (cx - hat_r * 1.15, head_cy - hat_r * 0.3, cx + hat_r * 1.15, head_cy - hat_r * 0.2)
        draw.rectangle(brim, fill=colour)
        head_top = head_cy - hat_r * 1.25
    elif rng.random() < 0.7:
        hair = _pick(rng, HAIR_COLOURS)
        draw.chord((cx - head_r, head_cy - head_r, cx + head_r, head_cy + head_r * 0.6), 180, 360, fill=hair)
    head_box = (cx - head_r * 1.4, head_top, cx + head_r * 1.4, head_cy + head_r)
    torso_box = (cx - half_w - arm, shoulder, cx + half_w + arm, hip + height * 0.05)
    person_box = (cx - half_w - arm, top, cx + half_w + arm, feet)
    return [
        _yolo(PpeClass.PERSON, person_box, size),
        _yolo(PpeClass.HARDHAT if hardhat else PpeClass.NO_HARDHAT, head_box, size),
        _yolo(PpeClass.SAFETY_VEST if vest else PpeClass.NO_SAFETY_VEST, torso_box, size),
    ]


def draw_synthetic_frame(
    rng: np.random.Generator,
    size: int = 128,
    *,
    max_people: int = 3,
    empty_share: float = 0.2,
    hardhat_share: float = 0.65,
    vest_share: float = 0.65,
) -> SyntheticFrame:
    """One site frame: background, maybe cones, 0..max_people figures each with or without hat and vest.

    Each figure gets its own horizontal slot, so people overlap a little but rarely hide each other;
    they are drawn small (far) to tall (near) so nearer ones cover farther ones. Labels follow the real
    data: Person, Hardhat or NO-Hardhat (head), Safety Vest or NO-Safety Vest (torso), Safety Cone.
    """
    canvas = _draw_background(rng, size)
    draw = ImageDraw.Draw(canvas)
    boxes = [_draw_cone(draw, rng, size) for _ in range(int(rng.integers(0, 3)))]
    n_people = 0 if rng.random() < empty_share else int(rng.integers(1, max_people + 1))
    people = [(bool(rng.random() < hardhat_share), bool(rng.random() < vest_share)) for _ in range(n_people)]
    slots = rng.permutation(n_people)
    centres = [(0.05 + 0.9 * (slot + rng.uniform(0.25, 0.75)) / n_people) * size for slot in slots]
    heights = rng.uniform(0.28, 0.75, n_people) * size
    for index in np.argsort(heights, kind="stable"):
        hardhat, vest = people[index]
        boxes += _draw_person(
            draw, rng, size, cx=centres[index], height=float(heights[index]), hardhat=hardhat, vest=vest
        )
    pixels = np.asarray(canvas, dtype=np.int16) + rng.integers(-6, 7, (size, size, 3), dtype=np.int16)
    return SyntheticFrame(image=np.clip(pixels, 0, 255).astype(np.uint8), boxes=tuple(boxes))


def write_synthetic_folder(out_dir: Path, n_frames: int, *, seed: int = 0, size: int = 128) -> Path:
    """`n_frames` synthetic frames as `out_dir/images/*.jpg` and `out_dir/labels/*.txt`; returns out_dir."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "labels").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(n_frames):
        frame = draw_synthetic_frame(rng, size)
        stem = f"synthetic-{seed}-{index:05d}"
        (out_dir / "images" / f"{stem}.jpg").write_bytes(encode_jpeg(frame.image, quality=90))
        (out_dir / "labels" / f"{stem}.txt").write_text("".join(f"{box.line()}\n" for box in frame.boxes))
    return out_dir


@dataclass(frozen=True, slots=True)
class CameraFrame:
    """One simulated camera picture with its ground truth (what a correct model should say)."""

    jpeg: bytes
    width: int
    height: int
    boxes: tuple[YoloBox, ...]
    no_hardhat: bool
    no_vest: bool
    violation: bool


def synthetic_camera_frame(seed: int, width: int = 128, quality: int = 80) -> CameraFrame:
    """A small JPEG (a few kB at 128 px) of a synthetic site frame, deterministic for a seed."""
    frame = draw_synthetic_frame(np.random.default_rng(seed), width)
    return CameraFrame(
        jpeg=encode_jpeg(frame.image, quality=quality),
        width=width,
        height=width,
        boxes=frame.boxes,
        no_hardhat=frame.no_hardhat,
        no_vest=frame.no_vest,
        violation=frame.violation,
    )
