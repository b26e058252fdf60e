"""Our tfds builders' common ground: official archives copied by hand into a manual directory.

Our tfds builders (`tiny_imagenet`, `gtsrb`) read the archive a user copied by hand into the
manual directory, either as the zip file itself or as its extracted copy. `Archive` gives both the
same view: files named by their path inside the zip (POSIX separators), read as bytes.
`ArchiveBuilder` is their shared tfds builder: image + label features, one generator per split.
"""

from __future__ import annotations

import contextlib
import io
import os
import zipfile
from collections.abc import Iterator

import tensorflow_datasets as tfds
from PIL import Image


class Archive:
    """Files of one archive: a `zipfile.ZipFile`, or a directory holding the extracted files.

    Paths are relative to the zip's root (for a directory: to the directory), with "/" separators.
    """

    def __init__(self, zip_file: zipfile.ZipFile | None = None, root: str | None = None):
        if (zip_file is None) == (root is None):
            raise ValueError("give exactly one of zip_file and root")
        self._zip = zip_file
        self._root = root
        if zip_file is not None:
            self._names = frozenset(n for n in zip_file.namelist() if not n.endswith("/"))
        else:
            names = []
            for directory, _, files in os.walk(root):
                rel = os.path.relpath(directory, root)
                for f in files:
                    path = f if rel == "." else os.path.join(rel, f)
                    names.append(path.replace(os.sep, "/"))
            self._names = frozenset(names)

    @property
    def names(self) -> frozenset[str]:
        """Every file path in the archive."""
        return self._names

    def read(self, path: str) -> bytes:
        """The bytes of the file at `path` (KeyError if the archive has no such file)."""
        if path not in self._names:
            raise KeyError(f"no file {path!r} in {self.describe()}")
        if self._zip is not None:
            return self._zip.read(path)
        with open(os.path.join(self._root, *path.split("/")), "rb") as f:
            return f.read()

    def read_text(self, path: str) -> str:
        return self.read(path).decode("utf-8")

    def describe(self) -> str:
        return self._zip.filename if self._zip is not None else self._root


@contextlib.contextmanager
def open_archive(manual_dir: str, zip_name: str, marker: str) -> Iterator[Archive]:
    """Opens `manual_dir/zip_name`, or else the extracted copy rooted at `manual_dir`.

    Args:
      manual_dir: the directory the user copied the archive into.
      zip_name: the official archive's file name, e.g. "tiny-imagenet-200.zip".
      marker: a file path inside the archive; its presence under `manual_dir` identifies an
        extracted copy (e.g. "tiny-imagenet-200/wnids.txt").

    Raises:
      FileNotFoundError: neither the zip nor an extracted copy is in `manual_dir`.
    """
    zip_path = os.path.join(manual_dir, zip_name)
    if os.path.isfile(zip_path):
        with zipfile.ZipFile(zip_path) as zf:
            yield Archive(zip_file=zf)
    elif os.path.isfile(os.path.join(manual_dir, *marker.split("/"))):
        yield Archive(root=manual_dir)
    else:
        raise FileNotFoundError(
            f"neither {zip_name} nor its extracted copy (with {marker}) is in the manual "
            f"directory {manual_dir}"
        )


def rgb_image_bytes(data: bytes, name: str, size: tuple[int, int] | None = None) -> bytes:
    """Encoded image bytes that decode to an RGB image [H, W, 3].

    JPEG and PNG files that are already RGB are returned unchanged (no re-encoding); any other
    file (grayscale or CMYK JPEG, PPM, ...) is converted to RGB and encoded as PNG (lossless).

    Args:
      data: the encoded image file.
      name: its path, for error messages.
      size: the (height, width) the image must have, or None for any size.
    """
    with Image.open(io.BytesIO(data)) as image:
        if size is not None and (image.height, image.width) != tuple(size):
            raise ValueError(f"{name}: expected a {size[0]}×{size[1]} image, got {image.height}×{image.width}")
        if image.mode == "RGB" and image.format in ("JPEG", "PNG"):
            return data
        out = io.BytesIO()
        image.convert("RGB").save(out, format="PNG")
        return out.getvalue()


class ArchiveBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A tfds builder of (image, label) examples from archives in the manual directory.

    Subclasses set the class attributes below and implement
    `_generate_examples(manual_dir, split)`, yielding (key, {"image": encoded RGB bytes,
    "label": int}). Not registered with tfds itself.
    """

    IMAGE_SHAPE: tuple = (None, None, 3)
    NUM_CLASSES: int
    SPLITS: tuple[str, ...]
    DESCRIPTION: str
    HOMEPAGE: str

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=self.IMAGE_SHAPE),
                    "label": tfds.features.ClassLabel(num_classes=self.NUM_CLASSES),
                }
            ),
            supervised_keys=("image", "label"),
            homepage=self.HOMEPAGE,
        )

    def _split_generators(self, dl_manager):
        manual_dir = str(dl_manager.manual_dir)
        return {split: self._generate_examples(manual_dir, split) for split in self.SPLITS}
