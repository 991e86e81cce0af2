"""SCRFD search space: the constrained sampler (space.py), its channel rules (widths.py) and
its vectorised latency model (latency.py)."""
