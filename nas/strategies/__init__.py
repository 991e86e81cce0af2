"""Search strategies: how each space plans its trials (see nas/spaces.py).

    two_step.py      SCRFD: constrained random sampling, step 2 inside step 1's bootstrap ranges
    spos.py          BFBox: single-path one-shot supernet training (a TrainHooks subclass)
    candidates.py    BFBox: inherit supernet weights, recalibrate BN, test on fixed subsets
    evolution.py     BFBox: random search and SPOS evolution over supernet paths
    bfbox_search.py  BFBox: preset, phases, candidate trials, export
    asfd_phases.py  ASFD: one bilevel search per seed, then each derived detector trained
    darts.py      first-order bilevel search (DARTS/PC-DARTS/ASFD) as trainer hooks
    heldout.py    a train split cut into weights / held-out roots
"""
