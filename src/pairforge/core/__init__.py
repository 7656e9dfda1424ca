"""The shared core under train / generate / seg / eval: tasks, run records, seeds, metrics."""
