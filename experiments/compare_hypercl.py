"""Our von Oswald et al. HNET training steps against the reference implementation's own, from the same
weights on the same batches, in float64.

    JAX_ENABLE_X64=1 .venv/bin/python experiments/compare_hypercl.py --hypercl ~/hypercl \\
        [--stream permuted_mnist|split_mnist] [--tasks 3] [--steps 5] [--lookahead_step hypercl] [--float32]

hypercl (github.com/chrhenning/hypercl) is imported from --hypercl and its classifier is trained by
its own `mnist/train_splitMNIST.py train_class_one_t` (the function `train_permutedMNIST.py` and
`train_splitMNIST.py --infer_task_id --cl_scenario 1` run), with its `_set_default` settings for the
stream, for `--steps` iterations a task on random batches (x ~ U[0, 1), random labels). Ours, the
stream's config (`experiments/configs/<stream>.py`) at the same number of tasks, starts from hypercl's
initial weights (its θ mapped to our ψ: chunk embeddings, the MLP's dense layers transposed, the task
embeddings) and takes the same steps with `HN.train_step`. After every task it prints
‖ψ_ours − ψ_theirs‖ / ‖ψ_theirs − ψ_before‖ (how far apart the two are, relative to how far the task's
steps moved ψ), then both continue from theirs. Needs PyTorch and hypercl's requirements importable
(e.g. `--site-packages` of the environment hypercl runs in; it is appended to sys.path, after ours).
With --float32 it then also computes, at hypercl's initial weights, the task loss's gradient for each
task's first batch in float32 and in float64, ours and theirs, and prints each one's float32 error
‖g32 − g64‖ / ‖g64‖ (the precision of the step's first half; the regulariser's, the second, is
tests/test_hypernetwork.py's `test_chunked_distances_in_float32_against_float64_near_the_targets`).
With --data DIR (our tfds data directory, `make data DATASET=mnist`) it first compares the stream's
data with hypercl's own handlers (mnist/train_utils.py `_generate_tasks`, reading the MNIST files in
--hypercl_data, default <hypercl>/datasets): for each task, the training and test images as the
network sees them (hypercl's `input_to_torch_tensor`: padding, permutation, /255) and the task's labels,
as multisets of (image, label) pairs (the two store the samples in different orders; batches are drawn at
random from either).
Not a test: CI has neither PyTorch nor hypercl. docs/mnist.md has the figures.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# stream -> (hypercl's mode, input side after padding, classes per task)
STREAMS = {"permuted_mnist": ("perm", 32, 10), "split_mnist": ("split", 28, 2)}
BATCH = 128


def _relative(a, b, ref):
    """‖a − b‖ / ‖ref‖ over the leaves of three pytrees of NumPy arrays (a flat list order)."""
    import jax
    la, lb, lr = (jax.tree_util.tree_leaves(t) for t in (a, b, ref))
    num = sum(float(np.sum((x - y) ** 2)) for x, y in zip(la, lb))
    den = sum(float(np.sum(r ** 2)) for r in lr)
    return float(np.sqrt(num / den)) if den > 0 else float(np.sqrt(num))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hypercl", required=True, help="a checkout of github.com/chrhenning/hypercl")
    p.add_argument("--site-packages", default=None, help="appended to sys.path: where torch and hypercl's "
                   "requirements are installed, if not in this environment")
    p.add_argument("--stream", default="permuted_mnist", choices=sorted(STREAMS))
    p.add_argument("--tasks", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--lookahead_step", default=None, help="override our config's strategy.lookahead_step")
    p.add_argument("--float32", action="store_true", help="also the task loss's gradient in float32 against "
                   "float64, ours and theirs, at hypercl's initial weights")
    p.add_argument("--data", default=None, help="our tfds data directory: first compare each task's images and "
                   "labels with hypercl's data handlers'")
    p.add_argument("--hypercl_data", default=None, help="where hypercl reads the MNIST files (default "
                   "<hypercl>/datasets)")
    args = p.parse_args(argv)
    if args.site_packages:
        sys.path.append(args.site_packages)
    sys.path.insert(0, str(Path(args.hypercl).resolve()))
    sys.path.insert(0, str(ROOT))
    import torch
    import jax
    import jax.numpy as jnp
    if not jax.config.jax_enable_x64:
        raise SystemExit("run with JAX_ENABLE_X64=1: the comparison is in float64")
    torch.set_default_dtype(torch.float64)
    from mnist import train_utils
    from mnist.train_splitMNIST import train_class_one_t
    from phn_jax.config import check_config, load_config
    from phn_jax.strategies import create_strategy

    mode, side, classes = STREAMS[args.stream]
    c = load_config(ROOT / "experiments" / "configs" / f"{args.stream}.py")
    data_rows = _same_data(args, mode, c) if args.data else []
    rng = np.random.default_rng(0)
    batches = [[(rng.random((BATCH, side * side)), rng.integers(0, classes, BATCH)) for _ in range(args.steps)]
               for _ in range(args.tasks)]

    class Batches:
        """hypercl's data handler interface, serving `batches[t]` in order."""
        in_shape = [28, 28, 1]
        num_train_samples = BATCH * args.steps

        def __init__(self, t):
            self.t, self.i = t, 0

        def reset_batch_generator(self):
            self.i = 0

        def next_train_batch(self, batch_size):
            x, y = batches[self.t][self.i]
            self.i += 1
            return x, np.eye(classes)[y]

        def input_to_torch_tensor(self, x, device, mode="inference"):
            return torch.from_numpy(x)

        def output_to_torch_tensor(self, y, device, mode="inference"):
            return torch.from_numpy(y)

    class NoWriter:  # tensorboard's SummaryWriter, silenced
        def __getattr__(self, name):
            return lambda *a, **k: None

    config = _their_config(mode, ["--num_tasks", str(args.tasks)])
    config.num_tasks = args.tasks  # (_set_default_split sets 5)
    config.training_with_hnet, config.training_task_infer, config.show_plots = True, False, False
    config.n_iter = args.steps
    device = torch.device("cpu")
    torch.manual_seed(0)
    mnet, hnet = train_utils.generate_classifier(config, [Batches(t) for t in range(args.tasks)], device)

    def theirs():
        """hypercl's θ and task embeddings as our ψ."""
        th = [q.detach().numpy().copy() for q in hnet.theta]
        layers = [{"kernel": th[i].T, "bias": th[i + 1]} for i in range(1, len(th) - 2, 2)]
        return {"chunk_embeddings": th[0], "embeddings": np.stack([e.detach().numpy() for e in hnet.get_task_embs()]),
                "mlp": layers, "output": {"kernel": th[-2].T, "bias": th[-1]}, "tables": {}}

    c.data.num_experiences = args.tasks
    if args.lookahead_step:
        c.strategy.lookahead_step = args.lookahead_step
    check_config(c)
    hn = create_strategy(c, types.SimpleNamespace(num_experiences=args.tasks, classes_per_experience=classes,
                                                  image_shape=(side, side, 1)))
    state = hn.init(jax.random.key(0))
    initial, initial_hnet = theirs(), copy.deepcopy(hnet)
    shapes = lambda tree: jax.tree_util.tree_map(np.shape, tree)
    if shapes(state["psi"]) != shapes(initial):
        raise SystemExit(f"hypercl's θ does not map onto our ψ: {shapes(initial)} against {shapes(state['psi'])}")
    step = jax.jit(hn.train_step, static_argnums=4)
    rows = []
    for t in range(args.tasks):
        start = theirs()
        state = hn.begin_experience({**state, "psi": jax.tree_util.tree_map(jnp.asarray, start)}, jnp.asarray(t))
        train_class_one_t(Batches(t), None, None, None, [mnet, hnet], device, config, NoWriter(), t)
        for i, (x, y) in enumerate(batches[t]):
            batch = {"x": jnp.asarray(x.reshape(BATCH, side, side, 1)), "y": jnp.asarray(y),
                     "mask": jnp.ones(BATCH, bool)}
            state, metrics = step(state, batch, jax.random.key(i), jnp.asarray(t), t == 0)
        ours, end = jax.tree_util.tree_map(np.asarray, state["psi"]), theirs()
        moved = jax.tree_util.tree_map(np.subtract, end, start)
        row = {"task": t, "steps": args.steps, "rel_to_update": _relative(ours, end, moved),
               "rel_to_psi": _relative(ours, end, end),
               "rel_to_update_output_layer": _relative(ours["output"], end["output"], moved["output"]),
               "loss": float(metrics["loss"]), "reg": float(metrics["reg"])}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.float32:
        rows += _float32_gradients(hn, initial, initial_hnet, mnet, batches, classes, side)
    return data_rows + rows


def _their_config(mode, argv=()):
    """hypercl's settings for its hypernetwork classifier in CL1 (`--infer_task_id --cl_scenario 1`), with
    its `_set_default` values for the stream (mode 'perm' or 'split')."""
    from mnist import train_args
    from mnist.train_args_default import _set_default
    return _set_default(train_args.parse_cmd_arguments(mode=mode, argv=["--infer_task_id", "--cl_scenario", "1",
                                                                        *argv]))


def _same_data(args, mode, c):
    """Per task and split, whether the stream of our config `c` gives the (image, label) pairs of hypercl's
    handlers (as multisets; the images as uint8 after padding and permutation, the labels within the task)."""
    import torch
    from mnist import train_utils
    from phn_jax.data import build_stream
    config = _their_config(mode)
    config.data_dir = args.hypercl_data or str(Path(args.hypercl).resolve() / "datasets")
    handlers = train_utils._generate_tasks(config)
    data = copy.deepcopy(c).data  # (`c` keeps its data_dir)
    data.data_dir = args.data
    stream = build_stream(data)
    rows = []
    for t in range(min(args.tasks, stream.num_experiences)):
        d, e = handlers[t], stream.experiences[t]
        for split, inputs, outputs in (("train", d.get_train_inputs, d.get_train_outputs),
                                       ("test", d.get_test_inputs, d.get_test_outputs)):
            x = d.input_to_torch_tensor(inputs(), torch.device("cpu"), mode="inference").numpy()
            theirs = _pairs(np.rint(x * 255).astype(np.uint8), np.argmax(outputs(), axis=1))
            ours = _pairs(getattr(e, f"{split}_images"), getattr(e, f"{split}_labels"))
            row = {"task": t, "split": split, "samples_ours": len(ours), "samples_theirs": len(theirs),
                   "same_data": ours == theirs}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def _pairs(images, labels):
    """The sorted list of (image bytes, label) of N images (any shape [N, ...], uint8) and labels."""
    flat = np.ascontiguousarray(images.reshape(len(images), -1))
    return sorted(zip((row.tobytes() for row in flat), (int(y) for y in labels)))


def _float32_gradients(hn, psi, hnet, mnet, batches, classes, side):
    """‖g32 − g64‖ / ‖g64‖ of the task loss's gradient (θ and the task's embedding; ours in hypercl's
    order) at `psi` = hypercl's weights `hnet`, on each task's first batch."""
    import jax
    import jax.numpy as jnp
    import torch
    from phn_jax.strategies.base import masked_cross_entropy
    hnets = {torch.float64: hnet, torch.float32: copy.deepcopy(hnet).float()}

    def their_gradient(x, y, t, dtype):
        h = hnets[dtype]
        torch.set_default_dtype(dtype)
        h.zero_grad()
        logits = mnet.forward(torch.from_numpy(x).to(dtype), h.forward(t))[:, t * classes:(t + 1) * classes]
        torch.nn.functional.cross_entropy(logits, torch.from_numpy(y)).backward()
        torch.set_default_dtype(torch.float64)
        return np.concatenate([q.grad.numpy().astype(np.float64).ravel() for q in h.theta]
                              + [h.get_task_emb(t).grad.numpy().astype(np.float64).ravel()])

    def our_gradient(x, y, t, dtype):
        mask = jnp.ones(len(y), bool)

        def ce(p):
            logits, _ = hn.model.logits({}, p, jnp.asarray(x.reshape(-1, side, side, 1), dtype), t, train=True,
                                        stats=None, freeze=False, mask=mask)
            return masked_cross_entropy(logits, jnp.asarray(y), mask)
        g = jax.grad(ce)(jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), psi))
        flat = lambda a: np.asarray(a, np.float64).T.ravel()  # our kernels [in, out] -> hypercl's [out, in]
        return np.concatenate([np.asarray(g["chunk_embeddings"], np.float64).ravel()]
                              + [flat(a) for layer in g["mlp"] + [g["output"]] for a in (layer["kernel"], layer["bias"])]
                              + [flat(g["embeddings"][t])])

    rows = []
    for t, task in enumerate(batches):
        x, y = task[0]
        g = {(who, d): f(x, y, t, d) for who, f in (("ours", our_gradient), ("theirs", their_gradient))
             for d in ((jnp.float32, jnp.float64) if who == "ours" else (torch.float32, torch.float64))}
        ref = g[("theirs", torch.float64)]
        err = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b))
        row = {"task": t, "float32_gradient_error_ours": err(g[("ours", jnp.float32)], g[("ours", jnp.float64)]),
               "float32_gradient_error_theirs": err(g[("theirs", torch.float32)], ref),
               "float64_ours_vs_theirs": err(g[("ours", jnp.float64)], ref)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
