"""aeanomaly: unsupervised anomaly detection in CT with convolutional autoencoders."""

__version__ = "0.1.0"
