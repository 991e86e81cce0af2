"""Search strategies: how each space plans its trials (see nas/spaces.py).

    two_step.py   SCRFD: constrained random sampling, step 2 inside step 1's bootstrap ranges
"""
