"""Experiment configs (ml_collections): ``get_config(arg)`` per file; see jaxar.recipes.cli."""
