"""Our tfds builder for Tiny ImageNet (200 classes, 64×64 RGB), absent from the tfds catalogue.

It prepares the official archive `tiny-imagenet-200.zip` (or its extracted folder) from a manual
directory into array_record shards, without TensorFlow: images are stored as their original
encoded bytes (grayscale JPEGs, a few hundred of them, are converted to RGB PNG).

Archive layout (inside `tiny-imagenet-200/`):
  wnids.txt                                  the 200 WordNet ids, one per line; label = line index
  train/<wnid>/images/<wnid>_<k>.JPEG        500 training images per class
  val/images/val_<k>.JPEG                    10,000 validation images
  val/val_annotations.txt                    "<file>\t<wnid>\t<x0>\t<y0>\t<x1>\t<y1>" per line
The unlabelled `test/` folder is not used. Splits: `train` (100,000) and `validation` (10,000),
which the streams use as the test set (as Avalanche's SplitTinyImageNet does).
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from phn_jax.data.archives import ArchiveBuilder, open_archive, rgb_image_bytes

ARCHIVE = "tiny-imagenet-200.zip"
ROOT = "tiny-imagenet-200"
IMAGE_SIZE = (64, 64)
NUM_CLASSES = 200


class TinyImagenet(ArchiveBuilder):
    """Tiny ImageNet from the official archive in the manual directory."""

    name = "tiny_imagenet"
    IMAGE_SHAPE = (*IMAGE_SIZE, 3)
    NUM_CLASSES = NUM_CLASSES
    SPLITS = ("train", "validation")
    DESCRIPTION = "Tiny ImageNet: 200 ImageNet classes at 64x64, 500 train and 50 validation images each."
    HOMEPAGE = "http://cs231n.stanford.edu/"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Train and validation splits of tiny-imagenet-200.zip."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Copy {ARCHIVE} (http://cs231n.stanford.edu/{ARCHIVE}), or the folder {ROOT}/ extracted
    from it, into the manual directory (make data DATASET=tiny_imagenet MANUAL_DIR=<dir>).
    """

    def _generate_examples(self, manual_dir: str, split: str):
        """Yields (archive path, {"image": encoded RGB bytes, "label": wnids.txt index})."""
        with open_archive(manual_dir, ARCHIVE, f"{ROOT}/wnids.txt") as archive:
            wnids = archive.read_text(f"{ROOT}/wnids.txt").split()
            if len(wnids) != NUM_CLASSES or len(set(wnids)) != NUM_CLASSES:
                raise ValueError(f"{ROOT}/wnids.txt must list {NUM_CLASSES} distinct wnids, got {len(wnids)}")
            label_of = {wnid: i for i, wnid in enumerate(wnids)}
            for path, wnid in _labelled_files(archive, split, wnids):
                if wnid not in label_of:
                    raise ValueError(f"{path}: wnid {wnid!r} is not in wnids.txt")
                image = rgb_image_bytes(archive.read(path), path, IMAGE_SIZE)
                yield path, {"image": image, "label": label_of[wnid]}


def _labelled_files(archive, split: str, wnids: list[str]) -> list[tuple[str, str]]:
    """[(path in the archive, wnid)] of one split ("train" or "validation"), sorted by path."""
    files = []
    if split == "train":
        wnid_of = {f"{ROOT}/train/{wnid}/images": wnid for wnid in wnids}
        for name in archive.names:
            folder, _, file_name = name.rpartition("/")
            if name.startswith(f"{ROOT}/train/") and file_name.endswith(".JPEG"):
                if folder not in wnid_of:
                    raise ValueError(f"{name}: training image outside train/<wnid>/images/ of a listed wnid")
                files.append((name, wnid_of[folder]))
    else:
        for line in archive.read_text(f"{ROOT}/val/val_annotations.txt").splitlines():
            if line.strip():
                file_name, wnid = line.split("\t")[:2]
                files.append((f"{ROOT}/val/images/{file_name}", wnid))
    if not files:
        raise ValueError(f"no {split} images in {archive.describe()}")
    return sorted(files)
