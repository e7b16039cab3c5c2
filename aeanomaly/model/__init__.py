"""Autoencoder model, heads and training."""
