"""On-device input pipeline of one experience: augmentation, the noisy stream's transforms, and
normalisation, as pure jittable functions of a uint8 batch and an explicit `jax.random` key.

The order is the reference code's (torchvision):
  random crop / flip (train only) → scale to [0, 1] → noisy transform (train and test) → normalise.
dm-pix provides flip, crop, solarize, Gaussian blur and grayscale; autocontrast and the reflect
padding that torchvision's blur uses are written here.
"""

from __future__ import annotations

import dataclasses

import dm_pix as pix
import jax
import jax.numpy as jnp

from phn_jax.runtime import float_dtype, random_floats

AUGMENTATIONS = ("none", "flip", "crop_flip")
NOISES = ("none", "solarize", "blur", "autocontrast_gray_blur")

SOLARIZE_THRESHOLD = 0.5  # experience 2: invert values ≥ 0.5 (on [0, 1])
BLUR_KERNEL = 5  # experiences 3 and 4: 5×5 Gaussian kernel
BLUR_SIGMA = 0.9  # experience 3: fixed σ
GRAY_BLUR_SIGMA = (0.6, 0.7)  # experience 4: σ ~ U[0.6, 0.7], drawn per image


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """The input pipeline of one experience; frozen and hashable (a `static_argnames` value).

    Attributes:
      augment: train-time augmentation. "crop_flip": zero-pad by `crop_padding` pixels, random
        crop back to H×W, horizontal flip with probability 1/2 (CIFAR); "flip": the flip only
        (TinyImageNet); "none".
      noise: the noisy-CIFAR100 transform applied at train and test time to images in [0, 1]:
        "solarize" (x ↦ 1 − x where x ≥ 0.5), "blur" (5×5 Gaussian, σ = 0.9),
        "autocontrast_gray_blur" (per-image autocontrast, rec.601 grayscale copied to 3
        channels, 5×5 Gaussian with σ ~ U[0.6, 0.7] per image), or "none".
      mean, std: per-output-channel normalisation, x ↦ (x − mean) / std.
      channels: output channels; 1-channel inputs are repeated to this many before the noise
        transform (MNIST-like datasets feed the 3-channel ResNet this way).
      crop_padding: the zero padding of "crop_flip".
    """

    augment: str = "none"
    noise: str = "none"
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    channels: int = 3
    crop_padding: int = 4

    def __post_init__(self):
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {self.augment!r}")
        if self.noise not in NOISES:
            raise ValueError(f"noise must be one of {NOISES}, got {self.noise!r}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} values, got {self.mean} and {self.std}")
        if self.noise == "autocontrast_gray_blur" and self.channels != 3:
            raise ValueError("autocontrast_gray_blur needs 3 output channels")
        # Tuples of Python floats, so that equal specs hash equally whatever was passed in.
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    """Flips each image of [B, H, W, C] left-right with probability 1/2 (independent per image)."""
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(pix.random_flip_left_right)(keys, images)


def random_crop(key: jax.Array, images: jax.Array, padding: int) -> jax.Array:
    """Zero-pads [B, H, W, C] by `padding` on each side and crops a random H×W window per image.

    Each window offset (dy, dx) is uniform on {0..2·padding}²; out[b] = padded[b, dy:dy+H, dx:dx+W].
    """
    b, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    keys = jax.random.split(key, b)
    return jax.vmap(lambda k, im: pix.random_crop(k, im, (h, w, c)))(keys, padded)


def solarize(images: jax.Array, threshold: float = SOLARIZE_THRESHOLD) -> jax.Array:
    """x ↦ x if x < threshold else 1 − x, elementwise (torchvision RandomSolarize, p = 1)."""
    return pix.solarize(images, threshold)


def gaussian_blur(images: jax.Array, sigma: jax.Array | float, kernel_size: int = BLUR_KERNEL) -> jax.Array:
    """Separable Gaussian blur of [B, H, W, C] with reflect padding (torchvision's GaussianBlur).

    Kernel g[k] ∝ exp(−k² / (2σ²)) for k = −r..r, r = kernel_size // 2, normalised to sum 1, run
    along H then W. Borders use reflection without repeating the edge ("d c b | a b c d").
    `sigma` is a scalar or one σ per image [B].
    """
    r = kernel_size // 2
    padded = jnp.pad(images, ((0, 0), (r, r), (r, r), (0, 0)), mode="reflect")
    sigmas = jnp.broadcast_to(jnp.asarray(sigma, images.dtype), images.shape[:1])
    blur = lambda im, s: pix.gaussian_blur(im, s, kernel_size, padding="VALID")  # noqa: E731
    return jax.vmap(blur)(padded, sigmas)


def autocontrast(images: jax.Array) -> jax.Array:
    """Per image and channel, stretches [min, max] to [0, 1] (torchvision autocontrast on floats).

    out = clip((x − lo) · 1/(hi − lo), 0, 1) with lo, hi the channel's min and max over H×W; a
    constant channel (hi = lo) is left unchanged.
    """
    lo = jnp.min(images, axis=(1, 2), keepdims=True)
    hi = jnp.max(images, axis=(1, 2), keepdims=True)
    constant = hi <= lo
    scale = jnp.where(constant, 1.0, 1.0 / jnp.where(constant, 1.0, hi - lo))
    lo = jnp.where(constant, 0.0, lo)
    return jnp.clip((images - lo) * scale, 0.0, 1.0)


def grayscale(images: jax.Array) -> jax.Array:
    """Rec.601 luma 0.2989 R + 0.5870 G + 0.1140 B, repeated to 3 channels: [B, H, W, 3]."""
    return pix.rgb_to_grayscale(images, keep_dims=True)


def apply_noise(noise: str, key: jax.Array, images: jax.Array) -> jax.Array:
    """The noisy-CIFAR100 transform `noise` (see `Preprocess`) of images in [0, 1]."""
    if noise == "none":
        return images
    if noise == "solarize":
        return solarize(images)
    if noise == "blur":
        return gaussian_blur(images, BLUR_SIGMA)
    if noise == "autocontrast_gray_blur":
        sigma = random_floats(jax.random.uniform, key, images.shape[:1], minval=GRAY_BLUR_SIGMA[0],
                              maxval=GRAY_BLUR_SIGMA[1])
        return gaussian_blur(grayscale(autocontrast(images)), sigma)
    raise ValueError(f"unknown noise {noise!r}; expected one of {NOISES}")


def preprocess(spec: Preprocess, key: jax.Array, images: jax.Array, train: bool) -> jax.Array:
    """uint8 [B, H, W, C_in] → float32 [B, H, W, spec.channels], the model's input.

    x = images / 255; if train: augment (spec.augment); repeat a single channel to
    spec.channels; x = noise(x) (spec.noise, train and test); return (x − mean) / std.
    Pure and jittable with `spec` and `train` static; `key` drives the crop, the flip and the
    random blur σ (the same key gives the same batch).
    """
    aug_key, noise_key = jax.random.split(key)
    x = images.astype(float_dtype()) / 255.0
    if train and spec.augment != "none":
        crop_key, flip_key = jax.random.split(aug_key)
        if spec.augment == "crop_flip":
            x = random_crop(crop_key, x, spec.crop_padding)
        x = random_flip(flip_key, x)
    if x.shape[-1] != spec.channels:
        if x.shape[-1] != 1:
            raise ValueError(f"cannot map {x.shape[-1]}-channel images to {spec.channels} channels")
        x = jnp.repeat(x, spec.channels, axis=-1)
    x = apply_noise(spec.noise, noise_key, x)
    mean = jnp.asarray(spec.mean, float_dtype())
    std = jnp.asarray(spec.std, float_dtype())
    return (x - mean) / std
