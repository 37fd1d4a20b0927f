"""flowvae: VAEs with Gaussian, IAF and PCP-Map posteriors on MNIST (2-D latent space)."""

__version__ = "0.1.0"
