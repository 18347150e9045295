"""sweeper: distributed hyperparameter and ablation sweeps for detection models."""
__version__ = "0.1.0"
