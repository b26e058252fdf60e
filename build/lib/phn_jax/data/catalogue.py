"""tfds catalogue datasets (cifar10, cifar100, mnist, fashion_mnist, svhn_cropped) prepared without
TensorFlow, from their official archives.

tfds's own builders for these datasets read their downloads with `tf.io.gfile` and encode images
with `tf.image.encode_png`, so preparing them needs TensorFlow. Each builder here is the catalogue
builder's subclass (the same name, version and features, so `tfds.data_source(name)` reads what it
writes like any prepared copy) with its own example generation: the official files are parsed with
the standard library, NumPy and SciPy, images encoded as PNG by PIL. The files are taken from the
manual directory, where the user may have copied them (the archive itself, or for CIFAR its
extracted folder); a missing file is downloaded there from its official URL first.

Official files (`FILES`):
  cifar10        cifar-10-binary.tar.gz: cifar-10-batches-bin/data_batch_{1..5}.bin, test_batch.bin;
                 records of 1 label byte + 3072 pixel bytes (the R, G, B planes of 32×32, row-major)
  cifar100       cifar-100-binary.tar.gz: cifar-100-binary/train.bin, test.bin; records of the
                 coarse label byte, the fine label byte, 3072 pixel bytes
  mnist,         train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz,
  fashion_mnist  t10k-labels-idx1-ubyte.gz: IDX files (big-endian magic 0x0803 images [N, 28, 28],
                 0x0801 labels [N]), gzipped
  svhn_cropped   train_32x32.mat, test_32x32.mat: MATLAB files with X uint8 [32, 32, 3, N] and
                 y [N, 1] in 1..10 (10 is the digit 0)
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import tarfile
import types
import urllib.request

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
_IDX = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
# dataset: (base URL, the official files)
FILES = {
    "cifar10": (CIFAR_URL, ("cifar-10-binary.tar.gz",)),
    "cifar100": (CIFAR_URL, ("cifar-100-binary.tar.gz",)),
    "mnist": (MNIST_URL, _IDX["train"] + _IDX["test"]),
    "fashion_mnist": (FASHION_MNIST_URL, _IDX["train"] + _IDX["test"]),
    "svhn_cropped": (SVHN_URL, ("train_32x32.mat", "test_32x32.mat")),
}
_CIFAR_MEMBERS = {
    "cifar10": {"train": [f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)],
                "test": ["cifar-10-batches-bin/test_batch.bin"]},
    "cifar100": {"train": ["cifar-100-binary/train.bin"], "test": ["cifar-100-binary/test.bin"]},
}


def png(image: np.ndarray) -> bytes:
    """uint8 [H, W, C] (C = 1 or 3) as PNG bytes (lossless), as tfds's Image feature stores it."""
    out = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(out, format="PNG")
    return out.getvalue()


def official_file(manual_dir: str, dataset: str, name: str) -> str:
    """The path of official file `name` in `manual_dir`, downloaded from its URL first if missing
    (to a `.part` file renamed when complete). OSError if the download fails."""
    path = os.path.join(manual_dir, name)
    if not os.path.exists(path):
        os.makedirs(manual_dir, exist_ok=True)
        url = FILES[dataset][0] + name
        with urllib.request.urlopen(url, timeout=60) as response, open(path + ".part", "wb") as f:
            while chunk := response.read(1 << 20):
                f.write(chunk)
        os.replace(path + ".part", path)
    return path


# ------------------------------------------------------------------------------------------------
# The official formats


def cifar_records(data: bytes, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR binary batch: (labels uint8 [N, label_bytes], images uint8 [N, 32, 32, 3]).

    Each record is `label_bytes` label bytes then 3072 pixel bytes: the 1024 red, 1024 green and
    1024 blue values of the 32×32 image, row by row."""
    size = label_bytes + 3 * 32 * 32
    if len(data) % size:
        raise ValueError(f"a CIFAR binary batch holds records of {size} bytes; got {len(data)} bytes")
    records = np.frombuffer(data, np.uint8).reshape(-1, size)
    return records[:, :label_bytes], records[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def cifar_member(manual_dir: str, dataset: str, member: str) -> bytes:
    """A batch file of the CIFAR archive: from its extracted folder in `manual_dir`, else from the
    .tar.gz (downloaded if missing)."""
    extracted = os.path.join(manual_dir, *member.split("/"))
    if os.path.isfile(extracted):
        with open(extracted, "rb") as f:
            return f.read()
    with tarfile.open(official_file(manual_dir, dataset, FILES[dataset][1][0]), "r:gz") as tar:
        try:
            return tar.extractfile(member).read()
        except KeyError:
            raise ValueError(f"{FILES[dataset][1][0]} has no {member}: not the official archive") from None


def read_idx(data: bytes) -> np.ndarray:
    """An IDX file of unsigned bytes (magic 0x00 0x00 0x08 ndim, then ndim big-endian int32 sizes)."""
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"not an IDX file of unsigned bytes (magic {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}i", data[4 : 4 + 4 * ndim])
    values = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if values.size != int(np.prod(shape)):
        raise ValueError(f"IDX file of shape {shape} holds {values.size} values")
    return values.reshape(shape)


def read_svhn(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 32, 32, 3], labels [N] in 0..9) of an SVHN `*_32x32.mat` file."""
    from scipy.io import loadmat

    mat = loadmat(path)
    images = np.ascontiguousarray(np.transpose(mat["X"], (3, 0, 1, 2)), dtype=np.uint8)
    labels = mat["y"].reshape(-1).astype(np.int64) % 10  # the digit 0 is labelled 10
    return images, labels


# ------------------------------------------------------------------------------------------------
# The builders


class _FromOfficialFiles:
    """Mixin over a catalogue builder: its splits generated from the official files (see the module's
    docstring), never through TensorFlow. Subclasses define `_examples(manual_dir, split)`."""

    SPLITS = ("train", "test")

    def _split_generators(self, dl_manager):
        manual_dir = str(dl_manager.manual_dir)
        return {split: self._examples(manual_dir, split) for split in self.SPLITS}


def _cifar_examples(builder, manual_dir: str, split: str):
    dataset = builder.name
    label_bytes = 1 if dataset == "cifar10" else 2
    i = 0
    for member in _CIFAR_MEMBERS[dataset][split]:
        labels, images = cifar_records(cifar_member(manual_dir, dataset, member), label_bytes)
        for label, image in zip(labels, images):
            key, i = f"{split}_{i:05d}", i + 1
            example = {"id": key, "image": png(image), "label": int(label[-1])}
            if label_bytes == 2:
                example["coarse_label"] = int(label[0])
            yield key, example


def _idx_examples(builder, manual_dir: str, split: str):
    def read(name):
        with gzip.open(official_file(manual_dir, builder.name, name), "rb") as f:
            return read_idx(f.read())

    images_file, labels_file = _IDX[split]
    images, labels = read(images_file), read(labels_file)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images_file} holds {images.shape[0]} images, {labels_file} {labels.shape[0]} labels")
    for i, (image, label) in enumerate(zip(images, labels)):
        yield i, {"image": png(image[..., None]), "label": int(label)}


def _svhn_examples(builder, manual_dir: str, split: str):
    images, labels = read_svhn(official_file(manual_dir, builder.name, f"{split}_32x32.mat"))
    for i, (image, label) in enumerate(zip(images, labels)):
        key = f"{split}_{i:06d}"
        yield key, {"id": key, "image": png(image), "label": int(label)}


def _builder(catalogue_name: str, examples):
    """The catalogue builder `catalogue_name`'s subclass that generates with `examples`; not
    registered with tfds (the catalogue's class keeps the name and reads what this writes)."""
    base = tfds.builder_cls(catalogue_name)
    namespace = {"name": catalogue_name, "_examples": examples, "__module__": base.__module__,
                 "MANUAL_DOWNLOAD_INSTRUCTIONS": f"Copy {', '.join(FILES[catalogue_name][1])} into the manual "
                                                 f"directory, or let `make data DATASET={catalogue_name}` download them."}
    return types.new_class(f"{base.__name__}FromOfficialFiles", (_FromOfficialFiles, base),
                           {"skip_registration": True}, lambda ns: ns.update(namespace))


BUILDERS = {
    "cifar10": _builder("cifar10", _cifar_examples),
    "cifar100": _builder("cifar100", _cifar_examples),
    "mnist": _builder("mnist", _idx_examples),
    "fashion_mnist": _builder("fashion_mnist", _idx_examples),
    "svhn_cropped": _builder("svhn_cropped", _svhn_examples),
}
