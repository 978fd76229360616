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
from pathlib import Path

from factory_pipelines.ppe_images import held_out_frame_ids, label_file, read_yolo_folder

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ppe"


def link_frame(image: Path, folder: Path) -> None:
    """Link the image and, when it has one, its label file into `folder`'s YOLO layout."""
    for source, kind in ((image, "images"), (label_file(image), "labels")):
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
    frames = read_yolo_folder(args.data_dir / "train_subset").frames
    held = held_out_frame_ids(frames, {True: args.frames // 2, False: args.frames - args.frames // 2}, args.seed)
    for frame_id, image_path in frames.select("frame_id", "image_path").iter_rows():
        link_frame(Path(image_path), args.out / ("test" if frame_id in held else "train/train_subset"))
    (args.out / "train" / "valid").symlink_to((args.data_dir / "valid").resolve())
    violating = frames.filter(frames["frame_id"].is_in(held))["violation"].sum()
    print(f"held out {len(held)} frames ({violating} violating) in {args.out / 'test'}")
    print(f"train on {args.out / 'train'}")


if __name__ == "__main__":
    main()
