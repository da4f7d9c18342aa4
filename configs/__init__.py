"""The shipped run configs, one per env. Installed as `gtr_turbo_jax.configs`, so `--env=sokoban`
finds them from any folder; `--config=path/to/file.py` loads a user's own."""
