"""BFBox (Liu et al. 2020): the face-appropriate choice blocks and the searched FPN, as
catalogue entries with their costs (docs/bfbox.md). The search space and supernet are in
search_spaces/bfbox/.

    blocks.py  choice blocks bf_conv{k}, bf_dw{k}, bf_dw{k2}_{k3}, bf_dense{n}x{g} (Fig. 2)
    fpn.py     neck 'bfbox_fpn': merge inputs, receptive-field modules, FPN-attention weights
"""
