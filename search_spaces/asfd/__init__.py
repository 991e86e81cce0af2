"""ASFD search space: the AutoFEM supernet (supernet.py), its search cells (cells.py), the
D0-D6 family of Table 1 / Table 5 (family.py)."""
