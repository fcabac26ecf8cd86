"""Output layout, caches, manifest and fsspec/pyarrow I/O."""
