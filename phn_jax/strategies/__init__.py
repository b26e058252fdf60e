"""Continual-learning strategies behind one engine (`phn_jax.train`); see `base` for the interface.

hn: HN-k, the partial hypernetwork (model.arch 'resnet'), or the hypernetwork generating von Oswald
et al.'s multi-head MLP (model.arch 'mlp', k = 0: one head per experience). The baselines share
one multi-head ResNet (`multihead`): naive (fine-tuning), ewc (EWC, λ = strategy.ewc_lambda), lr
(LR-k latent replay) and joint (cumulative training, the upper bound). model.arch 'flax': a user's Flax
modules (`phn_jax.flax_modules`) in place of the ResNet for hn and the baselines. von Oswald et al.'s replay
systems on the MLP (`replay`): tir (HNET+TIR: hn's classifier, a task-inference network and a
hypernetwork-protected VAE) and replay (HNET+R: one classifier trained with that VAE's replay).
strategy.scenario (van de Ven & Tolias): 1 or 3, a head per task; 2, one head shared by all tasks
(the MLP's); replay needs 2 or 3.
"""
from __future__ import annotations

import numpy as np

from phn_jax import models
from phn_jax.flax_modules import FlaxNetwork, MultiHeadFlax
from phn_jax.partial_hnet import PartialHypernetwork
from phn_jax.strategies.ewc import EWC
from phn_jax.strategies.hn import HN
from phn_jax.strategies.joint import Joint
from phn_jax.strategies.latent_replay import LatentReplay
from phn_jax.strategies.multihead import MultiHeadResNet
from phn_jax.strategies.naive import Naive
from phn_jax.strategies.replay import SCENARIOS, TIR, GenerativeMemory, Replay
from phn_jax.vae import VAE

STRATEGIES = ("hn", "naive", "ewc", "lr", "joint", "tir", "replay")
MLP_ONLY = ("tir", "replay")  # von Oswald et al.'s systems: the MLP classifier (model.arch='mlp')


def create_strategy(config, stream):
    """The strategy that `config.strategy.name` names, sized for `stream` (tasks, image shape)."""
    name = config.strategy.name
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; available: {', '.join(STRATEGIES)}")
    if config.model.num_classes < stream.classes_per_experience:
        raise ValueError(f"model.num_classes={config.model.num_classes} is smaller than the stream's "
                         f"{stream.classes_per_experience} classes per experience")
    m, s = config.model, config.strategy
    resnet = models.ResNetConfig(num_classes=m.num_classes, nf=m.nf, in_channels=stream.image_shape[-1],
                                 blocks_per_stage=tuple(m.blocks_per_stage))
    if (m.arch == "mlp" and name not in ("hn",) + MLP_ONLY) or (m.arch != "mlp" and name in MLP_ONLY):
        raise ValueError(f"model.arch={m.arch!r} does not run strategy {name!r}: the MLP runs {('hn',) + MLP_ONLY}, "
                         "the baselines use the multi-head ResNet (or a user's module, model.arch='flax')")
    if m.arch == "flax":
        net = FlaxNetwork.create(m.module, m.module_kwargs, stream.image_shape, m.num_classes, stream.num_experiences,
                                 m.frozen_module, m.frozen_module_kwargs)
    elif m.arch == "mlp":
        net = models.MLPConfig(in_features=int(np.prod(stream.image_shape)), hidden_dims=tuple(m.hidden_dims),
                               num_classes=m.num_classes, num_heads=1 if s.scenario == 2 else stream.num_experiences)
    else:
        net = resnet
    if name in MLP_ONLY:
        return _replay_system(config, stream, net)
    if name != "hn":
        model = (MultiHeadFlax(net) if m.arch == "flax"
                 else MultiHeadResNet(resnet, stream.num_experiences, norm=m.norm))
        common = dict(model=model, lr=config.optim.lr, eps_root=config.optim.eps_root, adam_eps=config.optim.adam_eps)
        if name == "ewc":
            return EWC(**common, ewc_lambda=s.ewc_lambda, fisher_batch_size=config.train.batch_size)
        if name == "lr":
            return LatentReplay(**common, freeze_depth=s.freeze_depth, input_shape=tuple(stream.image_shape),
                                buffer_size=s.buffer_size, replay_batch_size=s.replay_batch_size,
                                replay_coef=s.replay_coef, feature_batch_size=config.train.eval_batch_size)
        return {"naive": Naive, "joint": Joint}[name](**common)
    return _hn(config, stream, net)


def _hn(config, stream, net) -> HN:
    s = config.strategy
    model = PartialHypernetwork.create(
        net, s.freeze_depth, num_tasks=stream.num_experiences, norm=config.model.norm,
        **config.hnet.to_dict())
    return HN(model, lr=config.optim.lr, eps_root=config.optim.eps_root, adam_eps=config.optim.adam_eps, beta=s.beta, order=s.order,
              combine=s.combine, lookahead_step=s.lookahead_step, reg_subset=s.reg_subset, reg_reduce=s.reg_reduce,
              train_old_embeddings=s.train_old_embeddings, copy_embedding=s.copy_embedding,
              input_shape=tuple(stream.image_shape), buffer_size=s.buffer_size)


def _replay_system(config, stream, net: models.MLPConfig):
    """tir or replay on `net` (the MLP), with the generative memory of `config.replay`."""
    r, name = config.replay, config.strategy.name
    vae = VAE(in_features=net.in_features, encoder_dims=tuple(r.encoder_dims),
              decoder_dims=tuple(r.decoder_dims[name]), latent_dim=r.latent_dim, condition_dim=r.condition_dim)
    hnet = {k: tuple(v) if k == "hidden_dims" else v for k, v in r.hnet.to_dict().items()}
    memory = GenerativeMemory.create(vae, stream.num_experiences, lr=r.lr, beta=r.beta, **hnet)
    if name == "tir":
        inference = models.MLPConfig(net.in_features, net.hidden_dims, stream.num_experiences, 1)
        return TIR(_hn(config, stream, net), memory, inference, lr=config.optim.lr, replay_weight=r.replay_weight)
    scenario = config.strategy.scenario
    if scenario not in SCENARIOS:
        raise ValueError(f"strategy replay (HNET+R) trains for scenario 2 (one head) or 3 (a head per task, the "
                         f"argmax over all), got strategy.scenario={scenario}")
    return Replay(net, memory, lr=config.optim.lr, replay_weight=r.replay_weight, temperature=r.temperature)
