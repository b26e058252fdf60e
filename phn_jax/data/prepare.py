"""Prepares a dataset as array_record for `tfds.data_source`: `make data DATASET=<name>`.

  python -m phn_jax.data.prepare DATASET [--data_dir DIR] [--manual_dir DIR]

Nothing here needs TensorFlow. Our builders read the official files from the manual directory:
tiny_imagenet and gtsrb (archives copied by hand), and the catalogue datasets cifar10, cifar100,
mnist, fashion_mnist and svhn_cropped (`phn_jax.data.catalogue`: the official archives, downloaded
into the manual directory when they are not there and the machine is online). Reading them back
with `tfds.data_source` never imports TensorFlow either. Any other dataset of the tfds catalogue (for
the class_split stream) is built by tfds itself, which downloads it (or reads a manual directory
where its builder asks for one).
"""
from __future__ import annotations

import argparse
import os
import sys

import tensorflow_datasets as tfds

from phn_jax.data import catalogue, tfds_io


class PreparationError(RuntimeError):
    """A dataset could not be prepared; the message says why and what to do."""


def prepare(name: str, data_dir: str | None = None, manual_dir: str | None = None) -> str:
    """Prepares dataset `name` as array_record in `data_dir`; returns the prepared directory.

    Args:
      name: a key of `tfds_io.DATASETS`, or any image-classification dataset of the tfds catalogue.
      data_dir: tfds data directory (None: $TFDS_DATA_DIR or ~/tensorflow_datasets).
      manual_dir: directory with archives copied by hand (None: <data_dir>/downloads/manual).

    Raises:
      PreparationError: the archives of tiny_imagenet or gtsrb are missing, or a download failed.
      ValueError: a file is not in its official format.
    """
    spec = tfds_io.dataset_spec(name)
    data_dir = tfds_io.resolve_data_dir(data_dir)
    manual_dir = os.path.abspath(os.path.expanduser(manual_dir or os.path.join(data_dir, "downloads", "manual")))
    if spec.ours and (not os.path.isdir(manual_dir) or not os.listdir(manual_dir)):
        raise PreparationError(
            f"{name!r} is prepared from the official archive(s) {', '.join(spec.archives)} (or their "
            f"extracted contents), copied by hand into the manual directory {manual_dir}, which is "
            f"empty or missing. Then run: make data DATASET={name} MANUAL_DIR=<that directory>"
        )
    with tfds_io.contained_tempdirs():
        if name in catalogue.BUILDERS:
            builder = catalogue.BUILDERS[name](data_dir=data_dir, file_format="array_record")
        else:
            builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    except FileNotFoundError as error:
        raise PreparationError(f"cannot prepare {name!r}: {error}") from None
    except OSError as error:  # connection failures are OSErrors (requests, urllib, socket)
        files = ", ".join(catalogue.FILES[name][1]) if name in catalogue.FILES else "its archive"
        raise PreparationError(
            f"cannot download {name!r} ({type(error).__name__}: {error}). Without network, copy {files} "
            f"into {manual_dir} and rerun."
        ) from None
    return os.fspath(builder.data_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="one of: " + ", ".join(sorted(tfds_io.DATASETS)) + ", or a tfds catalogue name")
    parser.add_argument("--data_dir", default=None, help="tfds data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    parser.add_argument("--manual_dir", default=None, help="directory holding archives copied by hand")
    args = parser.parse_args(argv)
    try:
        path = prepare(args.dataset, args.data_dir or None, args.manual_dir or None)
    except (PreparationError, ValueError) as error:
        print(f"make data: {error}", file=sys.stderr)
        return 2
    print(f"prepared {args.dataset} in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
