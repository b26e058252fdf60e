"""Our tfds builder for GTSRB (German Traffic Sign Recognition Benchmark, 43 classes).

The tfds catalogue holds GTSRB only inside `visual_domain_decathlon` (images rescaled to 72
pixels, test labels withheld), so this builder prepares the official archives from a manual
directory into array_record, without TensorFlow. Images keep their original sizes (15×15 to
250×250); they are converted from PPM to PNG. The streams resize them to 32×32.

Archives (each the zip itself or its extracted contents, in the manual directory):
  GTSRB_Final_Training_Images.zip  GTSRB/Final_Training/Images/<class:05d>/*.ppm and
                                   GTSRB/Final_Training/Images/<class:05d>/GT-<class:05d>.csv
  GTSRB_Final_Test_Images.zip      GTSRB/Final_Test/Images/<k:05d>.ppm
  GTSRB_Final_Test_GT.zip          GT-final_test.csv
The CSV files are ';'-separated with a header naming the columns `Filename` and `ClassId`.
Splits: `train` (39,209 images) and `test` (12,630).
"""

from __future__ import annotations

import csv
import io

import tensorflow_datasets as tfds

from phn_jax.data.archives import Archive, ArchiveBuilder, open_archive, rgb_image_bytes

TRAIN_ARCHIVE = "GTSRB_Final_Training_Images.zip"
TEST_ARCHIVE = "GTSRB_Final_Test_Images.zip"
TEST_GT_ARCHIVE = "GTSRB_Final_Test_GT.zip"
ARCHIVES = (TRAIN_ARCHIVE, TEST_ARCHIVE, TEST_GT_ARCHIVE)
NUM_CLASSES = 43
_TRAIN_DIR = "GTSRB/Final_Training/Images"
_TEST_DIR = "GTSRB/Final_Test/Images"
_TEST_GT = "GT-final_test.csv"


class Gtsrb(ArchiveBuilder):
    """GTSRB from the official archives in the manual directory."""

    name = "gtsrb"
    NUM_CLASSES = NUM_CLASSES
    SPLITS = ("train", "test")
    DESCRIPTION = "GTSRB: photographs of 43 classes of German traffic signs."
    HOMEPAGE = "https://benchmark.ini.rub.de/gtsrb_dataset.html"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Final training and test sets of the official GTSRB archives."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Copy {", ".join(ARCHIVES)} (https://benchmark.ini.rub.de/gtsrb_dataset.html), or their
    extracted contents, into the manual directory (make data DATASET=gtsrb MANUAL_DIR=<dir>).
    """

    def _generate_examples(self, manual_dir: str, split: str):
        """Yields (archive path, {"image": RGB PNG bytes, "label": ClassId})."""
        if split == "train":
            with open_archive(manual_dir, TRAIN_ARCHIVE, f"{_TRAIN_DIR}/00000/GT-00000.csv") as archive:
                for path, label in _train_files(archive):
                    yield path, _example(archive, path, label)
        else:
            with open_archive(manual_dir, TEST_GT_ARCHIVE, _TEST_GT) as gt:
                labels = _read_labels(gt, _TEST_GT)
            with open_archive(manual_dir, TEST_ARCHIVE, f"{_TEST_DIR}/00000.ppm") as archive:
                for file_name, label in sorted(labels.items()):
                    path = f"{_TEST_DIR}/{file_name}"
                    yield path, _example(archive, path, label)


def _example(archive: Archive, path: str, label: int) -> dict:
    if not 0 <= label < NUM_CLASSES:
        raise ValueError(f"{path}: ClassId {label} outside 0..{NUM_CLASSES - 1}")
    return {"image": rgb_image_bytes(archive.read(path), path), "label": label}


def _read_labels(archive: Archive, csv_path: str) -> dict[str, int]:
    """{Filename: ClassId} of one ';'-separated GTSRB annotation file."""
    rows = csv.DictReader(io.StringIO(archive.read_text(csv_path)), delimiter=";")
    labels = {row["Filename"]: int(row["ClassId"]) for row in rows}
    if not labels:
        raise ValueError(f"{csv_path} in {archive.describe()} lists no images")
    return labels


def _train_files(archive: Archive) -> list[tuple[str, int]]:
    """[(path, ClassId)] of every training image, from the per-class GT-<class>.csv files."""
    csv_paths = sorted(
        n for n in archive.names if n.startswith(f"{_TRAIN_DIR}/") and n.rsplit("/", 1)[1].startswith("GT-")
    )
    files = []
    for csv_path in csv_paths:
        folder = csv_path.rsplit("/", 1)[0]
        files += [(f"{folder}/{f}", label) for f, label in _read_labels(archive, csv_path).items()]
    return sorted(files)
