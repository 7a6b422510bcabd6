"""lmbench: one trainer and one evaluator for unsupervised landmark discovery."""

__version__ = "0.1.0"
