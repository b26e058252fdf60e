"""`python -m phn_jax.paper RUNS`: see `phn_jax.paper`."""
from phn_jax.paper import main

main()
