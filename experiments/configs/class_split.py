"""Any image-classification dataset of the tfds catalogue split by class: name it on the command line.

    make data DATASET=kmnist
    python -m phn_jax.main --config class_split --workdir runs/kmnist --config.data.dataset=kmnist \
        --config.data.classes_per_experience=2

The slim ResNet-18 at HN-2 with a head of `classes_per_experience` outputs; the other data fields
(num_experiences, class_order, image_size, channels, train_split, test_split) in docs/own_models.md.
"""
from phn_jax.config import base_config


def get_config():
    c = base_config("class_split")
    c.model.num_classes = c.data.get_ref("classes_per_experience")
    c.strategy.freeze_depth = 2
    c.train.epochs = 20
    return c
