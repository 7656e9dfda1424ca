"""Diffusion math: schedules, training objectives, samplers and guidance."""
