"""Datasets named in YAML as data.<module>:<Class>; each builds train/val loaders."""
