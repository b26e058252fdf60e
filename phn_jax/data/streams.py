"""Continual-learning streams: a sequence of experiences with train/test arrays and a task id.

`build_stream(config)` builds the stream named by `config.name` from a ConfigDict whose fields
`default_data_config(name)` lists (missing fields take their defaults; unknown ones are an
error). Every stream holds its images as uint8 NHWC NumPy arrays (the engine puts them on the
device once) and labels relabelled 0..C−1 within each experience; task id = experience index.

Streams (docs/design.md §4):
  split_cifar100      20 × 5 CIFAR-100 classes; crop+flip; CIFAR-100 statistics.
  split_tinyimagenet  20 × 10 Tiny ImageNet classes, 64 → 32 pixels; flip; CIFAR-10 statistics.
  noisy_cifar100      4 × 5 CIFAR-100 classes with the per-experience transforms of `noise`
                      (none, solarize, blur, autocontrast→gray→blur); class order
                      `random.Random(seed).shuffle(list(range(100)))`.
  clean_cifar100      the same classes and order without the transforms.
  transfer            2 experiences of 5 random classes: from dataset A, then from dataset B
                      (TRANSFER_DATASETS; "digits" and "synthetic" need no download).
  permuted_mnist      10 experiences of the 10 MNIST digits (zero-padded to 32×32), each with
                      its own seeded pixel permutation (the first is the identity by default).
  split_mnist         5 × 2 MNIST digits, 32×32.
                      (Both: `image_size` 28..: zero-padded to it; `channels` 3 or 1; `normalize`:
                      MNIST statistics, or pixels in [0, 1] as von Oswald et al.'s code.)
  split_digits        5 × 2 of scikit-learn's 8×8 digits upscaled to 16×16; no download.
  noisy_digits        4 × 2 of those digits with noisy_cifar100's transforms (`make paper QUICK=1`'s
  clean_digits        twins of the noisy and clean CIFAR-100 streams); no download.
  synthetic           prototypes + noise, for unit tests (`phn_jax.data.synthetic`).
  class_split         any image-classification dataset of the tfds catalogue (`dataset`), split into
                      experiences of `classes_per_experience` classes; its image shape, channels and
                      classes from its tfds info; normalised with its training images' statistics.
Every class order is `random.Random(seed).shuffle(list(range(num_classes)))` unless the config
gives `class_order` explicitly; experience t holds classes class_order[t·C:(t+1)·C].
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np

from phn_jax.data import arrays, synthetic, tfds_io
from phn_jax.data.transforms import NOISES, Preprocess

TRANSFER_DATASETS = ("fashion_mnist", "svhn_cropped", "gtsrb", "cifar10", "cifar100")
# Transfer datasets that ship with the code (no download): scikit-learn's digits, 10 synthetic classes.
EMBEDDED_TRANSFER_DATASETS = ("digits", "synthetic")
TRANSFER_CHOICES = TRANSFER_DATASETS + EMBEDDED_TRANSFER_DATASETS  # what a transfer_pair may name
NOISY_CIFAR_NOISES = ("none", "solarize", "blur", "autocontrast_gray_blur")
MNIST_SIZE = (32, 32)  # von Oswald et al. pad MNIST's 28×28 to 32×32 for PermutedMNIST
# The MNIST streams' input fields; the defaults feed the 3-channel ResNet as before.
_MNIST_INPUT = dict(image_size=MNIST_SIZE[0], channels=3, normalize=True)


@dataclasses.dataclass(frozen=True, eq=False)
class Experience:
    """One experience of a stream.

    Attributes:
      task_id: the experience's index in the stream.
      classes: the original class ids of the dataset, in label order (label k = classes[k]).
      dataset: the tfds name (or "digits", "synthetic") the images come from.
      train_images, test_images: uint8 [N, H, W, C_in] (C_in is 1 or Stream.image_shape[-1]).
      train_labels, test_labels: int32 [N] in 0..len(classes)−1.
      preprocess: the experience's input pipeline (`phn_jax.data.preprocess`).
    """

    task_id: int
    classes: tuple[int, ...]
    dataset: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    preprocess: Preprocess

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclasses.dataclass(frozen=True, eq=False)
class Stream:
    """A continual-learning stream.

    Attributes:
      name: the stream's name (`config.name`).
      experiences: the experiences in training order.
      class_order: the original class ids of all experiences, concatenated (experience t holds
        class_order[t·C:(t+1)·C]); plain ints, JSON-serialisable.
      classes_per_experience: C.
      image_shape: (H, W, C) of the model input, i.e. of `preprocess`'s output.
      seed: the seed the class order (and any pixel permutation) was drawn from.
    """

    name: str
    experiences: tuple[Experience, ...]
    class_order: tuple[int, ...]
    classes_per_experience: int
    image_shape: tuple[int, int, int]
    seed: int

    @property
    def num_experiences(self) -> int:
        return len(self.experiences)

    def describe(self) -> dict:
        """A JSON-serialisable summary to save with a run: order, datasets, sizes, pipelines."""
        return {
            "name": self.name,
            "seed": self.seed,
            "class_order": list(self.class_order),
            "classes_per_experience": self.classes_per_experience,
            "image_shape": list(self.image_shape),
            "experiences": [
                {
                    "task_id": e.task_id,
                    "dataset": e.dataset,
                    "classes": list(e.classes),
                    "num_train": int(e.train_labels.shape[0]),
                    "num_test": int(e.test_labels.shape[0]),
                    "preprocess": dataclasses.asdict(e.preprocess),
                }
                for e in self.experiences
            ],
        }


# ---------------------------------------------------------------------------------------------
# Configs


def _class_split(num_experiences: int, classes_per_experience: int, **extra) -> dict:
    return dict(
        num_experiences=num_experiences,
        classes_per_experience=classes_per_experience,
        class_order=None,
        **extra,
    )




def _check_name(name: str) -> None:
    if name not in KINDS:
        raise ValueError(f"unknown stream {name!r}; valid streams: {', '.join(STREAMS)}")


def default_data_config(name: str) -> ml_collections.ConfigDict:
    """The default `config.data` of stream `name`.

    Every stream has `name`, `seed` (class order / permutation / generation seed, default 0) and
    `data_dir` (tfds data directory; None: $TFDS_DATA_DIR or ~/tensorflow_datasets; unused by
    split_digits and synthetic). The other fields are per stream:
      class-split streams: num_experiences, classes_per_experience, class_order (None: seeded).
      noisy_cifar100 / clean_cifar100: noise, one of transforms.NOISES per experience.
      transfer: transfer_pair (A, B), classes_per_experience, image_size (the paper's 32).
      permuted_mnist: num_experiences, permute_first (False: experience 0 is plain MNIST).
      permuted_mnist, split_mnist: image_size (28: MNIST as it is; more: zero-padded, default 32),
        channels (3: gray repeated on device, default; 1), normalize (True: MNIST mean/std; False:
        pixels in [0, 1]).
      split_digits: image_size, test_fraction, split_seed (the stratified train/test split).
      noisy_digits / clean_digits: split_digits' fields and noise.
      synthetic: num_experiences, classes_per_experience, train_per_class, test_per_class,
        image_size, channels, noise_std, conflict (see `phn_jax.data.synthetic`), augment, normalize
        (transforms.AUGMENTATIONS).
    """
    _check_name(name)
    return ml_collections.ConfigDict(dict(name=name, seed=0, data_dir=None, **KINDS[name].defaults))


def _full_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`default_data_config(config.name)` updated with `config`; ValueError on unknown fields."""
    if "name" not in config:
        raise ValueError(f"the data config needs a `name`; valid streams: {', '.join(STREAMS)}")
    full = default_data_config(config.name)
    unknown = sorted(set(config.keys()) - set(full.keys()))
    if unknown:
        raise ValueError(
            f"unknown field(s) {unknown} for stream {config.name!r}; its fields: {sorted(full.keys())}"
        )
    full.update(config)
    return full


# ---------------------------------------------------------------------------------------------
# Shared pieces


def seeded_class_order(num_classes: int, seed: int) -> list[int]:
    """`random.Random(seed).shuffle(list(range(num_classes)))`, the reference code's order."""
    order = list(range(num_classes))
    random.Random(seed).shuffle(order)
    return order


def _class_order(config: ml_collections.ConfigDict, num_classes: int) -> list[int]:
    """The config's explicit `class_order`, checked, or the seeded permutation."""
    if config.classes_per_experience < 1 or config.num_experiences < 1:
        raise ValueError(f"a class split needs num_experiences ≥ 1 and classes_per_experience ≥ 1, got "
                         f"{config.num_experiences} and {config.classes_per_experience}")
    needed = config.num_experiences * config.classes_per_experience
    if needed > num_classes:
        raise ValueError(
            f"{config.num_experiences} experiences × {config.classes_per_experience} classes need "
            f"{needed} classes; the dataset has {num_classes}"
        )
    if config.class_order is None:
        return seeded_class_order(num_classes, config.seed)
    order = [int(c) for c in config.class_order]
    if len(set(order)) != len(order) or not all(0 <= c < num_classes for c in order) or len(order) < needed:
        raise ValueError(
            f"class_order must list at least {needed} distinct class ids in 0..{num_classes - 1}, got {order}"
        )
    return order


def select_classes(
    images: np.ndarray, labels: np.ndarray, classes: Sequence[int], where: str
) -> tuple[np.ndarray, np.ndarray]:
    """The examples of `classes`, relabelled: label classes[k] ↦ k (storage order kept).

    Raises ValueError naming `where` if one of the classes has no example.
    """
    lookup = np.full(max(int(labels.max()), max(classes)) + 1, -1, dtype=np.int32)
    lookup[np.asarray(classes)] = np.arange(len(classes), dtype=np.int32)
    new_labels = lookup[labels]
    keep = new_labels >= 0
    counts = np.bincount(new_labels[keep], minlength=len(classes))
    if (counts == 0).any():
        missing = [c for c, n in zip(classes, counts) if n == 0]
        raise ValueError(f"{where} has no example of class(es) {missing}")
    return images[keep], new_labels[keep]


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images [N, H, W, C] scaled to [0, 1]."""
    scaled = images.reshape(-1, images.shape[-1]) / 255.0
    return tuple(map(float, scaled.mean(0))), tuple(map(float, scaled.std(0)))


def _stats(dataset: str, channels: int, images: np.ndarray | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The dataset's normalisation mean and std (phn_jax's, or where it has none the per-channel
    statistics of `images`, its training images), a single channel's repeated to `channels`."""
    spec = tfds_io.dataset_spec(dataset)
    mean, std = (spec.mean, spec.std) if spec.mean else _channel_stats(images)
    if len(mean) == channels:
        return mean, std
    return mean * channels, std * channels


def _split_arrays(train, test, classes, dataset) -> dict:
    train_images, train_labels = select_classes(*train, classes, f"{dataset} (train split)")
    test_images, test_labels = select_classes(*test, classes, f"{dataset} (test split)")
    return dict(
        train_images=train_images, train_labels=train_labels, test_images=test_images, test_labels=test_labels
    )


def _read_train_test(dataset: str, data_dir, size=None) -> tuple[tuple, tuple]:
    spec = tfds_io.dataset_spec(dataset)
    return (
        tfds_io.read_split(dataset, spec.train_split, data_dir, size),
        tfds_io.read_split(dataset, spec.test_split, data_dir, size),
    )


def _class_split_stream(
    config,
    dataset: str,
    num_classes: int,
    load: Callable[[], tuple[tuple, tuple]],
    preprocess_of: Callable[[int], Preprocess],
) -> Stream:
    """Experience t: classes order[t·C:(t+1)·C] of `load()`'s (train, test), labels 0..C−1.

    The class order is checked before `load` reads anything.
    """
    order = _class_order(config, num_classes)
    train, test = load()
    c = config.classes_per_experience
    experiences = []
    for t in range(config.num_experiences):
        classes = tuple(order[t * c : (t + 1) * c])
        experiences.append(
            Experience(
                task_id=t,
                classes=classes,
                dataset=dataset,
                **_split_arrays(train, test, classes, dataset),
                preprocess=preprocess_of(t),
            )
        )
    return _stream(config, experiences, [k for e in experiences for k in e.classes])


def _stream(config, experiences: Sequence[Experience], class_order: Sequence[int]) -> Stream:
    first = experiences[0]
    shape = (*first.train_images.shape[1:3], first.preprocess.channels)
    return Stream(
        name=config.name,
        experiences=tuple(experiences),
        class_order=tuple(int(c) for c in class_order),
        classes_per_experience=first.num_classes,
        image_shape=tuple(int(s) for s in shape),
        seed=int(config.seed),
    )


# ---------------------------------------------------------------------------------------------
# Stream builders


def _single_dataset_class_split(dataset: str, augment: str, size=None) -> Callable:
    """Builder of a class-split stream over one tfds dataset, one pipeline for all experiences."""

    def build(config) -> Stream:
        mean, std = _stats(dataset, 3)
        pre = Preprocess(augment=augment, mean=mean, std=std, channels=3)
        return _class_split_stream(
            config,
            dataset,
            tfds_io.dataset_spec(dataset).num_classes,
            lambda: _read_train_test(dataset, config.data_dir, size),
            lambda t: pre,
        )

    return build


def _noise(config) -> tuple[str, ...]:
    """The stream's transform of each experience: `config.noise` (checked), or none."""
    noise = tuple(config.get("noise", ("none",) * config.num_experiences))
    if len(noise) != config.num_experiences or not set(noise) <= set(NOISES):
        raise ValueError(f"noise must give one of {NOISES} per experience ({config.num_experiences}), got {noise}")
    return noise


def _noisy_cifar100(config) -> Stream:
    noise = _noise(config)
    mean, std = _stats("cifar100", 3)
    return _class_split_stream(
        config,
        "cifar100",
        100,
        lambda: _read_train_test("cifar100", config.data_dir),
        lambda t: Preprocess(augment="crop_flip", noise=noise[t], mean=mean, std=std, channels=3),
    )


def _mnist_arrays(config) -> tuple[tuple, tuple]:
    """MNIST's train and test (uint8 [N, S, S, 1], labels), zero-padded to S = config.image_size."""
    (x_train, y_train), (x_test, y_test) = _read_train_test("mnist", config.data_dir)
    size = (config.image_size,) * 2
    return (arrays.pad_to(x_train, size), y_train), (arrays.pad_to(x_test, size), y_test)


def _mnist_preprocess(config) -> Preprocess:
    """`config.channels` output channels; MNIST's statistics, or none (x/255) without `normalize`."""
    if config.channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3 for MNIST, got {config.channels!r}")
    mean, std = _stats("mnist", config.channels) if config.normalize else ((0.0,) * config.channels,
                                                                           (1.0,) * config.channels)
    return Preprocess(augment="none", mean=mean, std=std, channels=config.channels)


def _split_mnist(config) -> Stream:
    pre = _mnist_preprocess(config)
    return _class_split_stream(config, "mnist", 10, lambda: _mnist_arrays(config), lambda t: pre)


def _permuted_mnist(config) -> Stream:
    """Experience t: all of MNIST with the pixels (over H·W) permuted by permutation t.

    The permutations are the reference's (hypercl mnist/train_utils.py `_generate_tasks`): drawn one
    after another by `np.random.RandomState(seed).permutation(H·W)`, the first experience taking
    none (the identity) unless `permute_first`; new pixel i of every image is old pixel perm[i]. So
    `seed` 42 gives hypercl's tasks (its `data_random_seed`)."""
    (x_train, y_train), (x_test, y_test) = _mnist_arrays(config)
    num_pixels = config.image_size**2
    rng = np.random.RandomState(config.seed)
    permutations = [np.arange(num_pixels)] if not config.permute_first else []
    permutations += [rng.permutation(num_pixels) for _ in range(config.num_experiences - len(permutations))]

    def permute(x, perm):
        return x.reshape(x.shape[0], num_pixels, -1)[:, perm].reshape(x.shape)

    pre = _mnist_preprocess(config)
    experiences = [
        Experience(
            task_id=t,
            classes=tuple(range(10)),
            dataset="mnist",
            train_images=permute(x_train, perm),
            train_labels=y_train,
            test_images=permute(x_test, perm),
            test_labels=y_test,
            preprocess=pre,
        )
        for t, perm in enumerate(permutations)
    ]
    return _stream(config, experiences, list(range(10)) * config.num_experiences)


def _transfer_pair(config) -> tuple[str, str]:
    pair = tuple(config.transfer_pair)
    if len(pair) != 2 or not set(pair) <= set(TRANSFER_CHOICES):
        raise ValueError(f"transfer_pair must be two of {TRANSFER_CHOICES}, got {pair}; on the command line: "
                         "--config.data.transfer_pair=\"('gtsrb', 'cifar100')\" (a Python tuple of two names)")
    return pair


def _pixel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std over every pixel of uint8 images scaled to [0, 1], as 3 channels."""
    scaled = images / 255.0
    return (float(scaled.mean()),) * 3, (float(scaled.std()),) * 3


def _transfer_data(dataset: str, data_dir, size: int) -> tuple[tuple, tuple, tuple, tuple]:
    """(train, test, mean, std) of a transfer dataset: (images uint8 [N, size, size, 3], labels) pairs
    and its normalisation (a tfds dataset's statistics; an embedded one's pixel statistics)."""
    if dataset == "digits":
        train, test = _digits_arrays(size, test_fraction=0.25, split_seed=0)
        mean, std = _pixel_stats(train[0])
    elif dataset == "synthetic":  # one fixed set of 10 prototype classes (the seed draws the classes)
        x_train, y_train, x_test, y_test = synthetic.synthetic_experiences(
            1, 10, train_per_class=64, test_per_class=32, image_size=size, channels=3, noise_std=0.25,
            conflict=False, seed=0)[0]
        train, test = (x_train, y_train), (x_test, y_test)
        mean, std = _pixel_stats(x_train)
    else:
        train, test = _read_train_test(dataset, data_dir, size=(size, size))
        mean, std = _stats(dataset, 3)
    return (arrays.with_channels(train[0], 3), train[1]), (arrays.with_channels(test[0], 3), test[1]), mean, std


def _transfer(config) -> Stream:
    """Two experiences of C random classes, the first of dataset A, the second of dataset B."""
    pair = _transfer_pair(config)
    c = config.classes_per_experience
    rng = random.Random(config.seed)
    orders = {}
    for dataset in pair:
        if dataset not in orders:
            num_classes = 10 if dataset in EMBEDDED_TRANSFER_DATASETS else tfds_io.dataset_spec(dataset).num_classes
            order = list(range(num_classes))
            rng.shuffle(order)
            orders[dataset] = order
    # A == B takes the next C classes of the same order, so the two experiences stay disjoint.
    class_sets = [orders[pair[0]][:c], orders[pair[1]][c : 2 * c] if pair[0] == pair[1] else orders[pair[1]][:c]]
    if any(len(classes) < c for classes in class_sets):
        raise ValueError(f"classes_per_experience={c} is too many for the pair {pair}")
    data = {dataset: _transfer_data(dataset, config.data_dir, config.image_size) for dataset in dict.fromkeys(pair)}
    experiences = []
    for t, (dataset, classes) in enumerate(zip(pair, class_sets)):
        train, test, mean, std = data[dataset]
        augment = "crop_flip" if dataset in ("cifar10", "cifar100") else "none"
        experiences.append(
            Experience(
                task_id=t,
                classes=tuple(classes),
                dataset=dataset,
                **_split_arrays(train, test, classes, dataset),
                preprocess=Preprocess(augment=augment, mean=mean, std=std, channels=3),
            )
        )
    return _stream(config, experiences, [k for e in experiences for k in e.classes])


def _digits_arrays(image_size: int, test_fraction: float, split_seed: int) -> tuple[tuple, tuple]:
    """scikit-learn's 1,797 8×8 digits (0..16) as uint8 [N, S, S, 1], resized to S = image_size,
    split stratified into (train, test) (images, labels) pairs."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    images = arrays.resize_bilinear(images, (image_size, image_size))
    labels = digits.target.astype(np.int32)
    train_idx, test_idx = train_test_split(
        np.arange(labels.shape[0]), test_size=test_fraction, stratify=labels, random_state=split_seed
    )
    return (images[train_idx], labels[train_idx]), (images[test_idx], labels[test_idx])


def _split_digits(config) -> Stream:
    """split_digits, noisy_digits, clean_digits: class splits of the digits, each experience with
    its `noise` (none for split_digits)."""
    noise = _noise(config)
    train, test = _digits_arrays(config.image_size, config.test_fraction, config.split_seed)
    mean, std = _pixel_stats(train[0])
    return _class_split_stream(config, "digits", 10, lambda: (train, test),
                               lambda t: Preprocess(augment="none", noise=noise[t], mean=mean, std=std, channels=3))


def _any_class_split(config) -> Stream:
    """class_split: tfds dataset `config.dataset` split by class. Its classes and image shape come from
    its tfds info (`tfds_io.catalogue_spec`); `image_size` (0: the stored size, which must then be
    the same for every image) resizes; `channels` (0: the dataset's) repeats a grey channel to 3;
    normalisation with the dataset's statistics where phn_jax knows them, else the training images'."""
    spec = tfds_io.dataset_spec(config.dataset)
    config = _with_experiences(config, spec.num_classes)
    size = (int(config.image_size),) * 2 if config.image_size else None
    stored = spec.image_shape[-1] if spec.image_shape else None
    if config.channels not in (0, stored) and not (stored == 1 and config.channels == 3):
        raise ValueError(f"channels={config.channels} for {config.dataset} ({stored} channel(s)): a stream can keep the "
                         "dataset's channels (0) or repeat a grey one to 3")
    pipeline = {}  # one for every experience, made once the training images are read

    def load():
        train, test = (tfds_io.read_split(config.dataset, split, config.data_dir, size)
                       for split in (config.train_split, config.test_split))
        channels = config.channels or train[0].shape[-1]
        mean, std = _stats(config.dataset, channels, train[0])
        pipeline["all"] = Preprocess(augment="none", mean=mean, std=std, channels=channels)
        return train, test

    return _class_split_stream(config, config.dataset, spec.num_classes, load, lambda t: pipeline["all"])


def _with_experiences(config, num_classes: int):
    """`config` with num_experiences, where it is 0, as many as the classes fill: ⌊K / C⌋ for the K
    classes of `class_order` (when given) or of the dataset, C = classes_per_experience."""
    if config.num_experiences:
        return config
    config = ml_collections.ConfigDict(config.to_dict())
    classes = num_classes if config.class_order is None else len(config.class_order)
    config.num_experiences = classes // max(int(config.classes_per_experience), 1)
    return config


def _synthetic(config) -> Stream:
    generated = synthetic.synthetic_experiences(
        num_experiences=config.num_experiences,
        classes_per_experience=config.classes_per_experience,
        train_per_class=config.train_per_class,
        test_per_class=config.test_per_class,
        image_size=config.image_size,
        channels=config.channels,
        noise_std=config.noise_std,
        conflict=config.conflict,
        seed=config.seed,
    )
    c = config.classes_per_experience
    mean, std = (0.5, 0.25) if config.normalize else (0.0, 1.0)
    pre = Preprocess(augment=config.augment, mean=(mean,) * config.channels, std=(std,) * config.channels,
                     channels=config.channels)
    experiences = [
        Experience(
            task_id=t,
            classes=tuple(range(t * c, (t + 1) * c)),
            dataset="synthetic",
            train_images=x_train,
            train_labels=y_train,
            test_images=x_test,
            test_labels=y_test,
            preprocess=pre,
        )
        for t, (x_train, y_train, x_test, y_test) in enumerate(generated)
    ]
    return _stream(config, experiences, range(config.num_experiences * c))


@dataclasses.dataclass(frozen=True)
class StreamKind:
    """Everything phn_jax states about one stream, in one place (`KINDS`): adding a stream is one entry.

    title: its name in the paper and the report; defaults: its `config.data` fields beyond name,
    seed and data_dir (`default_data_config`); build: config.data -> Stream; datasets: the tfds
    datasets it reads (checked before anything is read; a transfer pair's come from its pair);
    config_file and run_dir: its experiment config (experiments/configs/) and its directory under
    RUNS, as the Makefile and the paper's queue (`phn_jax.suite`) use them, where it has them."""

    title: str
    defaults: dict
    build: Callable[[ml_collections.ConfigDict], Stream]
    datasets: tuple[str, ...] = ()
    config_file: str | None = None
    run_dir: str | None = None


_DIGITS = dict(image_size=16, test_fraction=0.25, split_seed=0)
KINDS: dict[str, StreamKind] = {
    "split_cifar100": StreamKind("Split-CIFAR100", _class_split(20, 5), _single_dataset_class_split("cifar100", "crop_flip"),
                                 ("cifar100",), "split_cifar100.py", "cifar100"),
    "split_tinyimagenet": StreamKind("Split-TinyImageNet", _class_split(20, 10),
                                     _single_dataset_class_split("tiny_imagenet", "flip", size=(32, 32)),
                                     ("tiny_imagenet",), "split_tinyimagenet.py", "tinyimagenet"),
    "noisy_cifar100": StreamKind("CIFAR-100 4×5, noisy", _class_split(4, 5, noise=NOISY_CIFAR_NOISES), _noisy_cifar100,
                                 ("cifar100",), "noisy_cifar100.py", "noisy"),
    "clean_cifar100": StreamKind("CIFAR-100 4×5, clean", _class_split(4, 5, noise=("none",) * 4), _noisy_cifar100,
                                 ("cifar100",), "clean_cifar100.py", "clean"),
    "transfer": StreamKind("transfer pairs", dict(transfer_pair=("cifar10", "cifar100"), classes_per_experience=5,
                                                  image_size=32), _transfer, (), "transfer.py", "transfer"),
    "permuted_mnist": StreamKind("PermutedMNIST-10", dict(num_experiences=10, permute_first=False, **_MNIST_INPUT),
                                 _permuted_mnist, ("mnist",), "permuted_mnist.py", "permuted_mnist"),
    "split_mnist": StreamKind("SplitMNIST", _class_split(5, 2, **_MNIST_INPUT), _split_mnist, ("mnist",),
                              "split_mnist.py", "split_mnist"),
    "split_digits": StreamKind("Split-Digits", _class_split(5, 2, **_DIGITS), _split_digits, (), "split_digits.py",
                               "digits"),
    "noisy_digits": StreamKind("Digits 4×2, noisy", _class_split(4, 2, **_DIGITS, noise=NOISY_CIFAR_NOISES), _split_digits,
                               (), "noisy_digits.py", "noisy_digits"),
    "clean_digits": StreamKind("Digits 4×2, clean", _class_split(4, 2, **_DIGITS, noise=("none",) * 4), _split_digits,
                               (), "clean_digits.py", "clean_digits"),
    "synthetic": StreamKind("synthetic", dict(
        num_experiences=3,
        classes_per_experience=2,
        train_per_class=32,
        test_per_class=16,
        image_size=8,
        channels=3,
        noise_std=0.25,
        conflict=True,
        augment="none",  # or "crop_flip": Split-CIFAR100's training augmentation (the bench's CIFAR shapes)
        normalize=True,  # (x − 0.5) / 0.25, or False: pixels in [0, 1]
    ), _synthetic),
    # dataset: a tfds name; num_experiences 0: as many as the classes (of class_order, if given) fill; image_size 0:
    # as stored; channels 0: the dataset's (the command line can set a field that is not None)
    "class_split": StreamKind("class split of a tfds dataset", _class_split(
        0, 2, dataset="", image_size=0, channels=0, train_split="train", test_split="test"),
        _any_class_split),
}
STREAMS = tuple(KINDS)


def build_stream(config: ml_collections.ConfigDict) -> Stream:
    """The stream `config.name` built from `config` (see `default_data_config` for the fields).

    Reads its datasets from `config.data_dir` without downloading; raises
    `tfds_io.DatasetNotFoundError` (naming the dataset, the directory and the command that
    prepares it) if one is missing, and ValueError for an unknown stream or an invalid field.
    """
    if not isinstance(config, ml_collections.ConfigDict):
        config = ml_collections.ConfigDict(dict(config))
    if "name" in config:
        _check_name(config.name)
    config = _full_config(config)
    check_datasets(config)
    return KINDS[config.name].build(config)


def check_datasets(config: ml_collections.ConfigDict) -> None:
    """Raises `tfds_io.DatasetNotFoundError` (naming each missing dataset and the command that
    prepares it) unless every tfds dataset that stream `config` reads is in `config.data_dir`."""
    config = _full_config(config if isinstance(config, ml_collections.ConfigDict) else ml_collections.ConfigDict(dict(config)))
    splits = (config.train_split, config.test_split) if config.name == "class_split" else None
    tfds_io.require(_datasets_of(config), config.data_dir, splits)


def _datasets_of(config) -> tuple[str, ...]:
    """The tfds datasets stream `config.name` reads (checked before any is read)."""
    if config.name == "transfer":
        return tuple(d for d in dict.fromkeys(_transfer_pair(config)) if d not in EMBEDDED_TRANSFER_DATASETS)
    if config.name == "class_split":
        if not config.dataset:
            raise ValueError("stream class_split needs data.dataset, the name of a tfds image-classification dataset "
                             "(e.g. --config.data.dataset=kmnist)")
        return (config.dataset,)
    return KINDS[config.name].datasets
