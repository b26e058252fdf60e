"""A user's own Flax modules as the engine's networks: `model.arch='flax'`.

A module is named by its import path and its constructor's keyword arguments (`FlaxModule`), in a
config file: `model.module = "examples.nnx_cnn:CNN"` and `model.module_kwargs` (examples/, `make
example`; docs/own_models.md); either kind of Flax module:

  flax.linen.Module   built as Cls(**kwargs); its parameters are the 'params' collection of
                      `init(key, x)`; y = Cls(**kwargs).apply({'params': p}, x)
  flax.nnx.Module     built as Cls(**kwargs, rngs=nnx.Rngs(key)); its parameters are its nnx.Param
                      variables as a nested dict (`nnx.split`); y = nnx.merge(graphdef, p)(x)

Either way the engine sees a pure function (p, x) -> y over a nested dict of arrays, so the
hypernetwork generates p from its shapes alone (`jax.eval_shape` of the init: no FLOPs), once per
task and step, exactly as it generates the ResNet's stateless part.

What a module may hold: parameters only. A module with other state (a linen collection such as
'batch_stats', nnx BatchStat variables: BatchNorm's running averages; nnx Rngs held by the
module: Dropout) is refused with a message (`ModuleError`): the engine keeps no per-task running
statistics or random streams for a user's module. Normalisation without running state (LayerNorm,
GroupNorm, InstanceNorm) is a function of the parameters and works. A module is called as
y = module(x) with x float [N, H, W, C] (NHWC, the stream's preprocessed images), deterministic.

`FlaxNetwork` is the target f = h_ω ∘ g_φ (the paper's Eq. 1) of two such modules: h (every strategy
trains it; HN generates its parameters ω = H_ψ(t)) and optionally g (HN-1 and LR-1: trained on
experience 1, then frozen). h's output y is [N, C·T] (head t = y[:, tC:(t+1)C], as the MLP's heads)
or [N, C] (one head: under HN every task still has its own generated weights).

Conv kernels: flax's are HWIO [kh, kw, C_in, C_out]; the hypernetwork's conv heads generate OHWI
(row i is output channel i, docs/design.md §2), so `generated_shapes` presents every rank-4 leaf as
OHWI and `apply_generated` transposes it back: channel-wise generation, as for the ResNet.

`MultiHeadFlax` gives the baselines (Naive, EWC, LR, Joint) the interface of
`strategies.multihead.MultiHeadResNet` over the same modules.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import jax
import jax.numpy as jnp

from phn_jax.runtime import float_dtype

Params = dict


class ModuleError(ValueError):
    """A user's module that the engine cannot run, with what to change."""


def _frozen_value(v):
    """A hashable copy of a constructor argument (lists and dicts of a ConfigDict as tuples)."""
    if isinstance(v, dict) or hasattr(v, "items"):
        return tuple(sorted((k, _frozen_value(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_frozen_value(x) for x in v)
    return v


def _thawed(v):
    """A constructor argument as the module takes it: tuples stay tuples, (key, value) pair tuples
    made by `_frozen_value` from a dict become a dict again."""
    if isinstance(v, tuple) and v and all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in v):
        return {k: _thawed(x) for k, x in v}
    return v


def import_object(path: str):
    """The object that 'package.module:Name' (or 'package.module.Name') names; ModuleError saying what
    is missing."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ModuleError(f"model.module={path!r}: name a module class as 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ModuleError(f"model.module={path!r}: cannot import {module_name!r} ({err}); run from the directory "
                          "that holds it or put it on PYTHONPATH") from None
    try:
        return functools.reduce(getattr, attr.split("."), module)
    except AttributeError:
        raise ModuleError(f"model.module={path!r}: {module_name!r} has no {attr!r}") from None


@dataclasses.dataclass(frozen=True)
class FlaxModule:
    """A user's flax.linen.Module or flax.nnx.Module class and its constructor's keyword arguments
    (hashable: a static argument of the jitted programs). `input_shape` is one sample's input
    (H, W, C) for a linen init."""

    path: str
    kwargs: tuple = ()
    input_shape: tuple[int, ...] = ()
    field: str = dataclasses.field(default="model.module", compare=False)  # the config field naming it (messages)

    @classmethod
    def named(cls, path: str, kwargs, input_shape, field: str = "model.module") -> "FlaxModule":
        module = cls(path, _frozen_value(dict(kwargs or {})), tuple(int(d) for d in input_shape), field)
        module.check()
        return module

    @property
    def constructor_kwargs(self) -> dict:
        return {k: _thawed(v) for k, v in self.kwargs}

    @functools.cached_property
    def kind(self) -> str:
        """'linen' or 'nnx'."""
        import flax.linen as nn
        from flax import nnx
        cls = import_object(self.path)
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            return "linen"
        if isinstance(cls, type) and issubclass(cls, nnx.Module):
            return "nnx"
        raise ModuleError(f"{self.field}={self.path!r} is {cls!r}, not a flax.linen.Module or flax.nnx.Module class")

    def _sample(self) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct((1, *self.input_shape), float_dtype())

    def _linen(self):
        return import_object(self.path)(**self.constructor_kwargs)

    def _nnx(self, key):
        from flax import nnx
        return import_object(self.path)(**self.constructor_kwargs, rngs=nnx.Rngs(key))

    @functools.cached_property
    def _nnx_graph(self):
        """(graphdef, the abstract nnx.Param state): what `apply` merges a parameter dict into."""
        from flax import nnx
        graphdef, params, rest = nnx.split(nnx.eval_shape(lambda: self._nnx(jax.random.key(0))), nnx.Param, ...)
        others = [("/".join(map(str, path)), type(v).__name__) for path, v in nnx.to_flat_state(rest)]
        if others:
            raise ModuleError(
                f"{self.field}={self.path!r} holds state other than parameters: "
                + ", ".join(f"{p} ({t})" for p, t in others) + ". The engine generates and trains parameters "
                "only: use a normalisation without running statistics (nnx.LayerNorm, nnx.GroupNorm) and no "
                "module-held rngs (Dropout)")
        return graphdef, params

    def init(self, key: jax.Array) -> Params:
        """The module's initial parameters, a nested dict of arrays."""
        if self.kind == "nnx":
            from flax import nnx
            _, params = nnx.split(self._nnx(key), nnx.Param, ...)[:2]
            return nnx.to_pure_dict(params)
        variables = self._linen().init(key, jnp.zeros(self._sample().shape, self._sample().dtype))
        others = sorted(set(variables) - {"params"})
        if others:
            raise ModuleError(
                f"{self.field}={self.path!r} has the variable collections {others} beside 'params' (e.g. BatchNorm's "
                "'batch_stats'). The engine generates and trains parameters only: use a normalisation without "
                "running statistics (nn.LayerNorm, nn.GroupNorm), or model.arch=resnet, whose norm modes the "
                "engine keeps per task")
        return dict(variables.get("params", {}))

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        """y = module(x) with parameters `params`: x [N, ...] -> y."""
        if self.kind == "nnx":
            from flax import nnx
            graphdef, abstract = self._nnx_graph
            state = jax.tree_util.tree_map(lambda a: a, abstract)
            nnx.replace_by_pure_dict(state, params)
            return nnx.merge(graphdef, state)(x)
        return self._linen().apply({"params": params}, x)

    def check(self) -> None:
        """Imports the class, builds its abstract parameters and calls it on one abstract sample:
        ModuleError for what cannot run, naming the field and what to change."""
        try:
            if self.kind == "nnx":
                self._nnx_graph  # noqa: B018 (refuses other state)
            self.output_shape  # noqa: B018 (builds it, then calls it on one abstract sample)
        except (TypeError, ValueError) as err:
            if isinstance(err, ModuleError):
                raise
            raise ModuleError(f"{self.field}={self.path!r} with {self.field}_kwargs={self.constructor_kwargs} cannot "
                              f"be built or called on one sample of shape {self.input_shape} (NHWC without N): "
                              f"{type(err).__name__}: {str(err).splitlines()[0][:300]}") from None

    @functools.cached_property
    def shapes(self):
        """The parameters' shapes and dtypes (`jax.eval_shape` of `init`: no FLOPs)."""
        return jax.eval_shape(self.init, jax.random.key(0))

    @functools.cached_property
    def output_shape(self) -> tuple[int, ...]:
        """One sample's output shape for one sample of `input_shape`."""
        y = jax.eval_shape(self.apply, self.shapes, self._sample())
        return tuple(y.shape[1:])


def _is_kernel4(leaf) -> bool:
    return len(leaf.shape) == 4


@dataclasses.dataclass(frozen=True)
class FlaxNetwork:
    """f = h ∘ g of a user's modules: `generated` (h; HN generates its parameters per task) and
    `frozen` (g or None: trained on experience 1, then frozen); C = num_classes outputs per task head,
    T = num_tasks. Build it with `create` (checks the shapes)."""

    generated: FlaxModule
    frozen: FlaxModule | None
    num_classes: int
    num_tasks: int

    @classmethod
    def create(cls, module: str, kwargs, input_shape, num_classes: int, num_tasks: int,
               frozen_module: str = "", frozen_kwargs=None) -> "FlaxNetwork":
        """The network of `module` (h) on top of `frozen_module` (g; '' for none) for inputs of one
        sample's shape (H, W, C); ModuleError when h's output is not [N, C] or [N, C·T]."""
        input_shape = tuple(int(d) for d in input_shape)
        g = FlaxModule.named(frozen_module, frozen_kwargs, input_shape, "model.frozen_module") if frozen_module else None
        h = FlaxModule.named(module, kwargs, g.output_shape if g else input_shape)
        net = cls(h, g, int(num_classes), int(num_tasks))
        out = h.output_shape
        if len(out) != 1 or out[0] not in (num_classes, num_classes * num_tasks):
            raise ModuleError(
                f"model.module={module!r} gives outputs of shape {out} per sample; the engine needs one vector of "
                f"C = {num_classes} (one head: model.num_classes) or C·T = {num_classes * num_tasks} values (a head "
                f"per task, head t the values tC..(t+1)C−1 as von Oswald et al.'s MLP): set its output size")
        return net

    @property
    def has_frozen_part(self) -> bool:
        return self.frozen is not None

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """One sample's z = g(x) (the input's shape without g)."""
        return self.generated.input_shape

    @property
    def num_heads(self) -> int:
        return self.generated.output_shape[0] // self.num_classes

    def check_freeze_depth(self, k: int) -> int:
        """The depths this network has: 0 (no frozen part) and, with `frozen`, 1 (g frozen)."""
        if k not in ((0, 1) if self.has_frozen_part else (0,)):
            raise ModuleError(
                f"freeze depth k={k} with model.arch='flax': k = 1 freezes model.frozen_module (g) after experience "
                f"1, k = 0 freezes nothing; " + ("" if self.has_frozen_part else
                                                 "this network has no model.frozen_module, so k must be 0"))
        return k

    def init_frozen(self, key: jax.Array) -> Params:
        """φ, g's parameters ({} without g)."""
        return self.frozen.init(key) if self.frozen else {}

    def features(self, phi: Params, x: jax.Array) -> jax.Array:
        """z = g_φ(x): [N, H, W, C] -> [N, *feature_shape] (z = x without g)."""
        return self.frozen.apply(phi, x) if self.frozen else x

    def generated_shapes(self):
        """h's parameter shapes as the hypernetwork generates them: rank-4 kernels OHWI."""
        return jax.tree_util.tree_map(
            lambda s: jax.ShapeDtypeStruct((s.shape[3], *s.shape[:3]), s.dtype) if _is_kernel4(s) else s,
            self.generated.shapes)

    @staticmethod
    def from_generated(omega: Params) -> Params:
        """The hypernetwork's ω -> h's parameters in flax's layout (OHWI -> HWIO)."""
        return jax.tree_util.tree_map(lambda a: jnp.moveaxis(a, 0, 3) if _is_kernel4(a) else a, omega)

    def outputs(self, params: Params, z: jax.Array, task) -> jax.Array:
        """Logits [N, C] of h with flax-layout `params` on z: head `task` (a scalar, or int32 [N], each
        sample's) of y = h(z) ∈ R^{C·T}, or y itself with one head."""
        y = self.generated.apply(params, z)
        if y.shape[1] == self.num_classes:
            return y
        c = self.num_classes
        task = jnp.asarray(task, jnp.int32)
        if task.ndim == 0:
            return jax.lax.dynamic_slice_in_dim(y, task * c, c, axis=1)
        return jnp.take_along_axis(y.reshape(y.shape[0], -1, c), task[:, None, None], axis=1)[:, 0]

    def apply_generated(self, omega: Params, z: jax.Array, task) -> jax.Array:
        """logits = h_ω(z), ω as the hypernetwork generates it (`generated_shapes`): [N, C]."""
        return self.outputs(self.from_generated(omega), z, task)


@dataclasses.dataclass(frozen=True)
class MultiHeadFlax:
    """The baselines' model (Naive, EWC, LR-k, Joint) over a user's modules, with the interface of
    `MultiHeadResNet`: θ = {'frozen': g's parameters, 'generated': h's} (h trained directly here),
    depth k = 0 (everything trains) or 1 (g frozen, LR-1). The task heads are h's output slices."""

    net: FlaxNetwork
    norm: str = "reference"  # (no norm mode: a user's module normalises as it does; no running statistics)

    @property
    def num_tasks(self) -> int:
        return self.net.num_tasks

    @property
    def num_classes(self) -> int:
        return self.net.num_classes

    def init(self, key: jax.Array) -> tuple[Params, None]:
        k_g, k_h = jax.random.split(key)
        return {"frozen": self.net.init_frozen(k_g), "generated": self.net.generated.init(k_h)}, None

    def trunk(self, params: Params, x: jax.Array, depth: int, *, train: bool, stats=None, mask=None,
              frozen: bool = False):
        """z = g(x) at depth 1 (stop_gradient when frozen), z = x at depth 0: ([N, ...], None)."""
        self.net.check_freeze_depth(depth)
        if depth == 0:
            return x, None
        phi = jax.lax.stop_gradient(params["frozen"]) if frozen else params["frozen"]
        return self.net.features(phi, x), None

    def head(self, params: Params, z: jax.Array, task, depth: int, *, train: bool, stats=None, mask=None):
        """logits of the rest at depth k on z (`trunk`'s output), each sample's task head: [N, C]."""
        if depth == 0:
            z = self.net.features(params["frozen"], z)
        return self.net.outputs(params["generated"], z, task), None

    def logits(self, params: Params, x: jax.Array, task, *, train: bool, stats=None, mask=None,
               freeze_depth: int = 0):
        z, _ = self.trunk(params, x, freeze_depth, train=train, frozen=freeze_depth > 0)
        return self.head(params, z, task, freeze_depth, train=train)

    def logits_all_tasks(self, params: Params, x: jax.Array, *, stats=None, mask=None) -> jax.Array:
        """Every task head's logits on one batch, from one forward pass: [T, N, C]."""
        y = self.net.generated.apply(params["generated"], self.net.features(params["frozen"], x))
        if y.shape[1] == self.num_classes:
            return jnp.broadcast_to(y, (self.num_tasks, *y.shape))
        return y.reshape(y.shape[0], self.num_tasks, self.num_classes).transpose(1, 0, 2)

    def feature_shape(self, depth: int, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """One sample's trunk output at depth k."""
        self.net.check_freeze_depth(depth)
        return self.net.feature_shape if depth else tuple(input_shape)
