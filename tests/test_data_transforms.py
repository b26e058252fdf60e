"""On-device input pipeline: augmentations, noisy-stream transforms against NumPy/SciPy, batching."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from phn_jax.data import Preprocess, epoch_indices, eval_indices, iteration_indices, preprocess, sweeps_per_call
from phn_jax.data import transforms as T

# One compiled function per (spec, train, shape), shared by every test of this module.
PRE = jax.jit(preprocess, static_argnames=("spec", "train"))
EPOCH = jax.jit(epoch_indices, static_argnames=("num_examples", "batch_size"))

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, size=(12, 8, 8, 3), dtype=np.uint8)
UNIT = IMAGES.astype(np.float32) / 255.0
IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _windows(image: np.ndarray, padding: int) -> list[np.ndarray]:
    """Every H×W window of the zero-padded image, and each window's mirror."""
    h, w, _ = image.shape
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    out = []
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            window = padded[dy : dy + h, dx : dx + w]
            out += [window, window[:, ::-1]]
    return out


def _blur_reference(x: np.ndarray, sigma: float) -> np.ndarray:
    """SciPy's 5-tap Gaussian over H and W with whole-sample reflection ("mirror" = torch reflect)."""
    return ndimage.gaussian_filter(x.astype(np.float64), sigma=sigma, radius=2, mode="mirror", axes=(0, 1))


def _autocontrast_reference(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        for c in range(x.shape[-1]):
            ch = x[b, :, :, c]
            lo, hi = ch.min(), ch.max()
            out[b, :, :, c] = ch if hi == lo else np.clip((ch - lo) / (hi - lo), 0, 1)
    return out


def _gray_reference(x: np.ndarray) -> np.ndarray:
    luma = 0.2989 * x[..., 0] + 0.5870 * x[..., 1] + 0.1140 * x[..., 2]
    return np.repeat(luma[..., None], 3, axis=-1)


@pytest.mark.parametrize("augment", ["none", "flip", "crop_flip"])
def test_shapes_dtype_and_key_determinism(augment):
    spec = Preprocess(augment=augment, **IDENTITY)
    key = jax.random.key(1)
    a = PRE(spec, key, IMAGES, train=True)
    b = PRE(spec, key, IMAGES, train=True)
    c = PRE(spec, jax.random.key(2), IMAGES, train=True)
    assert a.shape == IMAGES.shape and a.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)
    if augment == "none":
        np.testing.assert_allclose(a, UNIT, atol=1e-6)
    else:
        assert not np.array_equal(a, c)


def test_crop_flip_outputs_are_padded_windows_and_vary():
    spec = Preprocess(augment="crop_flip", **IDENTITY)
    out = np.asarray(PRE(spec, jax.random.key(3), IMAGES, train=True))
    used = set()
    for b in range(len(IMAGES)):
        matches = [i for i, w in enumerate(_windows(UNIT[b], 4)) if np.allclose(w, out[b], atol=1e-6)]
        assert matches, f"image {b} is no (flipped) window of its zero-padded input"
        used.add(matches[0])
    assert len(used) > 3  # offsets and flips differ between images


def test_flip_only_mirrors_some_images_and_keeps_others():
    spec = Preprocess(augment="flip", **IDENTITY)
    out = np.asarray(PRE(spec, jax.random.key(4), IMAGES, train=True))
    kept = [np.allclose(out[b], UNIT[b], atol=1e-6) for b in range(len(IMAGES))]
    mirrored = [np.allclose(out[b], UNIT[b, :, ::-1], atol=1e-6) for b in range(len(IMAGES))]
    assert all(k or m for k, m in zip(kept, mirrored))
    assert any(kept) and any(mirrored)


def test_eval_skips_augmentation_and_normalises():
    mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    spec = Preprocess(augment="crop_flip", mean=mean, std=std)
    out = PRE(spec, jax.random.key(5), IMAGES, train=False)
    np.testing.assert_allclose(out, (UNIT - np.array(mean)) / np.array(std), rtol=1e-5, atol=1e-5)


def test_solarize_matches_numpy_and_applies_at_test_time():
    spec = Preprocess(noise="solarize", **IDENTITY)
    out = PRE(spec, jax.random.key(6), IMAGES, train=False)
    np.testing.assert_allclose(out, np.where(UNIT >= 0.5, 1.0 - UNIT, UNIT), atol=1e-6)
    assert not np.allclose(out, UNIT)


def test_blur_matches_scipy_with_reflect_borders():
    out = np.asarray(T.gaussian_blur(jnp.asarray(UNIT[:3]), T.BLUR_SIGMA))
    for b in range(3):
        np.testing.assert_allclose(out[b], _blur_reference(UNIT[b], T.BLUR_SIGMA), atol=1e-5)


def test_autocontrast_matches_numpy_including_constant_channel():
    x = UNIT[:3].copy() * 0.5 + 0.2  # range [0.2, 0.7]: autocontrast must stretch it
    x[1, :, :, 2] = 0.3  # a constant channel is left unchanged
    out = np.asarray(T.autocontrast(jnp.asarray(x)))
    np.testing.assert_allclose(out, _autocontrast_reference(x), atol=1e-6)
    assert out[0].min() == 0.0 and out[0].max() == pytest.approx(1.0)


def test_grayscale_matches_rec601_weights():
    out = np.asarray(T.grayscale(jnp.asarray(UNIT[:3])))
    np.testing.assert_allclose(out, _gray_reference(UNIT[:3]), atol=1e-6)


def test_autocontrast_gray_blur_uses_one_sigma_per_image_in_range():
    key = jax.random.key(7)
    x = UNIT[:4]
    out = np.asarray(T.apply_noise("autocontrast_gray_blur", key, jnp.asarray(x)))
    sigmas = np.asarray(jax.random.uniform(key, (4,), minval=0.6, maxval=0.7))
    assert np.all((sigmas >= 0.6) & (sigmas <= 0.7)) and len(set(sigmas.tolist())) == 4
    gray = _gray_reference(_autocontrast_reference(x))
    for b in range(4):
        np.testing.assert_allclose(out[b], _blur_reference(gray[b], sigmas[b]), atol=1e-5)
    # The random sigma makes a different key give a (slightly) different image.
    other = np.asarray(T.apply_noise("autocontrast_gray_blur", jax.random.key(8), jnp.asarray(x)))
    assert not np.allclose(out, other, atol=1e-7)


def test_single_channel_images_are_repeated_to_three():
    gray = IMAGES[..., :1]
    out = PRE(Preprocess(**IDENTITY), jax.random.key(9), gray, train=False)
    assert out.shape == (12, 8, 8, 3)
    np.testing.assert_allclose(out, np.repeat(UNIT[..., :1], 3, axis=-1), atol=1e-6)


def test_preprocess_spec_is_hashable_and_validated():
    a = Preprocess(augment="flip", mean=[0.5, 0.5, 0.5], std=(1, 1, 1))
    b = Preprocess(augment="flip", mean=(0.5, 0.5, 0.5), std=(1.0, 1.0, 1.0))
    assert a == b and hash(a) == hash(b)
    with pytest.raises(ValueError, match="augment"):
        Preprocess(augment="rotate")
    with pytest.raises(ValueError, match="noise"):
        Preprocess(noise="jpeg")
    with pytest.raises(ValueError, match="mean"):
        Preprocess(mean=(0.5,), std=(0.5,), channels=3)


@pytest.mark.parametrize("n,b", [(10, 4), (12, 4), (3, 8)])
def test_epoch_is_a_padded_permutation(n, b):
    idx, mask = EPOCH(jax.random.key(10), n, b)
    idx, mask = np.asarray(idx), np.asarray(mask)
    s = -(-n // b)
    assert idx.shape == mask.shape == (s, b) and idx.dtype == np.int32
    np.testing.assert_array_equal(np.sort(idx[mask]), np.arange(n))  # each sample exactly once
    assert mask.sum() == n and mask[:-1].all()  # padding only in the last batch
    assert np.all(idx[~mask] == 0)


def test_epochs_differ_between_keys_and_match_eager():
    a, _ = EPOCH(jax.random.key(11), 64, 16)
    b, _ = EPOCH(jax.random.key(12), 64, 16)
    eager, _ = epoch_indices(jax.random.key(11), 64, 16)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, eager)
    assert not np.array_equal(np.asarray(a).ravel(), np.arange(64))


def test_eval_indices_keep_storage_order():
    idx, mask = eval_indices(10, 4)
    np.testing.assert_array_equal(idx[mask], np.arange(10))
    assert idx.shape == (3, 4) and mask.sum() == 10 and not mask[-1, 2:].any()


ITER = jax.jit(iteration_indices, static_argnames=("num_examples", "batch_size", "steps", "iterations", "sweeps"))


def _iterations(steps: int, sweeps: int, *, n=21, size=24, batch=4, iterations=20):
    """The rows of every call of an experience of `iterations` steps, `steps` a call: idx, mask [calls·steps, B]."""
    calls = -(-iterations // steps)
    out = [ITER(jax.random.key(3), c, size, batch, steps, iterations, n, sweeps) for c in range(calls)]
    return np.concatenate([np.asarray(i) for i, _ in out]), np.concatenate([np.asarray(m) for _, m in out])


def test_iterations_draw_full_batches_from_one_reshuffled_sweep_after_another():
    """train.iterations (von Oswald et al.'s loop): 20 steps of 4 from 21 real samples (24 with padding),
    6 steps a call: every step's batch full, the 80 draws three whole permutations of the 21 and the
    start of a fourth (batch 6 takes the last of the first sweep and the first three of the second:
    hypercl's generator goes on into the next sweep), the sweeps shuffled apart, no padding drawn;
    the 4 steps after the 20th masked out whole. The same draws however the steps are cut into calls
    (3 a call), and with more permutations prepared than a call can touch."""
    steps, batch, n = 6, 4, 21
    idx, mask = _iterations(steps, sweeps_per_call(steps, batch, n))
    assert idx.shape == (24, 4) and mask[:20].all() and not mask[20:].any()
    draws = idx[:20].ravel()
    sweeps = [draws[k * n:(k + 1) * n] for k in range(3)]
    for sweep in sweeps:
        np.testing.assert_array_equal(np.sort(sweep), np.arange(n))
    rest = draws[3 * n:]
    assert len(rest) == 17 and len(set(rest.tolist())) == 17 and rest.max() < n
    assert not np.array_equal(sweeps[0], sweeps[1]) and not np.array_equal(sweeps[1], sweeps[2])
    np.testing.assert_array_equal(idx[5], [sweeps[0][20], *sweeps[1][:3]])
    assert sweeps_per_call(3, batch, n) == 2 and sweeps_per_call(steps, batch, n) == 3
    np.testing.assert_array_equal(_iterations(3, sweeps_per_call(3, batch, n))[0][:20], idx[:20])
    np.testing.assert_array_equal(_iterations(steps, 5)[0], idx)
