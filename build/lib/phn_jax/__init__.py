"""phn_jax: partial hypernetworks for continual learning in JAX."""
