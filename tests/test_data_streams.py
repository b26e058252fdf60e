"""Streams: catalogue streams under tfds.testing.mock_data, the embedded streams, configs, errors."""

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from phn_jax.data import DatasetNotFoundError, build_stream, default_data_config, preprocess, tfds_io
from phn_jax.data import streams
from phn_jax.data.streams import STREAMS, TRANSFER_DATASETS

# Enough mock examples that every class of every dataset occurs (mock labels are random but
# deterministic per example index); train and test splits hold the same mock examples.
MOCK_EXAMPLES = 2000

NOISY_SEED0 = [[23, 8, 11, 7, 48], [13, 1, 91, 94, 54], [16, 63, 52, 41, 80], [2, 47, 87, 78, 66]]


def _build(name, **fields):
    config = default_data_config(name)
    config.update(fields)
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        return build_stream(config)


def _mock_split(name, split, size=None):
    """The mock examples as (images, original labels), read the way streams read them."""
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        return tfds_io.read_split(name, split, None, size)


def _original_labels(images, labels):
    """{image bytes: original label} of a split (mock images are random, hence unique)."""
    table = {im.tobytes(): int(y) for im, y in zip(images, labels)}
    assert len(table) == len(labels)
    return table


def _check_class_split(stream, num_experiences, classes_per_experience, num_classes, image_shape):
    assert [e.task_id for e in stream.experiences] == list(range(num_experiences))
    assert stream.classes_per_experience == classes_per_experience
    assert stream.image_shape == image_shape
    sets = [set(e.classes) for e in stream.experiences]
    assert all(len(s) == classes_per_experience for s in sets)
    assert len(set().union(*sets)) == num_experiences * classes_per_experience  # disjoint
    assert set().union(*sets) <= set(range(num_classes))
    assert list(stream.class_order) == [c for e in stream.experiences for c in e.classes]
    for e in stream.experiences:
        for images, labels in ((e.train_images, e.train_labels), (e.test_images, e.test_labels)):
            assert images.dtype == np.uint8 and labels.dtype == np.int32
            assert images.shape[0] == labels.shape[0] > 0
            assert set(labels.tolist()) == set(range(classes_per_experience))
    json.dumps(stream.describe())  # what the engine saves in the run directory


@pytest.fixture(scope="module")
def cifar100_stream():
    return _build("split_cifar100", seed=0)


def test_split_cifar100_builds_under_mock_data(cifar100_stream):
    stream = cifar100_stream
    _check_class_split(stream, 20, 5, 100, (32, 32, 3))
    assert sorted(stream.class_order) == list(range(100))  # the 20 sets cover the 100 classes
    pre = stream.experiences[0].preprocess
    assert (pre.augment, pre.noise, pre.mean) == ("crop_flip", "none", (0.5071, 0.4865, 0.4409))


def test_split_cifar100_relabels_every_example_correctly(cifar100_stream):
    images, labels = _mock_split("cifar100", "train")
    original = _original_labels(images, labels)
    total = 0
    for e in cifar100_stream.experiences:
        for image, label in zip(e.train_images, e.train_labels):
            assert original[image.tobytes()] == e.classes[label]
        total += len(e.train_labels)
    assert total == len(labels)  # every example lands in exactly one experience


def test_split_cifar100_class_order_follows_the_seed(cifar100_stream):
    again = _build("split_cifar100", seed=0)
    other = _build("split_cifar100", seed=1)
    assert again.class_order == cifar100_stream.class_order
    assert other.class_order != cifar100_stream.class_order
    assert sorted(other.class_order) == list(range(100))


def test_noisy_cifar100_seed0_order_and_transforms():
    noisy = _build("noisy_cifar100", seed=0)
    clean = _build("clean_cifar100", seed=0)
    for stream in (noisy, clean):
        _check_class_split(stream, 4, 5, 100, (32, 32, 3))
        assert [list(e.classes) for e in stream.experiences] == NOISY_SEED0
    assert [e.preprocess.noise for e in noisy.experiences] == ["none", "solarize", "blur", "autocontrast_gray_blur"]
    assert {e.preprocess.noise for e in clean.experiences} == {"none"}
    assert _build("noisy_cifar100", seed=1).class_order != noisy.class_order


def test_split_tinyimagenet_builds_under_mock_data():
    stream = _build("split_tinyimagenet", seed=0)
    _check_class_split(stream, 20, 10, 200, (32, 32, 3))
    assert sorted(stream.class_order) == list(range(200))
    pre = stream.experiences[0].preprocess
    assert (pre.augment, pre.mean, pre.std) == ("flip", (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    assert stream.experiences[0].train_images.shape[1:] == (32, 32, 3)  # resized from 64×64
    assert _build("split_tinyimagenet", seed=3).class_order != stream.class_order


_MOCK_READS = {}


@pytest.fixture
def each_dataset_read_once(monkeypatch):
    """The pair tests read each dataset's mock splits once (the same deterministic mock examples every
    time), not once per pair: the 21 pairs build from 5 reads."""
    read = streams._read_train_test

    def cached(dataset, data_dir, size=None):
        key = (dataset, data_dir, size)
        if key not in _MOCK_READS:
            _MOCK_READS[key] = read(dataset, data_dir, size)
        return _MOCK_READS[key]

    monkeypatch.setattr(streams, "_read_train_test", cached)


@pytest.mark.parametrize("pair", list(itertools.permutations(TRANSFER_DATASETS, 2)) + [("cifar100", "cifar100")])
def test_transfer_pairs_build_under_mock_data(pair, each_dataset_read_once):
    """Every ordered pair of `make transfer` (and A = A, which takes disjoint classes)."""
    stream = _build("transfer", transfer_pair=pair, seed=0)
    assert [e.dataset for e in stream.experiences] == list(pair)
    assert [e.task_id for e in stream.experiences] == [0, 1]
    assert stream.image_shape == (32, 32, 3)
    for e in stream.experiences:
        num_classes = tfds_io.DATASETS[e.dataset].num_classes
        assert len(e.classes) == 5 and set(e.classes) <= set(range(num_classes))
        assert e.train_images.shape[1:] == e.test_images.shape[1:] == (32, 32, 3)
        assert set(e.train_labels.tolist()) == set(range(5))
        assert e.preprocess.augment == ("crop_flip" if e.dataset.startswith("cifar") else "none")
    if pair[0] == pair[1]:
        assert not set(stream.experiences[0].classes) & set(stream.experiences[1].classes)


def test_transfer_classes_follow_the_seed(each_dataset_read_once):
    pair = ("svhn_cropped", "cifar10")
    stream, again, other = (_build("transfer", transfer_pair=pair, seed=s) for s in (0, 0, 1))
    assert again.class_order == stream.class_order != other.class_order


@pytest.mark.parametrize("pair", [("digits", "synthetic"), ("synthetic", "digits")])
def test_embedded_transfer_pairs_build_offline(pair):
    """`make paper QUICK=1`'s pairs: no tfds data; 5 of 10 classes each, disjoint train and test images."""
    config = default_data_config("transfer")
    config.update(transfer_pair=pair, image_size=16)
    stream = build_stream(config)
    assert [e.dataset for e in stream.experiences] == list(pair) and stream.image_shape == (16, 16, 3)
    for e in stream.experiences:
        assert len(set(e.classes)) == 5 and set(e.classes) <= set(range(10))
        assert set(e.train_labels.tolist()) == set(e.test_labels.tolist()) == set(range(5))
        assert not {im.tobytes() for im in e.train_images} & {im.tobytes() for im in e.test_images}
        scaled = e.train_images / 255.0  # (digits' statistics are those of all its training images)
        assert e.preprocess.mean[0] == pytest.approx(scaled.mean(), abs=0.1) and e.preprocess.augment == "none"
    assert build_stream(config).class_order == stream.class_order


@pytest.mark.parametrize("name", ["noisy_digits", "clean_digits"])
def test_noisy_and_clean_digits_share_classes_and_differ_in_transforms(name):
    stream = build_stream(default_data_config(name))
    split = build_stream(default_data_config("split_digits"))
    _check_class_split(stream, 4, 2, 10, (16, 16, 3))
    assert stream.class_order == split.class_order[:8]  # the same seeded order as Split-Digits
    np.testing.assert_array_equal(stream.experiences[2].train_images, split.experiences[2].train_images)
    want = ("none", "solarize", "blur", "autocontrast_gray_blur") if name == "noisy_digits" else ("none",) * 4
    assert tuple(e.preprocess.noise for e in stream.experiences) == want


def test_split_mnist_builds_under_mock_data():
    stream = _build("split_mnist", seed=0)
    _check_class_split(stream, 5, 2, 10, (32, 32, 3))
    assert sorted(stream.class_order) == list(range(10))
    assert stream.experiences[0].train_images.shape[1:] == (32, 32, 1)  # padded, repeated on device
    assert _build("split_mnist", seed=5).class_order != stream.class_order


def test_permuted_mnist_permutes_pixels_per_experience():
    stream = _build("permuted_mnist", seed=0)
    images, labels = _mock_split("mnist", "train")
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    assert stream.image_shape == (32, 32, 3) and len(stream.experiences) == 10
    first = stream.experiences[0]
    np.testing.assert_array_equal(first.train_images, padded)  # experience 0: plain MNIST
    flat0 = first.train_images.reshape(len(labels), -1)
    for e in stream.experiences[1:]:
        np.testing.assert_array_equal(e.train_labels, labels)
        assert e.classes == tuple(range(10))
        flat = e.train_images.reshape(len(labels), -1)
        # One pixel permutation, the same for every image: recover it from image 0's columns.
        np.testing.assert_array_equal(np.sort(flat, axis=1), np.sort(flat0, axis=1))
        assert not np.array_equal(flat, flat0)
    perms = [e.train_images.reshape(len(labels), -1)[0].tobytes() for e in stream.experiences]
    assert len(set(perms)) == 10
    again = _build("permuted_mnist", seed=0)
    other = _build("permuted_mnist", seed=1)
    np.testing.assert_array_equal(again.experiences[3].train_images, stream.experiences[3].train_images)
    assert not np.array_equal(other.experiences[3].train_images, stream.experiences[3].train_images)


# hypercl's PermutedMNIST tasks 2, 3 and 10 (mnist/train_utils.py `_generate_tasks`, data_random_seed 42,
# padding 2), the first eight entries of each permutation, printed by their code
REFERENCE_PERMUTATIONS = {1: [525, 357, 444, 31, 618, 587, 447, 734], 2: [444, 473, 111, 904, 69, 324, 1011, 340],
                          9: [997, 789, 568, 1020, 80, 339, 435, 929]}


def test_permuted_mnist_draws_the_reference_tasks():
    """Seed 42 gives hypercl's ten tasks: new pixel i of experience t is old (padded) pixel perm_t[i]."""
    stream = _build("permuted_mnist", seed=42, image_size=32, channels=1)
    flat0 = stream.experiences[0].train_images.reshape(MOCK_EXAMPLES, -1)
    for t, head in REFERENCE_PERMUTATIONS.items():
        flat = stream.experiences[t].train_images.reshape(MOCK_EXAMPLES, -1)
        np.testing.assert_array_equal(flat[:, :8], flat0[:, head])
        assert any(flat0[:, j].any() for j in head)  # (not all padding, which is zero everywhere)


def test_split_digits_builds_offline():
    stream = build_stream(default_data_config("split_digits"))
    _check_class_split(stream, 5, 2, 10, (16, 16, 3))
    train = sum(len(e.train_labels) for e in stream.experiences)
    test = sum(len(e.test_labels) for e in stream.experiences)
    assert train + test == 1797 and abs(test / 1797 - 0.25) < 0.01
    for e in stream.experiences:  # stratified: each class keeps ~25% of its images for testing
        for k in range(2):
            n_train, n_test = (e.train_labels == k).sum(), (e.test_labels == k).sum()
            assert abs(n_test / (n_train + n_test) - 0.25) < 0.03
        train_set = {im.tobytes() for im in e.train_images}
        assert not any(im.tobytes() in train_set for im in e.test_images)
    again = build_stream(default_data_config("split_digits"))
    assert again.class_order == stream.class_order
    other = default_data_config("split_digits")
    other.seed = 1
    assert build_stream(other).class_order != stream.class_order


def test_synthetic_stream_is_learnable_and_conflicting():
    config = default_data_config("synthetic")
    config.update(dict(num_experiences=3, classes_per_experience=2, train_per_class=40, test_per_class=20))
    stream = build_stream(config)
    _check_class_split(stream, 3, 2, 6, (8, 8, 3))

    def class_means(e):
        x = e.train_images.reshape(len(e.train_labels), -1).astype(float)
        return np.stack([x[e.train_labels == k].mean(0) for k in range(2)])

    def accuracy(means, e):
        x = e.test_images.reshape(len(e.test_labels), -1).astype(float)
        predicted = np.argmin(((x[:, None] - means[None]) ** 2).sum(-1), axis=1)
        return (predicted == e.test_labels).mean()

    e0, e1 = stream.experiences[:2]
    assert accuracy(class_means(e0), e0) > 0.95  # learnable
    assert accuracy(class_means(e0), e1) < 0.05  # what solves task 0 fails task 1: they conflict
    config.conflict = False  # every (experience, class) has its own prototype
    i0, i1 = build_stream(config).experiences[:2]
    both = np.concatenate([class_means(i0), class_means(i1)])
    x = i1.test_images.reshape(len(i1.test_labels), -1).astype(float)
    nearest = np.argmin(((x[:, None] - both[None]) ** 2).sum(-1), axis=1)
    assert (nearest == i1.test_labels + 2).mean() > 0.95  # task 1's inputs are task 1's own
    config.conflict = True
    np.testing.assert_array_equal(build_stream(config).experiences[2].train_images, stream.experiences[2].train_images)
    assert {e.preprocess.augment for e in stream.experiences} == {"none"}
    config.augment = "crop_flip"  # the bench's Split-CIFAR100 augmentation
    assert {e.preprocess.augment for e in build_stream(config).experiences} == {"crop_flip"}


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="valid streams: " + ", ".join(STREAMS)):
        default_data_config("split_cifar10")
    config = default_data_config("split_digits")
    config.num_experience = 3  # typo
    with pytest.raises(ValueError, match="unknown field"):
        build_stream(config)
    with pytest.raises(ValueError, match="need 12 classes"):
        build_stream({"name": "split_digits", "num_experiences": 6})
    with pytest.raises(ValueError, match="transfer_pair"):
        build_stream({"name": "transfer", "transfer_pair": ("cifar10", "imagenet")})
    assert set(TRANSFER_DATASETS) <= set(tfds_io.DATASETS)


def test_explicit_class_order_and_partial_config():
    stream = build_stream({"name": "split_digits", "num_experiences": 2, "class_order": [9, 8, 7, 6]})
    assert [e.classes for e in stream.experiences] == [(9, 8), (7, 6)]
    with pytest.raises(ValueError, match="distinct class ids"):
        build_stream({"name": "split_digits", "num_experiences": 2, "class_order": [1, 1, 2, 3]})


def test_missing_dataset_error_names_dataset_directory_and_command(tmp_path):
    config = default_data_config("split_cifar100")
    config.data_dir = str(tmp_path)
    with pytest.raises(DatasetNotFoundError) as info:
        build_stream(config)
    message = str(info.value)
    assert "'cifar100'" in message and str(tmp_path) in message
    assert f"make data DATASET=cifar100 DATA_DIR={tmp_path}" in message
    # No traceback from deep inside tfds: no chained exception, no tfds frame.
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert not any("tensorflow_datasets" in str(entry.path) for entry in info.traceback)
    config = default_data_config("split_tinyimagenet")
    config.data_dir = str(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="make data DATASET=tiny_imagenet .*MANUAL_DIR=.*tiny-imagenet-200.zip"):
        build_stream(config)
    # Every missing dataset of a stream is named at once, before anything is read.
    with pytest.raises(DatasetNotFoundError) as info:
        build_stream({"name": "transfer", "transfer_pair": ("svhn_cropped", "gtsrb"), "data_dir": str(tmp_path)})
    assert "DATASET=svhn_cropped" in str(info.value) and "DATASET=gtsrb" in str(info.value)


def test_mnist_streams_as_von_oswald_et_al_feed_their_mlp():
    """image_size 28 (no padding), one channel, no normalisation: the network input is the raw image / 255;
    PermutedMNIST's permutations then run over the 28² pixels."""
    split = _build("split_mnist", image_size=28, channels=1, normalize=False, class_order=list(range(10)))
    images, labels = _mock_split("mnist", "train")
    assert split.image_shape == (28, 28, 1)
    e = split.experiences[0]
    np.testing.assert_array_equal(e.train_images, images[np.isin(labels, (0, 1))])
    x = preprocess(e.preprocess, jax.random.key(0), jnp.asarray(e.train_images[:4]), train=True)
    np.testing.assert_allclose(x, e.train_images[:4] / 255.0, rtol=1e-6)
    permuted = _build("permuted_mnist", image_size=28, channels=1, normalize=False)
    assert permuted.image_shape == (28, 28, 1)
    np.testing.assert_array_equal(permuted.experiences[0].train_images, images)
    flat = permuted.experiences[1].train_images.reshape(len(images), -1)
    np.testing.assert_array_equal(np.sort(flat, axis=1), np.sort(images.reshape(len(images), -1), axis=1))


@pytest.mark.parametrize("dataset,fields,image_shape", [
    ("kmnist", {}, (28, 28, 1)),                                     # grey-scale, not among phn_jax's datasets
    ("stl10", {"image_size": 24, "classes_per_experience": 3}, (24, 24, 3)),  # colour, 96×96 resized
    ("kmnist", {"channels": 3, "classes_per_experience": 3, "class_order": [9, 8, 7, 6, 5, 4]}, (28, 28, 3)),
])
def test_class_split_of_any_tfds_dataset_by_name(dataset, fields, image_shape):
    stream = _build("class_split", dataset=dataset, seed=3, **fields)
    c = fields.get("classes_per_experience", 2)
    order = fields.get("class_order") or streams.seeded_class_order(10, 3)
    assert list(stream.class_order) == order[:len(order) // c * c]
    _check_class_split(stream, len(order) // c, c, 10, image_shape)
    # every example in the experience of its class, relabelled to its index there; the statistics are the images'
    images, labels = _mock_split(dataset, "train", fields.get("image_size") and (fields["image_size"],) * 2)
    original = _original_labels(images, labels)
    for e in stream.experiences:
        assert [e.classes[y] for y in e.train_labels] == [original[im.tobytes()] for im in e.train_images]
        assert e.train_images.shape[-1] == images.shape[-1]  # stored as read; channels made on the device
        assert e.preprocess.channels == image_shape[-1]
    scaled = images / 255.0
    assert stream.experiences[0].preprocess.mean == pytest.approx([scaled[..., i].mean() for i in range(images.shape[-1])]
                                                                  * (image_shape[-1] // images.shape[-1]))


def test_class_split_errors_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="needs data.dataset"):
        build_stream(default_data_config("class_split"))
    with pytest.raises(ValueError, match="nor in the tfds catalogue"):
        _build("class_split", dataset="no_such_dataset")
    with pytest.raises(ValueError, match="not image classification"):
        _build("class_split", dataset="imdb_reviews")
    with pytest.raises(ValueError, match="repeat a grey one to 3"):
        _build("class_split", dataset="stl10", channels=1, image_size=24)
    ragged = [{"image": np.zeros((s, s, 3), np.uint8), "label": 0} for s in (20, 24)]  # (beans, cars196, ...)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(tfds_io, "open_split", lambda *a: ragged)
        with pytest.raises(ValueError, match=r"different shapes .*--config.data.image_size="):
            tfds_io.read_split("stl10", "train", None)
        assert tfds_io.read_split("stl10", "train", None, (16, 16))[0].shape == (2, 16, 16, 3)
    with pytest.raises(DatasetNotFoundError, match=f"make data DATASET=kmnist DATA_DIR={tmp_path}"):
        build_stream(_class_split_config(dataset="kmnist", data_dir=str(tmp_path)))


def _class_split_config(**fields):
    config = default_data_config("class_split")
    config.update(fields)
    return config
