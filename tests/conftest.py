"""Test session set-up: four host CPU devices in every test process (before JAX starts), so a
test can compare a run on a 1-device mesh with the same run on a 4-device mesh. Engine tests
choose their mesh with `train.num_devices` (tiny_config: 1)."""
import jax

jax.config.update("jax_num_cpu_devices", 4)
