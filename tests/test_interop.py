"""The converter to and from the reference implementation's state_dict (phn_jax.interop): a round
trip is the identity, and the reference's computations, written here in NumPy on its own layouts
(OIHW convolutions, GenHead's (C_in, kh, kw) outputs, nn.Linear's [out, in]), give what ours give."""
import jax
import numpy as np
import pytest

from phn_jax import interop, models
from phn_jax.partial_hnet import PartialHypernetwork

CFG = models.ResNetConfig(num_classes=3, nf=4, blocks_per_stage=(2, 1, 1, 1))
TASKS = 3


def _model(k: int, kind: str = "heads") -> PartialHypernetwork:
    return PartialHypernetwork.create(CFG, k, TASKS, kind=kind, embedding_dim=5, hidden_dims=(6, 7),
                                      **({"head_embedding_dim": 4} if kind == "heads" else {}))


def _random_params(model, seed=0):
    """φ and ψ with every value random (tables and biases too), so no layout mistake hides in zeros."""
    shapes = jax.eval_shape(model.init, jax.random.key(seed))  # (shapes only: nothing to compile)
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda a: rng.standard_normal(a.shape).astype(np.float32), shapes)


@pytest.mark.parametrize("k", [0, 1, 3, 4])
def test_round_trip_is_the_identity(k):
    model = _model(k)
    phi, psi = _random_params(model)
    sd = interop.to_reference(phi, psi, model)
    back_phi, back_psi = interop.from_reference(sd, model)
    jax.tree_util.tree_map(np.testing.assert_array_equal, (back_phi, back_psi), (phi, psi))
    frozen, stateless = models.part_names(k)
    names = [n for _, n in interop.torch_names(CFG, stateless)]
    assert sum(key.startswith("weight_generator.heads.") and key.endswith(("linear.weight", "params"))
               for key in sd) == len(names)  # one head per parameter of feat_extractor_sl, in its order
    assert all(interop.SL + n in sd for n in names) and (k == 0) == (not any(key.startswith(interop.SF) for key in sd))
    again = interop.to_reference(back_phi, back_psi, model)
    assert sd.keys() == again.keys() and all(np.array_equal(sd[key], again[key]) for key in sd)


def _reference_generate(sd, t):
    """The reference WeightGenerator.forward for task t, in NumPy on its state_dict: the generated
    parameters of feat_extractor_sl in named_parameters order, in PyTorch's layouts."""
    wg = "weight_generator."
    relu = lambda x: np.maximum(x, 0)
    linear = lambda x, name: x @ sd[f"{wg}{name}.weight"].T + sd[f"{wg}{name}.bias"]
    x = relu(linear(relu(linear(sd[wg + "embedding.weight"][t], "layers.0")), "layers.2"))
    out, i = [], 0
    while f"{wg}heads.{i}.linear.weight" in sd or f"{wg}heads.{i}.params" in sd:
        head = f"heads.{i}"
        if f"{wg}{head}.emb1.weight" in sd:  # GenHead: [x ; emb1_c] -> C_in*kh*kw per output channel c
            emb = sd[f"{wg}{head}.emb1.weight"]
            cat = np.concatenate([np.repeat(x[None], emb.shape[0], 0), emb], axis=1)
            out.append(("conv", linear(cat, f"{head}.linear")))
        elif f"{wg}{head}.linear.weight" in sd:  # LinearLayer
            out.append(("linear", linear(x, f"{head}.linear")))
        else:  # LinHead
            out.append(("table", sd[f"{wg}{head}.params"][t]))
        i += 1
    return out


@pytest.mark.parametrize("k", [0, 2])
def test_generated_weights_equal_the_reference_computation(k):
    model = _model(k)
    phi, psi = _random_params(model, seed=1)
    sd = interop.to_reference(phi, psi, model)
    for t in range(TASKS):
        ours = jax.tree_util.tree_map(np.asarray, model.hnet.apply(psi, t))
        theirs = _reference_generate(sd, t)
        names = interop.torch_names(CFG, models.part_names(k)[1])
        assert len(theirs) == len(names)
        for (path, name), (kind, value) in zip(names, theirs):
            mine = ours
            for p in path:
                mine = mine[p]
            sl = sd[interop.SL + name]  # the reference views each output as its parameter's shape
            value = value.reshape(sl.shape)
            if kind == "conv":  # OIHW there, OHWI here
                mine = mine.transpose(0, 3, 1, 2)
            elif kind == "linear":  # nn.Linear weight [C, D] there, kernel [D, C] here
                mine = mine.T
            np.testing.assert_allclose(value, mine.reshape(sl.shape), rtol=1e-5, atol=1e-5)


def _conv_oihw(x, w, stride):
    """NumPy conv on NCHW with an OIHW kernel, padding (kh-1)/2: PyTorch's Conv2d(bias=False)."""
    o, i, kh, kw = w.shape
    p = (kh - 1) // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    n, _, hh, ww = x.shape
    ho, wo = (hh + 2 * p - kh) // stride + 1, (ww + 2 * p - kw) // stride + 1
    out = np.zeros((n, o, ho, wo))
    for a in range(kh):
        for b in range(kw):
            patch = xp[:, :, a:a + stride * ho:stride, b:b + stride * wo:stride]
            out += np.einsum("nihw,oi->nohw", patch, w[:, :, a, b])
    return out


def _bn_train(x, weight, bias, eps=1e-5):
    """BatchNorm2d(track_running_stats=False): the batch's statistics (biased variance)."""
    mean, var = x.mean((0, 2, 3), keepdims=True), x.var((0, 2, 3), keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight[None, :, None, None] + bias[None, :, None, None]


def test_frozen_part_forward_of_converted_weights_equals_ours():
    """feat_extractor_sf of HyperResNet18SPv2SH (stem, layer1, layer2), in NumPy on the converted
    state_dict, against our g_φ (models.frozen_apply) on the original φ."""
    model = _model(2)
    phi, psi = _random_params(model, seed=2)
    sd = {k: v.astype(np.float64) for k, v in interop.to_reference(phi, psi, model).items()}
    w = lambda name: sd[interop.SF + name]
    relu = lambda v: np.maximum(v, 0)
    x = np.random.default_rng(3).standard_normal((4, 3, 8, 8))
    out = relu(_bn_train(_conv_oihw(x, w("conv1.weight"), 1), w("bn1.weight"), w("bn1.bias")))
    for layer, blocks, stride in (("layer1", 2, 1), ("layer2", 1, 2)):
        for b in range(blocks):
            s, pre = stride if b == 0 else 1, f"{layer}.{b}."
            y = relu(_bn_train(_conv_oihw(out, w(pre + "conv1.weight"), s), w(pre + "bn1.weight"), w(pre + "bn1.bias")))
            y = _bn_train(_conv_oihw(y, w(pre + "conv2.weight"), 1), w(pre + "bn2.weight"), w(pre + "bn2.bias"))
            short = out
            if interop.SF + pre + "shortcut.0.weight" in sd:
                short = _bn_train(_conv_oihw(out, w(pre + "shortcut.0.weight"), s), w(pre + "shortcut.1.weight"),
                                  w(pre + "shortcut.1.bias"))
            out = relu(y + short)
    ours, _ = models.frozen_apply(phi, x.transpose(0, 2, 3, 1).astype(np.float32), 2, CFG, train=True)
    np.testing.assert_allclose(np.asarray(ours).transpose(0, 3, 1, 2), out, rtol=1e-4, atol=1e-4)


def test_mismatched_state_dict_and_chunked_models_are_refused():
    model = _model(3)
    sd = interop.to_reference(*_random_params(model), model)
    with pytest.raises(ValueError, match="has no 'feat_extractor_sf.layer3.0.conv1.weight'"):
        interop.from_reference({k: v for k, v in sd.items() if "layer3.0.conv1" not in k}, model)
    with pytest.raises(ValueError, match="weight_generator.embedding.weight has shape"):
        interop.from_reference({**sd, "weight_generator.embedding.weight": np.zeros((TASKS + 1, 5))}, model)
    chunked = _model(3, kind="chunked")
    with pytest.raises(ValueError, match="per-tensor heads only"):
        interop.to_reference(*_random_params(chunked), chunked)
