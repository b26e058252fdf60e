"""Continual-learning strategies behind one engine (`phn_jax.train`); see `base` for the interface.

hn: HN-k, the partial hypernetwork (model.arch 'resnet'), or the hypernetwork generating von Oswald
et al.'s multi-head MLP (model.arch 'mlp', k = 0: one head per experience). The baselines share
one multi-head ResNet (`multihead`): naive (fine-tuning), ewc (EWC, λ = strategy.ewc_lambda), lr
(LR-k latent replay) and joint (cumulative training, the upper bound).
"""
from __future__ import annotations

import numpy as np

from phn_jax import models
from phn_jax.partial_hnet import PartialHypernetwork
from phn_jax.strategies.ewc import EWC
from phn_jax.strategies.hn import HN
from phn_jax.strategies.joint import Joint
from phn_jax.strategies.latent_replay import LatentReplay
from phn_jax.strategies.multihead import MultiHeadResNet
from phn_jax.strategies.naive import Naive

STRATEGIES = ("hn", "naive", "ewc", "lr", "joint")


def create_strategy(config, stream):
    """The strategy that `config.strategy.name` names, sized for `stream` (tasks, image shape)."""
    name = config.strategy.name
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; available: {', '.join(STRATEGIES)}")
    if config.model.num_classes < stream.classes_per_experience:
        raise ValueError(f"model.num_classes={config.model.num_classes} is smaller than the stream's "
                         f"{stream.classes_per_experience} classes per experience")
    resnet = models.ResNetConfig(num_classes=config.model.num_classes, nf=config.model.nf,
                                 in_channels=stream.image_shape[-1],
                                 blocks_per_stage=tuple(config.model.get("blocks_per_stage", (2, 2, 2, 2))))
    s = config.strategy
    if config.model.get("arch", "resnet") == "mlp":
        if name != "hn":
            raise ValueError(f"model.arch='mlp' runs with strategy hn only (the baselines use the multi-head "
                             f"ResNet), got strategy {name!r}")
        net = models.MLPConfig(in_features=int(np.prod(stream.image_shape)), hidden_dims=tuple(config.model.hidden_dims),
                               num_classes=config.model.num_classes, num_heads=stream.num_experiences)
    else:
        net = resnet
    if name != "hn":
        common = dict(model=MultiHeadResNet(resnet, stream.num_experiences, norm=config.model.norm),
                      lr=config.optim.lr, eps_root=config.optim.eps_root)
        if name == "ewc":
            return EWC(**common, ewc_lambda=s.ewc_lambda, fisher_batch_size=config.train.batch_size)
        if name == "lr":
            return LatentReplay(**common, freeze_depth=s.freeze_depth, input_shape=tuple(stream.image_shape),
                                buffer_size=s.buffer_size, replay_batch_size=s.replay_batch_size,
                                replay_coef=s.replay_coef, feature_batch_size=config.train.eval_batch_size)
        return {"naive": Naive, "joint": Joint}[name](**common)
    model = PartialHypernetwork.create(
        net, s.freeze_depth, num_tasks=stream.num_experiences, norm=config.model.norm,
        **config.hnet.to_dict())
    return HN(model, lr=config.optim.lr, eps_root=config.optim.eps_root, beta=s.beta, order=s.order,
              combine=s.combine, lookahead_step=s.lookahead_step, reg_subset=s.reg_subset, reg_reduce=s.reg_reduce,
              train_old_embeddings=s.train_old_embeddings, copy_embedding=s.copy_embedding,
              input_shape=tuple(stream.image_shape), buffer_size=s.get("buffer_size", 200))
