"""Smoke run: a tiny synthetic stream (3 experiences x 2 classes of 16x16 prototypes + noise) and a
slim ResNet-10 (one BasicBlock per stage) with nf=4, HN-2. Seconds per experience on a CPU once compiled: it checks an install,
a new machine, a multi-process launch, and is what the engine's tests run from the command line.
"""
from phn_jax.config import base_config


def get_config():
    c = base_config("synthetic")
    # 16x16: stage 4 keeps 2x2 pixels for the per-sample (instance) norm of the generated layers
    c.data.update(train_per_class=24, test_per_class=16, image_size=16, conflict=False)
    c.model.update(nf=4, num_classes=2, blocks_per_stage=(1, 1, 1, 1))  # half the graph: half the compile time
    c.strategy.freeze_depth = 2
    c.train.update(epochs=5, batch_size=16, eval_batch_size=32)
    return c
