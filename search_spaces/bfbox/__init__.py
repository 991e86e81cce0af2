"""BFBox search space: paths <-> specs and costs (space.py), the single-path supernet
(supernet.py)."""
