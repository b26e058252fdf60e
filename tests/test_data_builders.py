"""Our tfds builders (Tiny ImageNet, GTSRB, and the catalogue's CIFAR-10/100, MNIST, Fashion-MNIST,
SVHN) from files in each official format, written here, prepared and read back without TensorFlow;
and the host-side resizing they and the streams use."""

import gzip
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from scipy.io import savemat

from phn_jax.data import arrays, build_stream, default_data_config

RNG = np.random.default_rng(0)
WNIDS = [f"n{i:08d}" for i in range(200)]
TINY_TRAIN_CLASSES = (0, 5, 199)
TINY_VAL_CLASSES = (0, 5, 199, 7)
GTSRB_TRAIN = {0: [(20, 24), (31, 30)], 12: [(40, 35)]}  # ClassId: image sizes (h, w)
GTSRB_TEST = [(3, (25, 25)), (42, (18, 22)), (12, (50, 47))]  # (ClassId, size)

PREPARE_AND_READ = """
import json, sys
import tensorflow_datasets as tfds
from phn_jax.data.prepare import prepare
data_dir, manual = sys.argv[1:3]
names = ("tiny_imagenet", "gtsrb", "cifar10", "cifar100", "mnist", "fashion_mnist", "svhn_cropped")
for name in names:
    prepare(name, data_dir, f"{manual}/{name}")
sizes = {}
for name, split in [(n, s) for n in names for s in ("train", "validation" if n == "tiny_imagenet" else "test")]:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    sizes[f"{name}/{split}"] = len([source[i] for i in range(len(source))])
print(json.dumps({"tensorflow_imported": "tensorflow" in sys.modules, "sizes": sizes}))
"""


def _encode(array: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt)
    return out.getvalue()


def _decoded_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def _write_tiny_imagenet(manual_dir) -> dict:
    """A tiny-imagenet-200.zip in the official layout; returns {split: [(label, RGB image)]}."""
    files, expected = {}, {"train": [], "validation": []}
    root = "tiny-imagenet-200"
    files[f"{root}/wnids.txt"] = "\n".join(WNIDS).encode() + b"\n"
    for c in TINY_TRAIN_CLASSES:
        wnid = WNIDS[c]
        files[f"{root}/train/{wnid}/{wnid}_boxes.txt"] = b"ignored"
        for k in range(2):
            gray = c == 5 and k == 1  # Tiny ImageNet holds some grayscale JPEGs
            pixels = RNG.integers(0, 256, size=(64, 64) if gray else (64, 64, 3), dtype=np.uint8)
            data = _encode(pixels, "JPEG")
            files[f"{root}/train/{wnid}/images/{wnid}_{k}.JPEG"] = data
            expected["train"].append((c, _decoded_rgb(data)))
    lines = []
    for k, c in enumerate(TINY_VAL_CLASSES):
        data = _encode(RNG.integers(0, 256, size=(64, 64, 3), dtype=np.uint8), "JPEG")
        files[f"{root}/val/images/val_{k}.JPEG"] = data
        lines.append(f"val_{k}.JPEG\t{WNIDS[c]}\t0\t0\t63\t63")
        expected["validation"].append((c, _decoded_rgb(data)))
    files[f"{root}/val/val_annotations.txt"] = ("\n".join(lines) + "\n").encode()
    os.makedirs(manual_dir)
    with zipfile.ZipFile(os.path.join(manual_dir, "tiny-imagenet-200.zip"), "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return expected


def _write_gtsrb_extracted(manual_dir) -> dict:
    """The three GTSRB archives' contents, extracted into manual_dir; {split: [(label, image)]}."""
    expected = {"train": [], "test": []}

    def put(path, data):
        full = os.path.join(manual_dir, *path.split("/"))
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(data)

    header = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"
    for c, sizes in GTSRB_TRAIN.items():
        folder = f"GTSRB/Final_Training/Images/{c:05d}"
        rows = []
        for k, (h, w) in enumerate(sizes):
            pixels = RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            put(f"{folder}/00000_{k:05d}.ppm", _encode(pixels, "PPM"))
            rows.append(f"00000_{k:05d}.ppm;{w};{h};1;1;{w - 1};{h - 1};{c}\n")
            expected["train"].append((c, pixels))
        put(f"{folder}/GT-{c:05d}.csv", (header + "".join(rows)).encode())
    rows = []
    for k, (c, (h, w)) in enumerate(GTSRB_TEST):
        pixels = RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        put(f"GTSRB/Final_Test/Images/{k:05d}.ppm", _encode(pixels, "PPM"))
        rows.append(f"{k:05d}.ppm;{w};{h};1;1;{w - 1};{h - 1};{c}\n")
        expected["test"].append((c, pixels))
    put("GT-final_test.csv", (header + "".join(rows)).encode())
    return expected


def _write_cifar(manual_dir, name, extracted: bool) -> dict:
    """CIFAR-10's (CIFAR-100's) binary batches, as cifar-10-binary.tar.gz or extracted; {split: [(label,
    image)]} (CIFAR-100: (fine label, image), its coarse labels = fine // 5)."""
    label_bytes, root = (1, "cifar-10-batches-bin") if name == "cifar10" else (2, "cifar-100-binary")
    batches = ({"data_batch_1": "train", "data_batch_2": "train", "test_batch": "test"} if name == "cifar10"
               else {"train": "train", "test": "test"})
    files, expected = {}, {"train": [], "test": []}
    for batch, split in batches.items():
        n = 3 if split == "train" else 2
        fine = RNG.integers(0, 10 if name == "cifar10" else 100, size=n)
        images = RNG.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        labels = fine[:, None] if name == "cifar10" else np.stack([fine // 5, fine], axis=1)
        planes = images.transpose(0, 3, 1, 2).reshape(n, -1)  # the R, G, B planes, row by row
        files[f"{root}/{batch}.bin"] = np.concatenate([labels.astype(np.uint8), planes], axis=1).tobytes()
        expected[split] += list(zip(fine.tolist(), images))
    if name == "cifar10":  # the official archive holds 5 training batches: the other 3 empty here
        files.update({f"{root}/data_batch_{i}.bin": b"" for i in (3, 4, 5)})
    os.makedirs(manual_dir)
    if extracted:
        for path, data in files.items():
            os.makedirs(os.path.join(manual_dir, root), exist_ok=True)
            with open(os.path.join(manual_dir, *path.split("/")), "wb") as f:
                f.write(data)
    else:
        with tarfile.open(os.path.join(manual_dir, f"{name.replace('cifar', 'cifar-')}-binary.tar.gz"), "w:gz") as tar:
            for path, data in files.items():
                info = tarfile.TarInfo(path)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return expected


def _idx(values: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic 0, 0, 0x08, ndim; the sizes as big-endian int32; the bytes."""
    return struct.pack(">HBB", 0, 0x08, values.ndim) + struct.pack(f">{values.ndim}i", *values.shape) + values.tobytes()


def _write_mnist(manual_dir) -> dict:
    """The four gzipped IDX files of MNIST (Fashion-MNIST's have the same names); {split: [(label, image)]}."""
    os.makedirs(manual_dir)
    expected = {}
    for split, prefix, n in (("train", "train", 4), ("test", "t10k", 3)):
        images = RNG.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = RNG.integers(0, 10, size=n).astype(np.uint8)
        for kind, values in (("images-idx3", images), ("labels-idx1", labels)):
            with open(os.path.join(manual_dir, f"{prefix}-{kind}-ubyte.gz"), "wb") as f:
                f.write(gzip.compress(_idx(values)))
        expected[split] = [(int(y), x[..., None]) for x, y in zip(images, labels)]
    return expected


def _write_svhn(manual_dir) -> dict:
    """train_32x32.mat and test_32x32.mat (X [32, 32, 3, N], y [N, 1] with 10 for the digit 0)."""
    os.makedirs(manual_dir)
    expected = {}
    for split, n in (("train", 4), ("test", 3)):
        images = RNG.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        digits = np.array([0, 9, 3, 0][:n])
        savemat(os.path.join(manual_dir, f"{split}_32x32.mat"),
                {"X": np.ascontiguousarray(images.transpose(1, 2, 3, 0)), "y": np.where(digits == 0, 10, digits)[:, None]})
        expected[split] = list(zip(digits.tolist(), images))
    return expected


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Writes every dataset's files in its official format and prepares them all in a fresh
    interpreter (to watch for TensorFlow)."""
    tmp = tmp_path_factory.mktemp("builders")
    data_dir, manual = str(tmp / "data"), str(tmp / "manual")
    expected = {"tiny_imagenet": _write_tiny_imagenet(f"{manual}/tiny_imagenet"),
                "gtsrb": _write_gtsrb_extracted(f"{manual}/gtsrb"),
                "cifar10": _write_cifar(f"{manual}/cifar10", "cifar10", extracted=False),
                "cifar100": _write_cifar(f"{manual}/cifar100", "cifar100", extracted=True),
                "mnist": _write_mnist(f"{manual}/mnist"), "fashion_mnist": _write_mnist(f"{manual}/fashion_mnist"),
                "svhn_cropped": _write_svhn(f"{manual}/svhn_cropped")}
    result = subprocess.run(
        [sys.executable, "-c", PREPARE_AND_READ, data_dir, manual],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return data_dir, expected, report


def _read_back(name, split, data_dir):
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    return [(int(ex["label"]), np.asarray(ex["image"])) for ex in (source[i] for i in range(len(source)))]


def _as_multiset(examples):
    return sorted((label, image.shape, image.tobytes()) for label, image in examples)


def test_preparing_and_reading_never_imports_tensorflow(prepared):
    _, expected, report = prepared
    assert report["tensorflow_imported"] is False
    assert report["sizes"] == {f"{name}/{split}": len(examples) for name, splits in expected.items()
                               for split, examples in splits.items()}


SPLITS = [(name, split) for name in ("tiny_imagenet", "gtsrb", "cifar10", "cifar100", "mnist", "fashion_mnist",
                                     "svhn_cropped")
          for split in (("train", "validation") if name == "tiny_imagenet" else ("train", "test"))]


@pytest.mark.parametrize("name,split", SPLITS)
def test_images_and_labels_read_back_right(prepared, name, split):
    data_dir, expected, _ = prepared
    got = _read_back(name, split, data_dir)
    channels = 1 if name.endswith("mnist") else 3
    assert all(image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == channels for _, image in got)
    assert _as_multiset(got) == _as_multiset(expected[name][split])


def test_cifar100_keeps_its_coarse_labels(prepared):
    data_dir, _, _ = prepared
    source = tfds.data_source("cifar100", split="train", data_dir=data_dir, download=False)
    assert all(int(ex["coarse_label"]) == int(ex["label"]) // 5 for ex in (source[i] for i in range(len(source))))


def test_catalogue_stream_reads_our_preparation(prepared):
    """Split-MNIST reads mnist as prepared here, through the catalogue's name: padded to 32×32."""
    data_dir, expected, _ = prepared
    both = sorted({y for y, _ in expected["mnist"]["train"]} & {y for y, _ in expected["mnist"]["test"]})
    config = default_data_config("split_mnist")
    config.update(dict(data_dir=data_dir, num_experiences=1, classes_per_experience=1, class_order=both[:1]))
    (e,) = build_stream(config).experiences
    want = [np.pad(x, ((2, 2), (2, 2), (0, 0))) for y, x in expected["mnist"]["train"] if y == both[0]]
    assert e.dataset == "mnist" and _as_multiset((0, x) for x in e.train_images) == _as_multiset((0, x) for x in want)


def test_grayscale_jpeg_becomes_three_equal_channels(prepared):
    data_dir, _, _ = prepared
    train = _read_back("tiny_imagenet", "train", data_dir)
    gray = [image for label, image in train if label == 5 and np.array_equal(image[..., 0], image[..., 2])]
    assert len(gray) == 1 and np.array_equal(gray[0][..., 0], gray[0][..., 1])


def test_split_tinyimagenet_stream_from_prepared_archive(prepared):
    data_dir, expected, _ = prepared
    config = default_data_config("split_tinyimagenet")
    config.update(dict(data_dir=data_dir, num_experiences=1, classes_per_experience=3, class_order=[199, 0, 5]))
    (experience,) = build_stream(config).experiences
    assert experience.classes == (199, 0, 5) and experience.dataset == "tiny_imagenet"
    relabel = {199: 0, 0: 1, 5: 2}
    for split, images, labels in (("train", experience.train_images, experience.train_labels),
                                  ("validation", experience.test_images, experience.test_labels)):
        want = [
            (relabel[c], arrays.resize_bilinear(image[None], (32, 32))[0])
            for c, image in expected["tiny_imagenet"][split]
            if c in relabel
        ]
        assert _as_multiset(zip(labels.tolist(), images)) == _as_multiset(want)


def test_missing_archive_fails_clearly(tmp_path):
    from phn_jax.data.prepare import PreparationError, prepare

    (tmp_path / "manual").mkdir()
    (tmp_path / "manual" / "README").write_text("not the archive")
    with pytest.raises(PreparationError, match="tiny-imagenet-200.zip.*manual directory"):
        prepare("tiny_imagenet", str(tmp_path / "data"), str(tmp_path / "manual"))


def test_files_not_in_the_official_format_fail_clearly(tmp_path):
    from phn_jax.data import catalogue

    with pytest.raises(ValueError, match="records of 3073 bytes"):
        catalogue.cifar_records(b"x" * 3074, label_bytes=1)
    with pytest.raises(ValueError, match="not an IDX file"):
        catalogue.read_idx(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="holds 3 values"):
        catalogue.read_idx(_idx(np.zeros((2, 2), np.uint8))[:-1])


def test_resize_halving_averages_pixel_blocks():
    images = RNG.integers(0, 256, size=(3, 64, 64, 3), dtype=np.uint8)
    blocks = images.reshape(3, 32, 2, 32, 2, 3).astype(float).mean(axis=(2, 4))
    np.testing.assert_array_equal(arrays.resize_bilinear(images, (32, 32)), np.rint(blocks).astype(np.uint8))


def test_resize_upsampling_matches_pil_bilinear():
    image = RNG.integers(0, 256, size=(8, 8), dtype=np.uint8)
    ours = arrays.resize_bilinear(image[None, :, :, None], (16, 16))[0, :, :, 0].astype(int)
    pil = np.asarray(Image.fromarray(image).resize((16, 16), Image.BILINEAR)).astype(int)
    assert np.abs(ours - pil).max() <= 1


def test_stack_resized_handles_mixed_sizes():
    images = [np.full((h, w, 3), 7, np.uint8) for h, w in [(20, 30), (50, 40), (32, 32)]]
    out = arrays.stack_resized(images, (32, 32))
    assert out.shape == (3, 32, 32, 3) and (out == 7).all()


def test_missing_official_file_is_downloaded_into_the_manual_directory(tmp_path, monkeypatch):
    """A file missing from the manual directory is fetched from its URL (here a file:// mirror)."""
    from phn_jax.data import catalogue

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "train_32x32.mat").write_bytes(b"official bytes")
    monkeypatch.setitem(catalogue.FILES, "svhn_cropped", (mirror.as_uri() + "/", ("train_32x32.mat",)))
    path = catalogue.official_file(str(tmp_path / "manual"), "svhn_cropped", "train_32x32.mat")
    assert path == str(tmp_path / "manual" / "train_32x32.mat") and open(path, "rb").read() == b"official bytes"
    assert sorted(os.listdir(tmp_path / "manual")) == ["train_32x32.mat"]  # no .part left behind
    with pytest.raises(OSError):
        catalogue.official_file(str(tmp_path / "manual"), "svhn_cropped", "test_32x32.mat")  # not on the mirror
