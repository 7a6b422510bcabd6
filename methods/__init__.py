"""Built-in method plugins, installed as ``lmbench.methods``."""
