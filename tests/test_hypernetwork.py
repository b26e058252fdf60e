"""The hypernetwork H_ψ and the partial hypernetwork model h(g(x; φ); H_ψ(t))."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from arrays import normal
from phn_jax import models
from phn_jax.hypernetwork import Hypernetwork, build_hypernetwork, output_sq_distances
from phn_jax.partial_hnet import PartialHypernetwork

# The paper's Table 6: hypernetwork sizes with C = 100 outputs and 20 tasks.
TABLE6 = {0: 1_272_877, 1: 1_217_122, 2: 1_119_522, 3: 924_322, 4: 533_922}


@pytest.mark.parametrize("k", range(5))
def test_parameter_count_equals_table6(k):
    model = PartialHypernetwork.create(models.ResNetConfig(num_classes=100), k, num_tasks=20)
    psi_shapes = jax.eval_shape(model.hnet.init, jax.random.key(0))
    assert models.count_params(psi_shapes) == TABLE6[k]
    assert model.hnet.num_params() == TABLE6[k]


def test_any_target_not_only_the_resnet():
    target = {"dense": {"kernel": jnp.zeros((7, 3)), "bias": jnp.zeros((3,))},
              "norm": {"scale": jnp.zeros((5,))}, "conv": jnp.zeros((4, 1, 1, 2))}
    hnet = Hypernetwork.for_target(target, num_tasks=2, embedding_dim=4, hidden_dims=(6, 5), head_embedding_dim=3)
    psi = hnet.init(jax.random.key(0))
    omega = hnet.apply(psi, 1)
    chex.assert_trees_all_equal_shapes(omega, target)
    np.testing.assert_array_equal(omega["norm"]["scale"], np.ones(5))  # table init 1 for a scale
    np.testing.assert_array_equal(omega["dense"]["bias"], np.zeros(3))
    # |ψ| = E 2x4 + MLP (4*6+6) + (6*5+5) + linear (5*21+21) + tables 2*3, 2*5 + conv (5+3)*2+2 + 4*3
    assert models.count_params(psi) == hnet.num_params() == 8 + 30 + 35 + 126 + 6 + 10 + 18 + 12
    with pytest.raises(ValueError, match="cannot generate"):
        Hypernetwork.for_target({"x": jnp.zeros((2, 2, 2))}, num_tasks=1)


def test_heads_against_direct_formula():
    """W[i] = A^T [h ; c_i] + b (conv), W = A^T h + b (linear), computed independently in NumPy."""
    target = {"conv": jnp.zeros((4, 3, 3, 2)), "fc": jnp.zeros((6, 5))}
    hnet = Hypernetwork.for_target(target, num_tasks=3)
    psi = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), hnet.init(jax.random.key(3)))
    t = 2
    h = psi["embeddings"][t]
    for layer in psi["mlp"]:
        h = np.maximum(h @ layer["kernel"] + layer["bias"], 0)
    c = psi["heads"]["conv"]
    conv_ref = np.stack([np.concatenate([h, c["lookup"][i]]) @ c["kernel"] + c["bias"] for i in range(4)])
    fc = psi["heads"]["fc"]
    omega = hnet.apply(jax.tree_util.tree_map(jnp.asarray, psi), t)
    np.testing.assert_allclose(omega["conv"], conv_ref.reshape(4, 3, 3, 2), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(omega["fc"], (h @ fc["kernel"] + fc["bias"]).reshape(6, 5), rtol=1e-4, atol=1e-5)


FACTORED = {
    "heads": dict(kind="heads", embedding_dim=3, hidden_dims=(7, 6), head_embedding_dim=2),
    # 90 + 24 + 5 = 119 generated values in chunks of 16: the last chunk keeps 7 of its 16 values; with the
    # norm's scale as a table 114 values, 3 chunks of 38
    "chunked": dict(kind="chunked", embedding_dim=3, hidden_dims=(7, 6), chunk_dim=16, chunk_embedding_dim=2,
                    vectors_as_tables=False, activation="elu"),
    "chunked, tables": dict(kind="chunked", embedding_dim=3, hidden_dims=(7, 6), chunk_dim=38, chunk_embedding_dim=2),
}


@pytest.mark.parametrize("name", FACTORED)
def test_factored_distances_equal_the_full_outputs_in_float64(name):
    """‖H_ψ(j) − H_ψ*(j)‖² from the factored snapshot (`sq_distances`) against the full outputs of every
    task (`output_sq_distances` of `apply` vmapped): value, gradient in ψ and a Hessian-vector product,
    in float64, with every leaf of ψ moved off ψ*; and the snapshot's size. For the chunked
    hypernetwork the factors are h*, W*, b* and the distances come from a Gram matrix (`output_gram`)."""
    target = {"conv": jnp.zeros((5, 3, 3, 2)), "fc": jnp.zeros((6, 4)), "norm": {"scale": jnp.zeros((5,))}}
    options = dict(FACTORED[name])
    hnet = build_hypernetwork(options.pop("kind"), target, 4, **options)
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        shapes = jax.eval_shape(hnet.init, jax.random.key(0))
        draw = lambda s: jnp.asarray(rng.normal(size=s.shape))
        psi_star = jax.tree_util.tree_map(draw, shapes)
        psi = jax.tree_util.tree_map(lambda a: a + 0.3 * draw(a), psi_star)
        v = jax.tree_util.tree_map(draw, shapes)
        outputs = lambda p: jax.vmap(hnet.apply, in_axes=(None, 0))(p, jnp.arange(4))  # every task's ω, unfactored
        full_targets = outputs(psi_star)
        full = lambda p: output_sq_distances(outputs(p), full_targets)
        targets = hnet.snapshot(psi_star)
        factored = lambda p: hnet.sq_distances(p, targets)
        weights = jnp.asarray(rng.uniform(size=4))
        fns = {name: jax.jit(lambda p, f=f: weights @ f(p)) for name, f in (("full", full), ("factored", factored))}
        np.testing.assert_allclose(factored(psi), full(psi), rtol=1e-12)
        assert np.all(np.asarray(full(psi)) > 1)  # every task moved: the check is not vacuous
        grads = {n: jax.grad(f)(psi) for n, f in fns.items()}
        hvps = {n: jax.jvp(jax.grad(f), (psi,), (v,))[1] for n, f in fns.items()}
        chex.assert_trees_all_close(grads["factored"], grads["full"], rtol=1e-10, atol=1e-12)
        chex.assert_trees_all_close(hvps["factored"], hvps["full"], rtol=1e-10, atol=1e-12)
        assert float(jnp.max(jnp.abs(factored(psi_star)))) == 0.0
    if name == "heads":  # the conv head holds (tasks + C_out)·kh·kw·C_in values, not tasks·|ω|; the others tasks·|ω|
        sizes = {path: sum(np.size(x) for x in f.values()) for path, f in targets.items()}
        assert sizes == {"conv": (4 + 5) * 18, "fc": 4 * 24, "norm/scale": 4 * 5}
    else:  # h* of every task and chunk, W*, b* and the tables: (tasks·n_c + chunk_dim)·H + chunk_dim + tables
        # "chunked": the last chunk is cut (119 = 7·16 + 7); "chunked, tables": chunks fit exactly (114 = 3·38)
        assert (hnet.num_generated % hnet.chunk_dim != 0) == (name == "chunked")
        tables = 4 * 5 if options.get("vectors_as_tables", True) else 0
        size = (4 * hnet.num_chunks + hnet.chunk_dim) * 6 + hnet.chunk_dim + tables
        assert sum(np.size(x) for x in jax.tree_util.tree_leaves(targets)) == size


class VmapTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_vmap_equals_one_at_a_time(self):
        model = PartialHypernetwork.create(models.ResNetConfig(num_classes=5), 3, num_tasks=4)
        psi = model.hnet.init(jax.random.key(0))
        # distinct per-task tables, so a wrong task index could not pass
        psi["heads"] = jax.tree_util.tree_map(
            lambda x: x + normal(1, x.shape), psi["heads"])
        ids = jnp.array([2, 0, 3, 1])
        batched = self.variant(model.generate_all)(psi, ids)
        for n, t in enumerate(ids):
            one = self.variant(model.hnet.apply)(psi, t)
            chex.assert_trees_all_close(jax.tree_util.tree_map(lambda x: x[n], batched), one, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("k", [0, 4])  # all generated; all but the classifier frozen (k = 2: test_train)
def test_gradients_reach_used_hnet_params_and_not_frozen(k):
    model = PartialHypernetwork.create(models.ResNetConfig(num_classes=5, blocks_per_stage=(1, 1, 1, 1)), k, num_tasks=3)
    phi, psi = model.init(jax.random.key(0))
    # 16x16: stage 4 keeps 2x2 pixels (instance norm over a single pixel would output β alone)
    x = normal(1, (6, 16, 16, 3))
    y = jnp.arange(6) % 5
    t = 1

    def loss(phi, psi, freeze):
        logits, _ = model.logits(phi, psi, x, t, train=True, freeze=freeze)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
    g_phi, g_psi = jax.device_get(grad(phi, psi, True))  # NumPy: checked leaf by leaf
    assert all(np.all(g == 0) for g in jax.tree_util.tree_leaves(g_phi))
    if k > 0:  # the same loss without freezing does reach φ
        g_phi_free = jax.device_get(grad(phi, psi, False)[0])
        assert all(np.any(g != 0) for g in jax.tree_util.tree_leaves(g_phi_free))
    flat = {"/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path): g
            for path, g in jax.tree_util.tree_flatten_with_path(g_psi)[0]}
    for name, g in flat.items():
        assert np.all(np.isfinite(g)), name
        used = g[t] if name == "embeddings" or name.endswith("table") else g
        assert np.any(used != 0), f"no gradient reaches {name}"
        if name == "embeddings" or name.endswith("table"):  # other tasks' rows are not used
            assert np.all(np.delete(np.asarray(g), t, axis=0) == 0), name


def test_batchnorm_option_keeps_per_task_statistics():
    model = PartialHypernetwork.create(models.ResNetConfig(num_classes=5), 2, num_tasks=3, norm="batchnorm")
    phi, psi = model.init(jax.random.key(0))
    stats = model.init_stats(phi)
    x = normal(1, (4, 8, 8, 3)) + 2.0
    _, new = model.logits(phi, psi, x, 1, train=True, stats=stats)
    means = new["stateless"]["stage3"]["block1"]["bn1"]["mean"]
    assert means.shape == (3, 80)
    assert np.any(means[1] != 0) and np.all(means[0] == 0) and np.all(means[2] == 0)
    assert np.any(new["frozen"]["stem"]["bn"]["mean"] != 0)
    _, frozen_new = model.logits(phi, psi, x, 1, train=True, stats=stats, freeze=True)
    chex.assert_trees_all_close(frozen_new["frozen"], stats["frozen"])  # frozen stats stay
    assert model.init_stats(phi)["frozen"].keys() == {"stem", "stage1", "stage2"}
    assert PartialHypernetwork.create(models.ResNetConfig(), 2, 3).init_stats(phi) is None


# ---- The chunked hypernetwork (von Oswald et al. 2020) ------------------------------------------

SMALL_TARGET = {"conv": jnp.zeros((4, 3, 3, 2)), "fc": jnp.zeros((6, 5)),
                "norm": {"scale": jnp.zeros((5,)), "bias": jnp.zeros((3,))}}
SMALL_CHUNKED = dict(num_tasks=3, embedding_dim=4, hidden_dims=(6, 5), chunk_dim=16, chunk_embedding_dim=3)


@pytest.mark.parametrize("tables", [True, False])
def test_chunked_parameter_count_equals_formula(tables):
    hnet = build_hypernetwork("chunked", SMALL_TARGET, vectors_as_tables=tables, **SMALL_CHUNKED)
    psi = hnet.init(jax.random.key(0))
    if tables:
        # generated: conv 72 + fc 30 = 102 values -> n_c = ⌈102/16⌉ = 7 chunks; tables: 3 tasks x (5 + 3)
        # |ψ| = E 3x4 + MLP (4+3)*6+6 + 6*5+5 + output 5*16+16 + chunk embeddings 7x3 + tables 3*8
        expected = 12 + 48 + 35 + 96 + 21 + 24
        assert hnet.num_chunks == 7
    else:
        # everything generated: 72 + 30 + 5 + 3 = 110 values -> still 7 chunks, no tables
        expected = 12 + 48 + 35 + 96 + 21
        assert hnet.num_chunks == 7 and psi["tables"] == {}
    assert models.count_params(psi) == hnet.num_params() == expected


def test_chunked_parameter_count_on_the_resnet():
    """k=0, C=10, 10 tasks, von Oswald et al.'s PermutedMNIST sizes (chunks of 78000, c_i ∈ R^8,
    e_t ∈ R^24, MLP 25-25): 1,091,740 generated values -> 14 chunks."""
    model = PartialHypernetwork.create(models.ResNetConfig(num_classes=10), 0, num_tasks=10, kind="chunked",
                                       embedding_dim=24, hidden_dims=(25, 25), chunk_dim=78_000,
                                       chunk_embedding_dim=8)
    hnet = model.hnet
    tables = sum(h.size for h in hnet.heads if h.kind == "table")
    assert hnet.num_generated + tables == models.count_params(
        models.split_params(jax.eval_shape(lambda: models.init_resnet(jax.random.key(0), model.net)), 0)[1])
    assert hnet.num_chunks == 14 == -(-hnet.num_generated // 78_000)
    expected = 10 * 24 + (32 * 25 + 25) + (25 * 25 + 25) + (25 * 78_000 + 78_000) + 14 * 8 + 10 * tables
    assert hnet.num_params() == models.count_params(jax.eval_shape(hnet.init, jax.random.key(0))) == expected


def test_chunked_against_direct_formula():
    """v_i = W_out act(W2 act(W1 [e_t ; c_i] + b1) + b2) + b_out, concatenated, cut, unflattened (NumPy)."""
    hnet = build_hypernetwork("chunked", SMALL_TARGET, activation="elu", **SMALL_CHUNKED)
    psi = hnet.init(jax.random.key(3))
    psi["tables"] = jax.tree_util.tree_map(lambda x: x + normal(4, x.shape),
                                           psi["tables"])
    p = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), psi)
    elu = lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0)))
    t = 2
    chunks = []
    for c in p["chunk_embeddings"]:
        h = np.concatenate([p["embeddings"][t], c])
        for layer in p["mlp"]:
            h = elu(h @ layer["kernel"] + layer["bias"])
        chunks.append(h @ p["output"]["kernel"] + p["output"]["bias"])
    flat = np.concatenate(chunks)
    omega = hnet.apply(psi, t)
    # sorted paths: conv (72), fc (30); the norm vectors come from the tables
    np.testing.assert_allclose(omega["conv"], flat[:72].reshape(4, 3, 3, 2), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(omega["fc"], flat[72:102].reshape(6, 5), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(omega["norm"]["scale"], psi["tables"]["norm/scale"][t])
    np.testing.assert_array_equal(omega["norm"]["bias"], psi["tables"]["norm/bias"][t])


def test_the_pytorch_layout_is_hypercls_parameter_order():
    """layout='pytorch': the flat chunk output v_1 ; ... ; v_nc (computed in NumPy as above) is hypercl's
    MLP parameter list (mnets/mlp.py): fc1's weight [D_out, D_in] row-major, fc1's bias, then fc2, then
    the classifier; ours are the transposes. 'flax' takes the sorted paths (classifier first) in our
    shapes. And the layouts differ where it matters: a chunk_dim that is a multiple of fc1's outputs
    puts one row of W_out on the same neuron in every chunk with 'flax', on different ones with 'pytorch'."""
    net = models.MLPConfig(in_features=6, hidden_dims=(5, 4), num_classes=2, num_heads=2)
    flat_of = {}
    for layout in ("pytorch", "flax"):
        model = PartialHypernetwork.create(net, 0, num_tasks=3, kind="chunked", embedding_dim=3, hidden_dims=(4,),
                                           chunk_dim=10, chunk_embedding_dim=2, vectors_as_tables=False,
                                           layout=layout)
        hnet = model.hnet
        psi = hnet.init(jax.random.key(0))
        p = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), psi)
        t = 1
        chunks = []
        for c in p["chunk_embeddings"]:
            h = np.maximum(np.concatenate([p["embeddings"][t], c]) @ p["mlp"][0]["kernel"] + p["mlp"][0]["bias"], 0)
            chunks.append(h @ p["output"]["kernel"] + p["output"]["bias"])
        flat_of[layout] = flat = np.concatenate(chunks)
        omega = hnet.apply(psi, t)
        if layout == "pytorch":
            expect, offset = {}, 0
            for name, d_in, d_out in net.layers():  # fc1 6->5, fc2 5->4, classifier 4->4
                expect[name] = {"kernel": flat[offset:offset + d_in * d_out].reshape(d_out, d_in).T}
                offset += d_in * d_out
                expect[name]["bias"] = flat[offset:offset + d_out]
                offset += d_out
        else:  # sorted: classifier/bias, classifier/kernel, fc1/bias, fc1/kernel, fc2/bias, fc2/kernel
            expect, offset = {}, 0
            for name, d_in, d_out in sorted(net.layers()):
                expect[name] = {"bias": flat[offset:offset + d_out]}
                offset += d_out
                expect[name]["kernel"] = flat[offset:offset + d_in * d_out].reshape(d_in, d_out)
                offset += d_in * d_out
        assert offset == hnet.num_generated == 6 * 5 + 5 + 5 * 4 + 4 + 4 * 4 + 4
        chex.assert_trees_all_close(omega, expect, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="forward order"):  # a target whose layer order is not given
        build_hypernetwork("chunked", SMALL_TARGET, layout="pytorch", **SMALL_CHUNKED)
    with pytest.raises(ValueError, match="unknown layout"):
        build_hypernetwork("chunked", SMALL_TARGET, layout="torch", **SMALL_CHUNKED)


def test_which_neuron_a_row_of_the_chunked_output_layer_makes():
    """Value k of every chunk comes from row k of W_out. With fc1 [784, 400] and chunks of 42,000
    (SplitMNIST's, 105·400), 'flax' ([D_in, D_out] rows) puts value k of every chunk that falls in fc1's
    kernel on one and the same neuron; 'pytorch' (hypercl's [D_out, D_in] rows) each on another."""
    net = models.MLPConfig(in_features=784, hidden_dims=(400, 400), num_classes=2, num_heads=5)
    for layout in ("flax", "pytorch"):
        hnet = PartialHypernetwork.create(net, 0, num_tasks=5, kind="chunked", chunk_dim=42_000,
                                          vectors_as_tables=False, layout=layout).hnet
        heads = [h.path for h in hnet.heads]
        start = sum(h.size for h in hnet.heads[:heads.index("fc1/kernel")])
        k = 123
        inside = [i * hnet.chunk_dim + k - start for i in range(hnet.num_chunks)
                  if 0 <= i * hnet.chunk_dim + k - start < 784 * 400]
        neurons = {q % 400 for q in inside} if layout == "flax" else {q // 784 for q in inside}
        assert len(inside) == 7 or len(inside) == 8
        assert len(neurons) == (1 if layout == "flax" else len(inside)), (layout, neurons)


@pytest.mark.parametrize("kind", ["heads", "chunked"])
def test_both_kinds_generate_exactly_the_target_pytree_and_vmap(kind):
    cfg = models.ResNetConfig(num_classes=5)
    shapes = jax.eval_shape(lambda: models.init_resnet(jax.random.key(0), cfg))
    for k in range(5):
        model = PartialHypernetwork.create(cfg, k, num_tasks=3, kind=kind, chunk_dim=1000)
        _, omega = models.split_params(shapes, k)
        omega_gen = jax.eval_shape(model.hnet.apply, jax.eval_shape(model.hnet.init, jax.random.key(1)), 0)
        assert jax.tree_util.tree_structure(omega_gen) == jax.tree_util.tree_structure(omega)
        chex.assert_trees_all_equal_shapes_and_dtypes(omega_gen, omega)
    # vmap over task ids equals one task at a time (k = 4: classifier only; distinct tables)
    model = PartialHypernetwork.create(cfg, 4, num_tasks=4, kind=kind, chunk_dim=64)
    # distinct per-task tables (they start equal), so a wrong task index could not pass
    psi = jax.tree_util.tree_map(lambda x: x + normal(2, x.shape, scale=0.1),
                                 model.hnet.init(jax.random.key(0)))
    ids = jnp.array([2, 0, 3, 1])
    batched = jax.jit(model.generate_all)(psi, ids)
    for n, t in enumerate(ids):
        chex.assert_trees_all_close(jax.tree_util.tree_map(lambda x: x[n], batched), model.hnet.apply(psi, t),
                                    rtol=1e-5, atol=1e-5)


def test_hypernetwork_options_clear_errors():
    with pytest.raises(ValueError, match="unknown hypernetwork kind 'mlp'"):
        build_hypernetwork("mlp", SMALL_TARGET, num_tasks=2)
    with pytest.raises(ValueError, match="chunk_dim must be a positive integer, got 0"):
        build_hypernetwork("chunked", SMALL_TARGET, num_tasks=2, chunk_dim=0)
    with pytest.raises(ValueError, match="chunk_embedding_dim must be a positive integer"):
        build_hypernetwork("chunked", SMALL_TARGET, num_tasks=2, chunk_embedding_dim=-3)
    with pytest.raises(ValueError, match="unknown hypernetwork activation 'tanh'"):
        build_hypernetwork("heads", SMALL_TARGET, num_tasks=2, activation="tanh")
    with pytest.raises(ValueError, match=r"unknown hypernetwork option\(s\) \['chunk_size'\]"):
        build_hypernetwork("chunked", SMALL_TARGET, num_tasks=2, chunk_size=10)
    # each kind ignores the other's options (a whole config.hnet may be passed)
    heads = build_hypernetwork("heads", SMALL_TARGET, num_tasks=2, chunk_dim=7, head_embedding_dim=3)
    assert isinstance(heads, Hypernetwork) and heads.head_embedding_dim == 3


def test_mlp_target_is_generated_whole_by_the_chunked_hypernetwork():
    """An MLP target (16-8-8-3x2, biases included): every parameter comes from the chunks, and the
    model's logits for task t are a NumPy forward of H_ψ(t)'s weights, head t."""
    net = models.MLPConfig(in_features=16, hidden_dims=(8, 8), num_classes=3, num_heads=2)
    model = PartialHypernetwork.create(net, 0, num_tasks=2, kind="chunked", vectors_as_tables=False, embedding_dim=4,
                                       hidden_dims=(5,), chunk_dim=50, chunk_embedding_dim=3)
    hnet = model.hnet
    assert hnet.num_generated == (16 * 8 + 8) + (8 * 8 + 8) + (8 * 6 + 6) == 262
    assert hnet.num_chunks == 6 and all(h.kind == "chunk" for h in hnet.heads)
    assert hnet.num_params() == 2 * 4 + (7 * 5 + 5) + (5 * 50 + 50) + 6 * 3
    phi, psi = model.init(jax.random.key(0))
    assert phi == {} and model.init_stats(phi) is None
    x = normal(1, (4, 4, 4, 1))
    for t in range(2):
        w = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), hnet.apply(psi, t))
        h = np.asarray(x, np.float64).reshape(4, 16)
        h = np.maximum(np.maximum(h @ w["fc1"]["kernel"] + w["fc1"]["bias"], 0) @ w["fc2"]["kernel"] + w["fc2"]["bias"], 0)
        want = (h @ w["classifier"]["kernel"] + w["classifier"]["bias"])[:, 3 * t:3 * t + 3]
        logits, stats = model.logits(phi, psi, x, t, train=True)
        np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-5)
        assert stats is None
    with pytest.raises(ValueError, match="must be 0"):
        PartialHypernetwork.create(net, 1, num_tasks=2)


def test_chunked_distances_in_float32_against_float64_near_the_targets():
    """The Gram form of the chunked regulariser (`ChunkedHypernetwork.sq_distances`) in float32, with ψ
    a small step (1e-3 relative) off ψ* as within an experience: its gradient within 1e-4 of the full
    outputs' gradient in float64, like the full outputs' own float32 gradient."""
    target = {"a": jnp.zeros((300, 40)), "b": jnp.zeros((40,)), "c": jnp.zeros((40, 10))}
    hnet = build_hypernetwork("chunked", target, 4, embedding_dim=8, hidden_dims=(10, 10), chunk_dim=1000,
                              chunk_embedding_dim=8, vectors_as_tables=False, activation="elu", dense_init="xavier")
    rng = np.random.default_rng(5)
    shapes = jax.eval_shape(hnet.init, jax.random.key(0))
    psi_star = jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape) * (0.03 if s.shape[-1] == 1000 else 1), shapes)
    psi = jax.tree_util.tree_map(lambda a: a * (1 + 1e-3 * rng.normal(size=a.shape)), psi_star)
    weights = np.array([1 / 3, 1 / 3, 1 / 3, 0.0])
    outputs = lambda p: jax.vmap(hnet.apply, in_axes=(None, 0))(p, jnp.arange(4))

    def full(p, p_star):
        return jnp.dot(weights, output_sq_distances(outputs(p), outputs(p_star)))

    f32 = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), t)
    gram = jax.jit(jax.grad(lambda p, p_star: jnp.dot(weights, hnet.sq_distances(p, hnet.snapshot(p_star)))))(
        f32(psi), f32(psi_star))
    direct = jax.jit(jax.grad(full))(f32(psi), f32(psi_star))
    with jax.enable_x64(True):
        as64 = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), t)
        exact = jax.tree_util.tree_map(np.asarray, jax.jit(jax.grad(full))(as64(psi), as64(psi_star)))
    for name, got in (("gram", gram), ("direct", direct)):
        err = max(float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))
                  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(exact)))
        assert err < 1e-4, (name, err)
