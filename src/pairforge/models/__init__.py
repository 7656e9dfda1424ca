"""Networks: UNet2DModel presets, the Semantic Diffusion Model U-Net, the super-resolution U-Net."""
