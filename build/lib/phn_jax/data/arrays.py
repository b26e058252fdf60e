"""Host-side (NumPy) image array operations used while a stream is built.

Everything here runs once per stream build on uint8 arrays in NHWC layout; the per-batch,
on-device operations live in `phn_jax.data.transforms`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Images resized per chunk, so that the float32 intermediate stays small (chunk·H·W·C·4 bytes).
_RESIZE_CHUNK = 2048


def _interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Linear-interpolation weights M[out_size, in_size] with half-pixel centres.

    Output pixel i samples the input at s = (i + 1/2)·in/out − 1/2, clamped to [0, in−1]:
    M[i, ⌊s⌋] = 1 − (s − ⌊s⌋) and M[i, min(⌊s⌋+1, in−1)] += s − ⌊s⌋. This is bilinear
    resizing without antialiasing (torch `interpolate(mode="bilinear", align_corners=False)`,
    which the reference code's `transforms.Resize` applied to tensors). Halving a size
    averages pixel pairs exactly (s = 2i + 1/2).
    """
    s = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
    s = np.clip(s, 0.0, in_size - 1)
    lo = np.floor(s).astype(np.int64)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = s - lo
    m = np.zeros((out_size, in_size), dtype=np.float64)
    np.add.at(m, (np.arange(out_size), lo), 1.0 - frac)
    np.add.at(m, (np.arange(out_size), hi), frac)
    return m


def resize_bilinear(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resizes uint8 images [N, H, W, C] to [N, h, w, C] (bilinear, half-pixel centres).

    out[n, i, j, c] = Σ_a Σ_b Mh[i, a] · Mw[j, b] · images[n, a, b, c], rounded to uint8, with
    M from `_interpolation_matrix`. Returns the input unchanged when the size already matches.
    """
    if images.ndim != 4:
        raise ValueError(f"expected images [N, H, W, C], got shape {images.shape}")
    h_in, w_in = images.shape[1:3]
    if (h_in, w_in) == tuple(size):
        return images
    mh = _interpolation_matrix(h_in, size[0]).astype(np.float32)
    mw = _interpolation_matrix(w_in, size[1]).astype(np.float32)
    out = np.empty((images.shape[0], size[0], size[1], images.shape[3]), dtype=np.uint8)
    for start in range(0, images.shape[0], _RESIZE_CHUNK):
        chunk = images[start : start + _RESIZE_CHUNK].astype(np.float32)
        resized = np.einsum("ia,jb,nabc->nijc", mh, mw, chunk, optimize=True)
        out[start : start + _RESIZE_CHUNK] = np.clip(np.rint(resized), 0, 255).astype(np.uint8)
    return out


def pad_to(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Zero-pads uint8 images [N, H, W, C] symmetrically to [N, h, w, C] (h ≥ H, w ≥ W).

    The extra rows/columns go (h−H)//2 above and the rest below (likewise for columns):
    MNIST's 28×28 becomes 32×32 with 2 zero pixels on every side.
    """
    dh, dw = size[0] - images.shape[1], size[1] - images.shape[2]
    if dh < 0 or dw < 0:
        raise ValueError(f"cannot pad images of shape {images.shape[1:3]} to {size}")
    pads = ((0, 0), (dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2), (0, 0))
    return np.pad(images, pads)


def with_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """Returns [N, H, W, channels]: 1-channel images are repeated, others must already match."""
    if images.shape[-1] == channels:
        return images
    if images.shape[-1] == 1:
        return np.repeat(images, channels, axis=-1)
    raise ValueError(f"cannot turn {images.shape[-1]}-channel images into {channels} channels")


def stack_resized(images: Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Stacks uint8 images [H_i, W_i, C] of possibly different sizes into [N, h, w, C].

    Images of the target size are kept as they are; the others are resized with
    `resize_bilinear` (GTSRB's photographs range from 15×15 to 250×250 pixels).
    """
    if not images:
        raise ValueError("no images to stack")
    shapes = {im.shape for im in images}
    if len(shapes) == 1:
        return resize_bilinear(np.stack(images), size)
    return np.stack([resize_bilinear(im[None], size)[0] for im in images])
