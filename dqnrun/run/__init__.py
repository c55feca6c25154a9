"""The run layer: one run's lifecycle, its checkpoints and the files of its directory."""
