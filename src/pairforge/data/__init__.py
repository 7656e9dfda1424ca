"""Datasets: the standard on-disk format, normalization, mask codecs, views and built-in data."""
