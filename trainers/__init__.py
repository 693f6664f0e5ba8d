"""Command-line entry points (absl). Flags are parsed here and nowhere else."""
