"""Reading image-classification datasets through `tfds.data_source` (array_record, no TensorFlow).

`DATASETS` is the one table of every tfds dataset the paper's streams read: its splits, class count,
normalisation statistics and whether it is in the tfds catalogue (prepared by our builders of
`phn_jax.data.catalogue`, which download the official files) or only ours (`tiny_imagenet`, `gtsrb`,
prepared from archives copied by hand into a manual directory). Any other image-classification
dataset of the tfds catalogue gets its spec from its tfds info (`catalogue_spec`: the class_split
stream), without normalisation statistics (the stream computes them from its training images).

Reading never imports TensorFlow: `tfds.data_source` reads array_record shards and decodes the
images with PIL. A dataset that is not prepared in `data_dir` raises `DatasetNotFoundError`,
which names the dataset, the directory searched and the command that prepares it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import tempfile

import numpy as np
import tensorflow_datasets as tfds

from phn_jax.data import arrays
# Importing our builders registers them with tfds (also under `tfds.testing.mock_data`).
from phn_jax.data import gtsrb as _gtsrb  # noqa: F401
from phn_jax.data import tiny_imagenet as _tiny_imagenet  # noqa: F401


class DatasetNotFoundError(FileNotFoundError):
    """A dataset a stream needs is not prepared (as array_record) in the data directory."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a stream needs to know of one tfds dataset.

    Attributes:
      name: the tfds name.
      train_split, test_split: the tfds splits used as an experience's train and test sets.
      num_classes: the number of classes (labels 0..num_classes−1).
      mean, std: per-channel normalisation statistics of images scaled to [0, 1] (None: not known;
        computed from the training images where used).
      ours: True for the datasets our own builders prepare from a manual directory.
      archives: the files `make data` expects in the manual directory for our builders.
      image_key, label_key: the features holding the image and its class (tfds' supervised keys).
      image_shape: (H, W, C) as tfds states it (None for a side whose size varies).
    """

    name: str
    train_split: str
    test_split: str
    num_classes: int
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    ours: bool = False
    archives: tuple[str, ...] = ()
    image_key: str = "image"
    label_key: str = "label"
    image_shape: tuple[int | None, ...] | None = None


CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("cifar10", "train", "test", 10, *CIFAR10_STATS),
        DatasetSpec("cifar100", "train", "test", 100, *CIFAR100_STATS),
        DatasetSpec("mnist", "train", "test", 10, (0.1307,), (0.3081,)),
        DatasetSpec("fashion_mnist", "train", "test", 10, (0.2860,), (0.3530,)),
        DatasetSpec(
            "svhn_cropped", "train", "test", 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
        ),
        DatasetSpec(
            "gtsrb",
            "train",
            "test",
            43,
            (0.3403, 0.3121, 0.3214),
            (0.2724, 0.2608, 0.2669),
            ours=True,
            archives=_gtsrb.ARCHIVES,
        ),
        # The reference code normalises TinyImageNet with CIFAR-10's statistics.
        DatasetSpec(
            "tiny_imagenet",
            "train",
            "validation",
            200,
            *CIFAR10_STATS,
            ours=True,
            archives=(_tiny_imagenet.ARCHIVE,),
        ),
    )
}


def dataset_spec(name: str) -> DatasetSpec:
    """The `DatasetSpec` of a dataset name: ours (`DATASETS`), or any image-classification dataset of
    the tfds catalogue (`catalogue_spec`); ValueError naming what is wrong otherwise."""
    if name in DATASETS:
        return DATASETS[name]
    return catalogue_spec(name)


@functools.lru_cache(maxsize=None)
def catalogue_spec(name: str) -> DatasetSpec:
    """The spec of tfds dataset `name` ('kmnist', 'eurosat/rgb', ...: a config after '/') read from its
    tfds info: its supervised keys, a tfds Image and a ClassLabel feature; its image shape and
    number of classes; splits 'train' and 'test'. ValueError for a name tfds does not know or a
    dataset that is not image classification."""
    try:
        with contained_tempdirs():
            info = tfds.builder(name, data_dir=os.path.join(tempfile.gettempdir(), "info-only")).info
    except (tfds.core.registered.DatasetNotFoundError, ValueError) as error:
        raise ValueError(f"unknown dataset {name!r}: neither one of phn_jax's ({', '.join(sorted(DATASETS))}) nor in "
                         f"the tfds catalogue ({str(error).splitlines()[0][:200]})") from None
    keys, features = info.supervised_keys, info.features
    if not (isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) and k in features for k in keys)
            and isinstance(features[keys[0]], tfds.features.Image)
            and isinstance(features[keys[1]], tfds.features.ClassLabel)):
        raise ValueError(f"tfds dataset {name!r} is not image classification as a stream needs it: its supervised keys "
                         f"{keys!r} must name an Image feature and a ClassLabel feature")
    image, label = info.features[keys[0]], info.features[keys[1]]
    return DatasetSpec(name, "train", "test", int(label.num_classes), None, None, image_key=keys[0],
                       label_key=keys[1], image_shape=tuple(image.shape))


def resolve_data_dir(data_dir: str | os.PathLike | None) -> str:
    """The tfds data directory: `data_dir` if given, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    if data_dir is None:
        return tfds.core.constants.get_default_data_dir()
    return os.path.abspath(os.path.expanduser(os.fspath(data_dir)))


def prepare_command(name: str, data_dir: str) -> str:
    """The shell command that prepares `name` into `data_dir`."""
    command = f"make data DATASET={name}"
    if data_dir != tfds.core.constants.get_default_data_dir():
        command += f" DATA_DIR={data_dir}"
    spec = dataset_spec(name)
    if spec.ours:
        command += " MANUAL_DIR=<directory holding " + " and ".join(spec.archives) + ">"
    return command


def prepared_formats(name: str, data_dir: str) -> dict[str, str]:
    """{version: file format} of every prepared version of `name` found in `data_dir`."""
    root = os.path.join(data_dir, name)
    found = {}
    if os.path.isdir(root):
        for version in sorted(os.listdir(root)):
            info_path = os.path.join(root, version, "dataset_info.json")
            if os.path.isfile(info_path):
                with open(info_path) as f:
                    found[version] = json.load(f).get("fileFormat", "tfrecord")
    return found


def _not_found(name: str, data_dir: str) -> DatasetNotFoundError:
    formats = prepared_formats(name, data_dir)
    found = (
        f" It is there only as {formats}; data_source reads array_record."
        if formats
        else ""
    )
    return DatasetNotFoundError(
        f"dataset {name!r} is not prepared in the data directory {data_dir}.{found} "
        f"Prepare it with: {prepare_command(name, data_dir)} "
        "(or point data_dir / $TFDS_DATA_DIR at a directory that holds it)."
    )


@contextlib.contextmanager
def contained_tempdirs():
    """Temporary files and directories made inside one that is removed on exit. tfds leaves an empty
    `tmp*tfds` directory in the system temp dir for each builder of a dataset not yet prepared
    (`DatasetInfo.initialize_from_bucket`); building one inside this leaves nothing behind."""
    with tempfile.TemporaryDirectory(prefix="phn_jax-tfds-") as directory:
        outer, tempfile.tempdir = tempfile.tempdir, directory
        try:
            yield
        finally:
            tempfile.tempdir = outer


def open_split(name: str, split: str, data_dir: str | os.PathLike | None):
    """`tfds.data_source(name, split)` read from `data_dir` without downloading anything.

    Raises:
      DatasetNotFoundError: the dataset is not prepared as array_record in `data_dir`.
    """
    dataset_spec(name)
    directory = resolve_data_dir(data_dir)
    try:
        with contained_tempdirs():
            return tfds.data_source(name, split=split, data_dir=directory, download=False)
    except (NotImplementedError, AssertionError, FileNotFoundError, tfds.core.DatasetNotFoundError):
        # tfds reports a missing dataset as "random access ... not supported for TFRECORD".
        if "array_record" in prepared_formats(name, directory).values():
            raise
        raise _not_found(name, directory) from None


def require(names, data_dir: str | os.PathLike | None, splits: tuple[str, str] | None = None) -> None:
    """Checks that every dataset of `names` is prepared, before anything is read: its train and
    test splits (`splits`, or the spec's).

    Raises:
      DatasetNotFoundError: naming every missing dataset, each with its preparation command.
    """
    missing = []
    for name in names:
        spec = dataset_spec(name)
        try:
            for split in splits or (spec.train_split, spec.test_split):
                open_split(name, split, data_dir)
        except DatasetNotFoundError as error:
            missing.append(str(error))
    if missing:
        raise DatasetNotFoundError("\n".join(missing))


def read_split(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None,
    size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """All examples of one split as arrays.

    Args:
      name: tfds dataset name (a key of `DATASETS`).
      split: tfds split name.
      data_dir: tfds data directory (None: $TFDS_DATA_DIR or ~/tensorflow_datasets).
      size: (h, w) to resize every image to (bilinear, `arrays.resize_bilinear`); None keeps
        the stored size, which must then be the same for every image.

    Returns:
      images uint8 [N, h, w, C] and labels int32 [N] (the dataset's class ids), in storage order.
    """
    spec = dataset_spec(name)
    source = open_split(name, split, data_dir)
    examples = [source[i] for i in range(len(source))]
    images = [np.asarray(ex[spec.image_key], dtype=np.uint8) for ex in examples]
    labels = np.asarray([ex[spec.label_key] for ex in examples], dtype=np.int32)
    if size is None:
        sizes = {im.shape for im in images}
        if len(sizes) > 1:
            raise ValueError(f"the images of {name} ({split}) have different shapes ({len(sizes)} of them, e.g. "
                             f"{sorted(sizes)[:3]}): give the stream an image size (--config.data.image_size=32)")
        return np.stack(images), labels
    return arrays.stack_resized(images, size), labels


