"""The paper's experiments: their config files (`configs/`) and the scripts around them. Installed as
`phn_jax.experiments` (pyproject.toml maps this directory there), so that `--config <name>` and the
paper's queue find the configs from any directory, in an editable install or a wheel."""
