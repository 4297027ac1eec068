"""Training the default latent diffusion U-Net on TAEF2 latents."""
