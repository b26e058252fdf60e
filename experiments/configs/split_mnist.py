"""SplitMNIST (von Oswald et al., ICLR 2020): 5 experiences of 2 MNIST digits, 0/1, 2/3, 4/5, 6/7,
8/9, as 28×28 images. `make split-mnist` (k = 0 and 2,000 iterations a task, or EPOCHS= whole epochs; the
MLP has no frozen part, so FREEZE= other than 0 is a config error).

Theirs, and ours with it: the settings of the reference implementation (github.com/chrhenning/hypercl),
each with the file that sets it:
  - stream: SplitMNIST, the digits in their natural order (data/special/split_mnist.py
    `get_split_MNIST_handlers`: labels [i, i+1] for i = 0, 2, ..., 8), task-incremental (their CL
    scenario 1)
  - input: 28×28, no padding (`padding = 0`, mnist/train_args_default.py `_set_default_split`),
    one channel, flattened to 784 values (mnist/train_utils.py `generate_classifier`: n_in = 28²);
    pixels in [0, 1], no mean/std normalisation (data/mnist_data.py: images / 255)
  - target network: fully connected 784-400-400-10 (`class_fc_arch = '400,400'`,
    `_set_default_split`), ReLU (`dnet_act='relu'`, mnist/train_args.py), biases (mnets/mlp.py MLP:
    use_bias=True), no normalisation layers, no dropout (ddropout_rate=-1, utils/cli_args.py)
  - heads: one output layer of 2·5 units, head t = units 2t, 2t+1 (generate_classifier: n_out =
    out_dim·num_tasks for CL1; mnist/train_splitMNIST.py: task_out = [t·out_dim, (t+1)·out_dim])
  - chunked hypernetwork generating every target parameter, biases included: task embedding
    e_t ∈ R^96, chunk embeddings c_i ∈ R^96, hidden layers 10-10 with ReLU, chunks of 42,000 values
    (`class_temb_size`, `class_emb_size`, `class_hnet_arch`, `class_hnet_act`,
    `class_hyper_chunks`, `_set_default_split`)
  - the chunks laid over the MLP in PyTorch's parameter order: fc1's weight [out, in] row-major, its
    bias, fc2's, then the output layer's (mnets/mlp.py `MLP.weight_shapes`; chunked_hyper_model.py
    `forward` cuts the chunks' concatenation into them): `hnet.layout='pytorch'`
  - β = 0.01 for the output regulariser (`class_beta`, `_set_default_split`), averaged over the
    previous tasks as ours
  - Adam, lr 1e-3, batch 128, 2,000 iterations per task (`class_lr`, `batch_size`, `n_iter`,
    `_set_default_split`), full batches drawn across epochs from one reshuffled sweep after another
    (data/dataset.py `Dataset._get_random_batch`): `train.iterations=2000` (2,000·128 / ≈12,000 samples
    per task ≈ 21 epochs; the engine runs them as 21 calls of 99 steps, 99 = ⌈12,665 / 128⌉ for the
    largest task, the last call's after the 2,000th skipped)
  - look-ahead with the optimizer's (Adam's) virtual step, first order (mnist/replay/train_args_replay.py),
    ε added to the uncorrected √v as their utils/optim_step.py `adam_step` does:
    `strategy.lookahead_step='hypercl'`
  - only the current task's embedding is trained; a new one is drawn from N(0, 1), not copied
  - task inference by the lowest softmax entropy (HNET+ENT), temperature 1: reported beside the
    task-incremental accuracy (eval.task_inference)
  - the replay systems (`make split-mnist METHOD=tir|replay SCENARIO=2|3`): `von_oswald_replay` with
    `_set_default_split`'s values: encoder 400-400, decoder 50-150 (TIR) / 250-350 (R), lr 1e-3;
    its hypernetwork 96 / 96, 10-10 ELU, chunks of 50,000, β = 0.01
  - the rest of the recipe, and where ours still differs: `phn_jax.config.von_oswald_hnet`
"""
from phn_jax.config import base_config, von_oswald_hnet, von_oswald_replay


def get_config():
    c = base_config("split_mnist")
    c.data.class_order = list(range(10))
    c.model.num_classes = 2
    c = von_oswald_hnet(c, beta=0.01, lr=1e-3, iterations=2000, mlp=(400, 400), image_size=28, embedding_dim=96,
                        chunk_embedding_dim=96, hidden_dims=(10, 10), activation="relu", chunk_dim=42_000)
    return von_oswald_replay(c, encoder_dims=(400, 400), decoder_dims_tir=(50, 150), decoder_dims_replay=(250, 350),
                             lr=1e-3, beta=0.01, embedding_dim=96, chunk_embedding_dim=96, hidden_dims=(10, 10),
                             activation="elu", chunk_dim=50_000)
