# phn_jax: every command a user needs. `make help` lists them.
# The Python .venv is made with: python3.12 where one runs (on PATH, or pyenv's), for jax 0.11.2, whose XLA:CPU
# trains ~1.5x faster than jax 0.10.2; else python3 (Python 3.11: jax 0.10.2). PYTHON=/path/to/python chooses.
PYTHON ?= $(shell for p in python3.12 "$$(pyenv prefix 3.12 2>/dev/null)/bin/python3.12" python3; do \
            "$$p" -c '' 2>/dev/null && { echo "$$p"; break; }; done)
VENV   := .venv
PY     := $(VENV)/bin/python
# ACCEL=cpu|cuda|tpu: which JAX `make install` puts into .venv (requirements[-cuda|-tpu].txt). Later
# commands keep the one installed (.venv/accel), so `make cifar100` needs no ACCEL.
ACCEL  ?= $(shell cat $(VENV)/accel 2>/dev/null || echo cpu)
$(if $(filter $(ACCEL),cpu cuda tpu),,$(error ACCEL=$(ACCEL): use cpu (default), cuda (NVIDIA GPUs) or tpu (Cloud TPU VMs)))
REQUIREMENTS := requirements$(if $(filter-out cpu,$(ACCEL)),-$(ACCEL)).txt
STAMP  := $(VENV)/.installed-$(ACCEL)
# pytest workers: the suite is dominated by XLA compilation, which parallelises across processes.
WORKERS ?= 2

.PHONY: help install test test-system test-real test-slow clean

help:
	@grep -E '^[a-z][a-zA-Z0-9_-]*:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

$(STAMP): $(REQUIREMENTS) requirements.txt pyproject.toml
	$(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r $(REQUIREMENTS)
	$(PY) -m pip install --quiet --no-deps -e .
	rm -f $(VENV)/.installed-*; echo $(ACCEL) > $(VENV)/accel
	$(PY) -c 'import sys, jax; print(f"phn_jax installed in $(VENV): Python {sys.version.split()[0]}, jax {jax.__version__}")'
	touch $(STAMP)

# WANDB=1: also the optional Weights & Biases logger (requirements-wandb.txt, pinned; pip's phn_jax[wandb])
$(VENV)/.installed-wandb: $(STAMP) requirements-wandb.txt
	$(PY) -m pip install --quiet -r requirements-wandb.txt
	touch $@

install: $(STAMP) $(if $(filter 1,$(WANDB)),$(VENV)/.installed-wandb) ## create .venv with the pinned requirements and phn_jax; ACCEL=cpu (default)|cuda|tpu; WANDB=1 adds Weights & Biases (--config.log.wandb=<project>)

# The test processes (and the runs they start) share one persistent compilation cache, a fresh one
# per session: a program compiled once is loaded by every other test process that needs it.
TEST_CACHE = $(CURDIR)/.cache/jax-tests
# The suite is compilation-bound (tiny shapes): LLVM's expensive passes buy the tests nothing. jax 0.10's XLA:CPU
# (Python 3.11) also has older elementwise emitters, which compile its programs about a quarter faster than its
# fusion emitters (289 s against 384-442 s on 2 cores); jax 0.11 has only the fusion emitters.
TEST_XLA_FLAGS = --xla_llvm_disable_expensive_passes=true
TEST_XLA_FLAGS_JAX010 = --xla_cpu_use_fusion_emitters=false
test: $(STAMP) ## run the test suite (skips tests marked slow, system or real); about 5 min on 2 cores
	rm -rf $(TEST_CACHE)
	XLA_FLAGS="$(TEST_XLA_FLAGS) $$($(PY) -c 'import jax; print("$(TEST_XLA_FLAGS_JAX010)" if jax.__version_info__ < (0, 11) else "")') $(XLA_FLAGS)" \
	JAX_COMPILATION_CACHE_DIR=$(TEST_CACHE) $(PY) -m pytest -q -m "not slow and not system and not real" -n $(WORKERS) --dist loadfile --no-loadscope-reorder

test-system: $(STAMP) ## real runs in subprocesses: 2 processes x 2 devices, signals, kills, damaged checkpoints, locks, bad input, seeds, mock MNIST; about 10 min
	rm -rf $(TEST_CACHE)
	JAX_COMPILATION_CACHE_DIR=$(TEST_CACHE) $(PY) -m pytest -q -m "system and not slow" -n $(WORKERS) --dist load

test-real: $(STAMP) ## von Oswald et al.'s configs trained on real MNIST (../shared/data/mnist, prepared by our builder): SplitMNIST's first two tasks >= 99.5 %, PermutedMNIST's first task >= 97 %, SplitMNIST's CL3 with HNET+TIR and HNET+R above HNET+ENT; about 10 min
	rm -rf $(TEST_CACHE)
	JAX_COMPILATION_CACHE_DIR=$(TEST_CACHE) $(PY) -m pytest -q -rP -m real -n $(WORKERS) --dist load

test-slow: $(STAMP) ## run only the slow tests (training runs); "no tests ran" is not a failure
	JAX_COMPILATION_CACHE_DIR=$(TEST_CACHE) $(PY) -m pytest -q -m slow -n $(WORKERS) --dist loadfile || [ $$? -eq 5 ]

# ---- Experiments. Each run writes its own directory under $(RUNS); RESUME=1 continues an
# interrupted one. The defaults are the paper's hyperparameters (phn_jax/config.py).
RUNS     ?= runs
STRATEGY ?= hn
FREEZE   ?= 3
ORDER    ?= first
SEED     ?= 0
# SEEDS=0,1,2: those seeds as one program (config.seeds), each in the directory it would have alone
SEEDS    ?=
EPOCHS   ?= 100
# ITERATIONS=I: each experience I steps of full batches drawn across epochs (von Oswald et al.'s loop), in place
# of EPOCHS (the MNIST targets' default; give EPOCHS= or ITERATIONS=, not both)
ITERATIONS ?= 0
REPLAY   ?= 1
# FROZEN_INIT=<run dir>: hn/lr with the stem and stages 1..k of that run (e.g. make pretrain's), frozen from the start
FROZEN_INIT ?=
# Run names: hn<k>_<order>, lr<k>_c<replay coef>, naive, ewc, joint; _pretrained with FROZEN_INIT; then _seed<seed>
# (with SEEDS, each seed's results in _seed<s> and the group's checkpoints, log and aggregate in _seeds<s1>-<s2>-...).
# SCENARIO=1|2|3: van de Ven & Tolias' scenario the MNIST MLP trains for (strategy.scenario; 2: one head for all tasks)
SCENARIO ?=
NAME      = $(STRATEGY)$(if $(filter hn,$(STRATEGY)),$(FREEZE)_$(ORDER))$(if $(filter lr,$(STRATEGY)),$(FREEZE)_c$(REPLAY))$(if $(SCENARIO),_cl$(SCENARIO))$(if $(FROZEN_INIT),_pretrained)_seed$(if $(SEEDS),{seed},$(SEED))
# the length of an experience: EPOCHS, or ITERATIONS where it is not 0
length    = $(if $(and $(filter command line,$(origin EPOCHS)),$(filter-out 0,$(ITERATIONS))),$(error give EPOCHS=$(EPOCHS) or ITERATIONS=$(ITERATIONS), not both)) \
            --config.train.epochs=$(if $(filter-out 0,$(ITERATIONS)),0,$(EPOCHS)) --config.train.iterations=$(ITERATIONS)
# $(call run,<config file>,<workdir>)
run       = $(if $(DATA_DIR),TFDS_DATA_DIR=$(DATA_DIR)) $(PY) -m phn_jax.main --config $(1) --workdir $(2) \
            $(if $(RESUME),--resume) --config.seed=$(SEED) $(length) --config.strategy.name=$(STRATEGY) \
            --config.strategy.freeze_depth=$(FREEZE) --config.strategy.order=$(ORDER) \
            --config.strategy.replay_coef=$(REPLAY) $(if $(SEEDS),--config.seeds=$(SEEDS)) \
            $(if $(FROZEN_INIT),--config.strategy.frozen_init=$(FROZEN_INIT)) $(if $(SCENARIO),--config.strategy.scenario=$(SCENARIO)) $(ARGS)

.PHONY: demo example cifar100 tinyimagenet noisy ablation-order permuted-mnist split-mnist pretrain
# EXAMPLE=linen|nnx: examples/<EXAMPLE>_cnn.py, a user's own Flax module that the hypernetwork generates (docs/own_models.md)
EXAMPLE ?= linen
example: $(STAMP) ## your own Flax module as the generated network: EXAMPLE=linen (flax.linen CNN on a frozen stem, HN-1) | nnx (flax.nnx CNN, HN-0) on Split-Digits, offline, about a minute; runs/examples/<EXAMPLE>_cnn; RESUME=1 ARGS=
	$(PY) -m phn_jax.main --config examples/$(EXAMPLE)_cnn.py --workdir $(RUNS)/examples/$(EXAMPLE)_cnn $(if $(RESUME),--resume) $(ARGS)

demo: $(STAMP) ## HN-k against fine-tuning on Split-Digits: offline, minutes on a laptop CPU; prints a table
	$(PY) experiments/demo.py --workdir $(RUNS)/demo

cifar100: $(STAMP) ## Split-CIFAR100 20x5 (Table 2): STRATEGY=hn|lr|naive|ewc|joint FREEZE=0..4 ORDER=first|second|none REPLAY=1|0 SEED= or SEEDS=0,1,2 EPOCHS=
	$(call run,experiments/configs/split_cifar100.py,$(RUNS)/cifar100/$(NAME))

tinyimagenet: $(STAMP) ## Split-TinyImageNet 20x10 (Table 2): same variables as cifar100
	$(call run,experiments/configs/split_tinyimagenet.py,$(RUNS)/tinyimagenet/$(NAME))

noisy: $(STAMP) ## Noisy-CIFAR100 4x5 (section 4.2, Table 1): same variables as cifar100; CLEAN=1: its clean twin (runs/clean)
	$(call run,experiments/configs/$(if $(CLEAN),clean,noisy)_cifar100.py,$(RUNS)/$(if $(CLEAN),clean,noisy)/$(NAME))

# The reference scripts' frozen part: a model trained on every task beforehand (their train_multitask.py).
STREAM ?= cifar100
pretrain: $(STAMP) ## multitask pretraining for FROZEN_INIT: Joint (every task's head, trained on the union of the experiences) on STREAM=cifar100|tinyimagenet|noisy|..., then e.g. make cifar100 FREEZE=3 FROZEN_INIT=runs/cifar100/joint_seed0
	$(MAKE) --no-print-directory $(STREAM) STRATEGY=joint

# von Oswald et al.'s MNIST streams: their settings in the config files, their MLP target generated whole
# (k = 0: FREEZE other than 0 is a config error) and their iterations (ITERATIONS: steps of full batches across
# epochs), unless EPOCHS= or ITERATIONS= is given on the command line. METHOD=hnet (default: the hypernetwork classifier, evaluated with the task given and by entropy,
# HNET+ENT) | tir (HNET+TIR) | replay (HNET+R, with SCENARIO=2 or 3).
METHOD ?= hnet
permuted-mnist split-mnist: FREEZE = 0
permuted-mnist split-mnist: STRATEGY = $(if $(filter hnet,$(METHOD)),hn,$(METHOD))
permuted-mnist: ITERATIONS = $(if $(filter command line,$(origin EPOCHS)),0,5000)
split-mnist: ITERATIONS = $(if $(filter command line,$(origin EPOCHS)),0,2000)

permuted-mnist: $(STAMP) ## PermutedMNIST-10 (von Oswald et al.): their 1024-1000-1000 MLP from a chunked hypernetwork, their settings; METHOD=hnet|tir|replay SCENARIO=1|2|3 ORDER= SEED= SEEDS= ITERATIONS=5000 (or EPOCHS=)
	$(call run,experiments/configs/permuted_mnist.py,$(RUNS)/permuted_mnist/$(NAME))

split-mnist: $(STAMP) ## SplitMNIST 5x2 (von Oswald et al.): their 784-400-400 MLP from a chunked hypernetwork, their settings; METHOD=hnet|tir|replay SCENARIO=1|2|3 ORDER= SEED= SEEDS= ITERATIONS=2000 (or EPOCHS=)
	$(call run,experiments/configs/split_mnist.py,$(RUNS)/split_mnist/$(NAME))

ablation-order: $(STAMP) ## Table 5: first- vs second-order look-ahead for k=0..4 on Split-CIFAR100, then the report of runs/cifar100
	@for k in 0 1 2 3 4; do for o in first second; do \
	  $(MAKE) --no-print-directory cifar100 STRATEGY=hn FREEZE=$$k ORDER=$$o RESUME=1 || exit 1; done; done
	$(PY) -m phn_jax.paper $(RUNS)/cifar100

.PHONY: verify
verify: $(STAMP) ## check every checkpoint of the run in RUN=<dir> against the SHA-256 of its files and arrays written with it, without training; exit 2 if one is damaged
	@test -n "$(RUN)" || { echo "make verify RUN=<run directory>" >&2; exit 2; }
	$(PY) -m phn_jax.main --verify --workdir $(RUN)

.PHONY: report transfer paper
report: $(STAMP) ## the paper's Tables 1, 2, 4, 5, 6 and Figures 4, 7, 8, 11, 12 from every run under RUNS (seeds aggregated), the paper's numbers beside ours: RUNS/report.md and report.html
	$(PY) -m phn_jax.paper $(RUNS)

# ---- The paper's queues (phn_jax/suite.py): each configuration's seeds as one program, in queue order, in the
# directories the targets above use; finished configurations are skipped and interrupted ones resumed, so
# the same command continues. QUICK=1: the same queues on streams that ship with the code (runs/quick).
PAPER_SEEDS := 0,1,2
PAPER_RUNS   = $(RUNS)$(if $(QUICK),/quick)
suite        = $(if $(DATA_DIR),TFDS_DATA_DIR=$(DATA_DIR)) $(PY) -m phn_jax.suite $(1) --runs $(PAPER_RUNS) \
               --seeds $(or $(SEEDS),$(PAPER_SEEDS)) $(if $(QUICK),--quick) $(if $(PAIRS),--pairs $(PAIRS)) \
               $(if $(filter command line,$(origin EPOCHS)),--epochs $(EPOCHS)) $(if $(LIST),--list)
transfer: $(STAMP) ## section 4.1 / Figure 4: every pair A->B of 5 datasets x k=0..4 x {LR c=0, HN}, then its report; PAIRS=cifar10:cifar100,... SEEDS=0,1,2 EPOCHS= QUICK=1 LIST=1
	$(call suite,transfer)
	$(if $(LIST),,$(PY) -m phn_jax.paper $(PAPER_RUNS)/transfer)

paper: $(STAMP) ## every run of the paper's tables and figures (queue order, resumable), then make report; QUICK=1: all of it on embedded streams, offline (runs/quick, about 25 min on 2 CPU cores); LIST=1 SEEDS= EPOCHS= PAIRS=
	$(call suite,paper)
	$(if $(LIST),,$(PY) -m phn_jax.paper $(PAPER_RUNS))

.PHONY: bench
bench: $(STAMP) ## time every step (HN-k x order, experience 1, baselines), seeds (1/3/8, vmap and map) and evaluation on CIFAR shapes: runs/bench/bench.{json,md}; PARTS=steps,seeds,eval STEPS=20; PARTS=run RUN_EPOCHS=2: make cifar100 FREEZE=3's projected wall time; PARTS=checkpoint: what the checksums add to a save and a restore of HN-0's checkpoint
	$(PY) -m phn_jax.bench --out $(RUNS)/bench $(if $(PARTS),--parts $(PARTS)) $(if $(STEPS),--steps $(STEPS)) $(if $(RUN_EPOCHS),--run-epochs $(RUN_EPOCHS))

# PyTorch for `make bench-torch` only, in its own environment (never a dependency of phn_jax): its CPU build
TORCH_VENV  := .venv-torch
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_PYTHON ?= python3
$(TORCH_VENV)/.installed: requirements-torch.txt
	$(TORCH_PYTHON) -m venv $(TORCH_VENV)
	$(TORCH_VENV)/bin/python -m pip install --quiet $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) -r requirements-torch.txt
	touch $@

.PHONY: bench-torch
bench-torch: $(STAMP) $(TORCH_VENV)/.installed ## our full-network steps (Naive, experience 1 of HN-0 and HN-3) against a plain PyTorch step of the same network, their steps alternating in one sitting: runs/bench-torch/bench.{json,md}; installs torch (CPU) into .venv-torch on first use (TORCH_PYTHON=python3, TORCH_INDEX=)
	$(PY) -m phn_jax.bench --parts torch --torch-python $(TORCH_VENV)/bin/python --out $(RUNS)/bench-torch $(if $(STEPS),--steps $(STEPS))

.PHONY: data
data: $(STAMP) ## prepare a dataset for tfds.data_source: DATASET=<name> [DATA_DIR=<tfds dir>] [MANUAL_DIR=<archives copied by hand>]
	@test -n "$(DATASET)" || { echo "make data: set DATASET=<name>, one of: cifar10 cifar100 mnist fashion_mnist svhn_cropped gtsrb tiny_imagenet, or any tfds catalogue name (tfds builds it, downloading)" >&2; exit 2; }
	$(PY) -m phn_jax.data.prepare $(DATASET) $(if $(DATA_DIR),--data_dir $(DATA_DIR)) $(if $(MANUAL_DIR),--manual_dir $(MANUAL_DIR))

clean: ## remove caches (keeps .venv, data and runs)
	rm -rf .pytest_cache .cache; find . -name __pycache__ -prune -exec rm -rf {} +
