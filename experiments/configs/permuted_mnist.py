"""PermutedMNIST-10 (von Oswald et al., ICLR 2020): 10 experiences of the 10 MNIST digits, each with
its own fixed pixel permutation (the first the identity), MNIST zero-padded to 32×32.
`make permuted-mnist` (k = 0 and 5,000 iterations a task, or EPOCHS= whole epochs; the MLP has no
frozen part, so FREEZE= other than 0 is a config error).

Theirs, and ours with it: the settings of the reference implementation (github.com/chrhenning/hypercl),
each with the file that sets it:
  - stream: PermutedMNIST-10, the first task unpermuted (mnist/train_utils.py `_generate_tasks`:
    permutations [None] + 9 random ones over (28+2·padding)² pixels); task-incremental (their CL
    scenario 1)
  - the same ten tasks for every seed: the permutations are drawn by
    `np.random.RandomState(42)` (`data_random_seed`, utils/cli_args.py), not by the run's seed,
    which sets the initialisation and the batches only: `data.seed = 42` (`--config.data.seed=`
    other tasks)
  - input: 28×28 zero-padded by 2 to 32×32 (`padding = 2`, mnist/train_args_default.py
    `_set_default_permuted`), one channel, flattened to 1,024 values (mnist/train_utils.py
    `generate_classifier`: n_in = (28+2·padding)²); pixels in [0, 1], no mean/std normalisation
    (data/mnist_data.py: images / 255)
  - target network: fully connected 1024-1000-1000-100 (`class_fc_arch = '1000,1000'`,
    `_set_default_permuted`), ReLU (`dnet_act='relu'`, mnist/train_args.py), biases (mnets/mlp.py
    MLP: use_bias=True), no normalisation layers, no dropout (ddropout_rate=-1, utils/cli_args.py)
  - heads: one output layer of 10·10 units, head t = units 10t..10t+9 (generate_classifier: n_out =
    out_dim·num_tasks for CL1; mnist/train_splitMNIST.py: task_out = [t·out_dim, (t+1)·out_dim])
  - chunked hypernetwork generating every target parameter, biases included: task embedding
    e_t ∈ R^24, chunk embeddings c_i ∈ R^8, hidden layers 25-25 with ELU, chunks of 78,000 values
    (`class_temb_size`, `class_emb_size`, `class_hnet_arch`, `class_hnet_act`,
    `class_hyper_chunks`, `_set_default_permuted`)
  - the chunks laid over the MLP in PyTorch's parameter order: fc1's weight [out, in] row-major, its
    bias, fc2's, then the output layer's (mnets/mlp.py `MLP.weight_shapes`; chunked_hyper_model.py
    `forward` cuts the chunks' concatenation into them): `hnet.layout='pytorch'`
  - β = 0.1 for the output regulariser (`class_beta`, `_set_default_permuted`; the argparse default
    0.01 is overridden), averaged over the previous tasks as ours
  - Adam, lr 1e-4, batch 128, 5,000 iterations per task (`class_lr`, `batch_size`, `n_iter`,
    `_set_default_permuted`), full batches drawn across epochs from one reshuffled sweep after
    another (data/dataset.py `Dataset._get_random_batch`): `train.iterations=5000` (5,000·128 / 60,000
    ≈ 10.7 epochs; the engine runs them as 11 calls of 469 steps, the last one's after the 5,000th
    skipped)
  - look-ahead with the optimizer's (Adam's) virtual step (`use_sgd_change` off), first order
    (`backprop_dt` off) (mnist/replay/train_args_replay.py), ε added to the uncorrected √v as their
    utils/optim_step.py `adam_step` does: `strategy.lookahead_step='hypercl'`
  - only the current task's embedding is trained; a new one is drawn from N(0, 1)
    (`embedding_reset='normal'`), not copied from the previous task
  - task inference by the lowest softmax entropy (HNET+ENT), temperature 1 (`soft_temp`,
    mnist/train_args.py): reported beside the task-incremental accuracy (eval.task_inference)
  - the replay systems (`make permuted-mnist METHOD=tir|replay SCENARIO=2|3`): `von_oswald_replay`
    with `_set_default_permuted`'s: encoder 1000-1000, decoder 1000-1000 (TIR) / 400-400 (R), lr 1e-4;
    its hypernetwork 24 / 8, 25-25 ELU, chunks of 85,000, β = 0.1
  - the rest of the recipe, and where ours still differs: `phn_jax.config.von_oswald_hnet`
"""
from phn_jax.config import base_config, von_oswald_hnet, von_oswald_replay


def get_config():
    c = base_config("permuted_mnist")
    c.model.num_classes = 10
    del c.data["seed"]  # base_config ties it to c.seed; here it is hypercl's data_random_seed instead:
    c.data.seed = 42    # its ten tasks, whatever the run's seed
    c = von_oswald_hnet(c, beta=0.1, lr=1e-4, iterations=5000, mlp=(1000, 1000), image_size=32, embedding_dim=24,
                        chunk_embedding_dim=8, hidden_dims=(25, 25), activation="elu", chunk_dim=78_000)
    return von_oswald_replay(c, encoder_dims=(1000, 1000), decoder_dims_tir=(1000, 1000), decoder_dims_replay=(400, 400),
                             lr=1e-4, beta=0.1, embedding_dim=24, chunk_embedding_dim=8, hidden_dims=(25, 25),
                             activation="elu", chunk_dim=85_000)
