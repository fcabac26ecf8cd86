"""Probing sets: image folders, ImageFolder trees, fsspec URIs and Parquet files of image bytes."""
