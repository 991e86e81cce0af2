"""Search spaces, one package per detector family: what can be sampled, and its cost.

    scrfd/   SCRFD's computation-redistribution sampler (+ its vectorised latency band)
    bfbox/   BFBox's joint backbone + FPN space and its single-path supernet
    asfd/    ASFD's AutoFEM supernet, its search cells and the D0-D6 family
"""
