"""Weights in and out of the reference implementation (HamedHemati/Partial-Hypernetworks-for-CL).

    state_dict = to_reference(phi, psi, model)     # {name: NumPy array}: torch.save-able after torch.from_numpy
    phi, psi = from_reference(state_dict, model)   # a state_dict of theirs (tensors .numpy()'d) as our pytrees

`model` is our `PartialHypernetwork` at freeze depth k with per-tensor heads (`hnet.kind='heads'`,
the reference's), which the reference builds as HyperResNet18SH (k = 0) or HyperResNet18SPv{k}SH
(k = 1..4), with embd_dim, hidden_size_1/2 and head_emb_dim equal to our embedding_dim,
hidden_dims and head_embedding_dim. Its state_dict has three parts:

  feat_extractor_sf.*  g_φ, the frozen part: conv1 and bn1 (our stem), then layer<s>.<b> (our
                       stage<s>/block<b+1>) with conv1, bn1, conv2, bn2, shortcut.0 (a 1×1 conv),
                       shortcut.1 (its norm); a norm's weight is our scale.
  feat_extractor_sl.*  the stateless part's modules under the same names. Their values are never
                       used (the hypernetwork generates them); `to_reference` writes zeros.
  weight_generator.*   H_ψ: embedding.weight [T, E] (our embeddings), layers.0 and layers.2 (the
                       MLP's two Linear layers), and heads.<i>, one per parameter of
                       feat_extractor_sl in PyTorch's `named_parameters` order:
      conv kernel        GenHead: emb1.weight [C_out, d] (our lookup table c), linear.weight
                         [C_in·kh·kw, h + d] and linear.bias (our A = [A_h; A_c] and b), emb1_inp (a
                         buffer, arange(C_out)); its outputs per channel are in (C_in, kh, kw) order,
                         ours in (kh, kw, C_in) order;
      classifier weight  LinearLayer: linear.weight [C·D, h], linear.bias: outputs in PyTorch's
                         [C, D] order, ours [D, C];
      vectors            LinHead: params [T, size] (norm weight = our scale table, norm bias,
                         classifier bias).
Layouts: convolutions OIHW there, OHWI here; nn.Linear weights [out, in] there, kernels [in, out] here.
The conversion moves values only (no arithmetic): a round trip is the identity, bit for bit.
"""
from __future__ import annotations

import jax
import numpy as np
from flax import traverse_util

from phn_jax import models
from phn_jax.hypernetwork import Hypernetwork
from phn_jax.partial_hnet import PartialHypernetwork

SF, SL, WG = "feat_extractor_sf.", "feat_extractor_sl.", "weight_generator."


def torch_names(cfg: models.ResNetConfig, module_names) -> list[tuple[tuple[str, ...], str]]:
    """(our path, its PyTorch name) of every parameter of the named top-level modules ('stem',
    'stage<s>', 'classifier'), in PyTorch's `named_parameters` order."""
    norm = lambda ours, theirs: [(ours + ("scale",), f"{theirs}.weight"), (ours + ("bias",), f"{theirs}.bias")]
    out = []
    for name in module_names:
        if name == "stem":
            out += [(("stem", "conv"), "conv1.weight")] + norm(("stem", "bn"), "bn1")
        elif name == "classifier":
            out += [(("classifier", "kernel"), "classifier.weight"), (("classifier", "bias"), "classifier.bias")]
        else:
            for stage, block, _, _, _, shortcut in models.block_shapes(cfg):
                if stage != name:
                    continue
                ours, theirs = (stage, block), f"layer{stage[-1]}.{int(block[5:]) - 1}"
                out += [(ours + ("conv1",), f"{theirs}.conv1.weight")] + norm(ours + ("bn1",), f"{theirs}.bn1")
                out += [(ours + ("conv2",), f"{theirs}.conv2.weight")] + norm(ours + ("bn2",), f"{theirs}.bn2")
                if shortcut:
                    out += [(ours + ("shortcut_conv",), f"{theirs}.shortcut.0.weight")]
                    out += norm(ours + ("shortcut_bn",), f"{theirs}.shortcut.1")
    return out


def _to_torch(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    """One target parameter in PyTorch's layout: OHWI -> OIHW, a classifier kernel [D, C] -> [C, D]."""
    if value.ndim == 4:
        return value.transpose(0, 3, 1, 2)
    return value.T if path[-1] == "kernel" else value


def _from_torch(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:
        return value.transpose(0, 2, 3, 1)
    return value.T if path[-1] == "kernel" else value


def _conv_columns(a: np.ndarray, kh: int, kw: int, c_in: int, to_torch: bool) -> np.ndarray:
    """A conv head's last axis (its map's columns or its bias) from our (kh, kw, C_in) order to the
    reference's (C_in, kh, kw) order (to_torch), or back."""
    n = a.ndim - 1
    if to_torch:
        return a.reshape(*a.shape[:-1], kh, kw, c_in).transpose(*range(n), n + 2, n, n + 1).reshape(a.shape)
    return a.reshape(*a.shape[:-1], c_in, kh, kw).transpose(*range(n), n + 1, n + 2, n).reshape(a.shape)


def _swap_columns(a: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The last axis read as [rows, cols], written as [cols, rows] (a classifier head's outputs)."""
    return a.reshape(*a.shape[:-1], rows, cols).swapaxes(-1, -2).reshape(a.shape)


def _check(model: PartialHypernetwork) -> Hypernetwork:
    if model.is_mlp or model.is_flax:
        raise ValueError("the reference implementation's target is the slim ResNet-18: an MLP-target model "
                         "(model.arch='mlp') or a user's module (model.arch='flax') has no counterpart there to "
                         "convert to")
    if not isinstance(model.hnet, Hypernetwork):
        raise ValueError("the reference implementation has per-tensor heads only: convert a model with "
                         "hnet.kind='heads'")
    return model.hnet


def _shapes(cfg: models.ResNetConfig) -> dict:
    """{our path: shape} of every parameter of the uncut model, without computing anything."""
    shapes = jax.eval_shape(lambda: models.init_resnet(jax.random.key(0), cfg))
    return {path: tuple(s.shape) for path, s in traverse_util.flatten_dict(shapes).items()}


def _heads(model: PartialHypernetwork):
    """(head index, our path, PyTorch name, shape in our layout) of each generated tensor."""
    shapes = _shapes(model.net)
    stateless = models.part_names(model.freeze_depth)[1]
    return [(i, path, name, shapes[path]) for i, (path, name) in enumerate(torch_names(model.net, stateless))]


def to_reference(phi, psi, model: PartialHypernetwork) -> dict[str, np.ndarray]:
    """Our (φ, ψ) as the reference model's state_dict (NumPy arrays, float32 as given)."""
    hnet = _check(model)
    frozen, _ = models.part_names(model.freeze_depth)
    flat_phi = traverse_util.flatten_dict(phi)
    out = {SF + name: _to_torch(path, np.asarray(flat_phi[path])) for path, name in torch_names(model.net, frozen)}
    out[WG + "embedding.weight"] = np.asarray(psi["embeddings"])
    for j, layer in zip((0, 2), psi["mlp"]):
        out[f"{WG}layers.{j}.weight"] = np.asarray(layer["kernel"]).T
        out[f"{WG}layers.{j}.bias"] = np.asarray(layer["bias"])
    for i, path, name, shape in _heads(model):
        p = {k: np.asarray(v) for k, v in psi["heads"]["/".join(path)].items()}
        out[SL + name] = _to_torch(path, np.zeros(shape, np.float32))
        head = f"{WG}heads.{i}."
        if len(shape) == 4:
            c_out, kh, kw, c_in = shape
            out[head + "linear.weight"] = _conv_columns(p["kernel"], kh, kw, c_in, to_torch=True).T
            out[head + "linear.bias"] = _conv_columns(p["bias"], kh, kw, c_in, to_torch=True)
            out[head + "emb1.weight"] = p["lookup"]
            out[head + "emb1_inp"] = np.arange(c_out)
        elif len(shape) == 2:
            out[head + "linear.weight"] = _swap_columns(p["kernel"], *shape).T
            out[head + "linear.bias"] = _swap_columns(p["bias"], *shape)
        else:
            out[head + "params"] = p["table"].reshape(hnet.num_tasks, -1)
    return out


def from_reference(state_dict, model: PartialHypernetwork) -> tuple[dict, dict]:
    """The reference model's state_dict (arrays, or tensors with .numpy()) as our (φ, ψ).

    Raises ValueError naming the first key that is missing or has another shape than `model` needs
    (freeze depth, widths, task count, embedding sizes must match the reference model's)."""
    hnet = _check(model)
    sd = {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v) for k, v in state_dict.items()}

    def get(key, shape):
        if key not in sd:
            raise ValueError(f"the state_dict has no {key!r}: not the reference model at freeze depth "
                             f"{model.freeze_depth} (HyperResNet18{'SH' if model.freeze_depth == 0 else f'SPv{model.freeze_depth}SH'})")
        if sd[key].shape != tuple(shape):
            raise ValueError(f"{key} has shape {sd[key].shape}, this model needs {tuple(shape)}: the widths, "
                             "task count and embedding sizes must be the reference model's")
        return sd[key]

    frozen, _ = models.part_names(model.freeze_depth)
    shapes = _shapes(model.net)
    phi = {path: _from_torch(path, get(SF + name, _to_torch(path, np.zeros(shapes[path])).shape))
           for path, name in torch_names(model.net, frozen)}
    e, dims = hnet.embedding_dim, (hnet.embedding_dim,) + hnet.hidden_dims
    psi = {"embeddings": get(WG + "embedding.weight", (hnet.num_tasks, e)),
           "mlp": [{"kernel": get(f"{WG}layers.{j}.weight", (b, a)).T, "bias": get(f"{WG}layers.{j}.bias", (b,))}
                   for j, a, b in zip((0, 2), dims[:-1], dims[1:])],
           "heads": {}}
    h, d = hnet.hidden_dims[-1], hnet.head_embedding_dim
    for i, path, name, shape in _heads(model):
        head = f"{WG}heads.{i}."
        if len(shape) == 4:
            c_out, kh, kw, c_in = shape
            n = kh * kw * c_in
            p = {"kernel": _conv_columns(get(head + "linear.weight", (n, h + d)).T, kh, kw, c_in, to_torch=False),
                 "bias": _conv_columns(get(head + "linear.bias", (n,)), kh, kw, c_in, to_torch=False),
                 "lookup": get(head + "emb1.weight", (c_out, d))}
        elif len(shape) == 2:
            rows, cols = shape
            p = {"kernel": _swap_columns(get(head + "linear.weight", (rows * cols, h)).T, cols, rows),
                 "bias": _swap_columns(get(head + "linear.bias", (rows * cols,)), cols, rows)}
        else:
            p = {"table": get(head + "params", (hnet.num_tasks, int(np.prod(shape)))).reshape(hnet.num_tasks, *shape)}
        psi["heads"]["/".join(path)] = p
    return traverse_util.unflatten_dict(phi), psi
