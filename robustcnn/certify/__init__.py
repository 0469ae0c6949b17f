"""Certified lower bounds on robust accuracy: bound propagation through a model over an eps ball (bounds.py)."""

# crown's Adam steps on its ReLU slopes for the final bound (what they lift: README, "crown"); here, not in bounds.py,
# so the suite entries' defaults (attacks/certified.py) do not import the bound machinery with every sweep
ALPHA_STEPS = 20
