"""RSA (Liu et al., "Recurrent Scale Approximation for Object Detection in CNN", ICCV 2017),
reproduced as a baseline through the catalogue (docs/rsa.md).

    detector.py  RSADetector: forecast -> resize -> roll-out pipeline (head entry 'rsa_lrn')
    forecast.py  scale-forecast network and its loss
    unit.py      RSA unit (neck 'rsa'): feature roll-out, its options and loss
    lrn.py       landmark retracing network (head 'rsa_lrn') with its cost
    training.py  the stage objectives (forecast, RSA unit + LRN) the trainer calls
    recipe.py    recipe.rsa: training stages
    cost.py      the pipeline's cost split as Table 1 (forecast, trunk, RSA, LRN) per depth
"""
