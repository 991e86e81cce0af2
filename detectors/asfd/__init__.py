"""ASFD (Zhang et al. 2020): AutoFEM and the DRMC loss as catalogue entries (docs/asfd.md).
The differentiable supernet and the D0-D6 family are in search_spaces/asfd/.

    ops.py      candidate operations of S_FPN and S_CPM, by name, with their costs
    autofem.py  neck 'autofem': a derived AutoFEM (searched FPN + CPM cells)
    drmc.py     loss 'drmc': distance-based regression + margin-based classification
"""
