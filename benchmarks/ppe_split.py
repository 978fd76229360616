"""A second development split for `ppe_vision`, from the other side of the data: frames of `train_subset/` held out.

The first split trains on `train_subset/` and scores `valid/`. This one holds out `--frames` frames
of `train_subset/` (half violating, half compliant), and trains on the rest of it plus all of
`valid/`, as `factory benchmark ppe` does when a train dir holds both folders. YouTube frames are
held out in blocks of 100 frame numbers and the frames of a clip (`..._mp4-15_jpg...`) all
together, so no neighbour of a held-out frame is trained on. The folders hold symbolic links to
the dataset's files (nothing is copied):

    OUT/train/train_subset/{images,labels}   OUT/train/valid -> valid/   OUT/test/{images,labels}

    .venv/bin/python benchmarks/ppe_split.py --out /tmp/ppe_s2
    factory benchmark ppe --train-dir /tmp/ppe_s2/train --test-dir /tmp/ppe_s2/test --json
"""

from __future__ import annotations

import argparse
import random
import re
from pathlib import Path

from factory_pipelines.ppe_images import IMAGE_SUFFIXES, PpeClass

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ppe"
VIOLATING = {int(PpeClass.NO_HARDHAT), int(PpeClass.NO_SAFETY_VEST)}
YOUTUBE_FRAME = re.compile(r"youtube-(\d+)")
YOUTUBE_BLOCK = 100  # neighbouring video frames are near-duplicates: held out or kept together
VIDEO_FRAME = re.compile(r"(?P<video>.+_(?:mp4|mov))-\d+_", re.IGNORECASE)  # e.g. IMG_3103_mp4-15_jpg...


def label_path(image: Path) -> Path:
    return image.parent.parent / "labels" / f"{image.stem}.txt"


def is_violating(image: Path) -> bool:
    labels = label_path(image)
    if not labels.exists():
        return False
    return any(int(line.split()[0]) in VIOLATING for line in labels.read_text().splitlines() if line.strip())


def source_group(image: Path) -> str:
    """Frames that must stay on one side: a block of the YouTube frames, a clip, else the source image."""
    youtube = YOUTUBE_FRAME.match(image.name)
    if youtube:
        return f"youtube-block-{int(youtube.group(1)) // YOUTUBE_BLOCK}"
    clip = VIDEO_FRAME.match(image.name)
    return clip.group("video") if clip else image.name.split(".rf.")[0]


def held_out_frames(images: list[Path], frames: int, seed: int) -> set[Path]:
    """Whole groups, in a seeded order, while each verdict still has room for `frames` / 2."""
    groups: dict[str, list[Path]] = {}
    for image in images:
        groups.setdefault(source_group(image), []).append(image)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    room = {True: frames // 2, False: frames - frames // 2}
    held: set[Path] = set()
    for name in order:
        members = groups[name]
        needed = {verdict: sum(is_violating(m) == verdict for m in members) for verdict in room}
        if all(needed[verdict] <= room[verdict] for verdict in room):
            held.update(members)
            room = {verdict: room[verdict] - needed[verdict] for verdict in room}
        if not any(room.values()):
            break
    return held


def link_frame(image: Path, folder: Path) -> None:
    for source, kind in ((image, "images"), (label_path(image), "labels")):
        if source.exists():
            target = folder / kind / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source.resolve())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DATA, help="the dataset (train_subset/ and valid/)")
    parser.add_argument("--out", type=Path, required=True, help="an empty or new folder for the split")
    parser.add_argument("--frames", type=int, default=114, help="frames held out (valid/ has 114)")
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} is not empty")
    images = sorted(p for p in (args.data_dir / "train_subset" / "images").iterdir() if p.suffix in IMAGE_SUFFIXES)
    held = held_out_frames(images, args.frames, args.seed)
    for image in images:
        link_frame(image, args.out / ("test" if image in held else "train/train_subset"))
    (args.out / "train" / "valid").symlink_to((args.data_dir / "valid").resolve())
    violating = sum(is_violating(image) for image in held)
    print(f"held out {len(held)} frames ({violating} violating) in {args.out / 'test'}")
    print(f"train on {args.out / 'train'}")


if __name__ == "__main__":
    main()
