"""One file per experiment: `get_config()` returns its `ml_collections.ConfigDict`
(`phn_jax.config.load_config`; `python -m phn_jax.main --config <name>`)."""
