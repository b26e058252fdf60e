"""Examples of using phn_jax with one's own Flax modules (README: Bring your own model)."""
