"""Photo -> vector: TAEF2, model loading, DDIM inversion, U-Net features, projection, the embedder and its config."""
