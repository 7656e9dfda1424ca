"""Label-efficient segmentation from frozen diffusion features, and auto-labeling."""
