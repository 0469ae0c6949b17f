"""Certified lower bounds on robust accuracy: bound propagation through a model over an eps ball (bounds.py)."""
