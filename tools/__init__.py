"""The repository's own tools, run from a clone's root as ``python -m tools.NAME``; not installed."""
