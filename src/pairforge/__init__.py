"""pairforge: labeled segmentation data from diffusion models."""

__version__ = "0.1.0"
