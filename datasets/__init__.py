"""Built-in dataset plugins, installed as ``lmbench.datasets``."""
