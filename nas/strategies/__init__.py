"""Search algorithms only; each space's glue (preset, phases, trials) is in nas/spaces/.

    two_step.py    two-step computation redistribution: step 2 inside step 1's bootstrap ranges
    evolution.py   random search and SPOS evolution over a space's encoded paths
    spos.py        single-path one-shot supernet training (a TrainHooks subclass)
    candidates.py  candidate evaluation: inherit supernet weights, recalibrate BN, test on fixed subsets
    darts.py       first-order bilevel search (DARTS/PC-DARTS/ASFD) as trainer hooks
    heldout.py     a train split cut into weights / held-out roots
"""
