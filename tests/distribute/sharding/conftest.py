# _jax_script.py is a script run in a JAX subprocess by test_sharded_training.py
# (8 logical devices): importing it here, for its doctests, would run it on
# this process's backend.
collect_ignore = ["_jax_script.py", "_remat_script.py"]
