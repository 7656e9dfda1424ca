"""Pair generation: joint, two-stage and super-resolution pipelines and the dataset writer."""
