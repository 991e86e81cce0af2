"""Search strategies: how each space plans its trials (see nas/spaces.py).

    two_step.py   SCRFD: constrained random sampling, step 2 inside step 1's bootstrap ranges
    asfd_phases.py  ASFD: one bilevel search per seed, then each derived detector trained
    darts.py      first-order bilevel search (DARTS/PC-DARTS/ASFD) as trainer hooks
    heldout.py    a train split cut into weights / held-out roots
"""
