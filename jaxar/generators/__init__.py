"""Generators, one file per family (gpt.py = LlamaGen, ...).

Each has a frozen config dataclass with named presets and a Task loss.
"""
