"""Building blocks shared by every detector family, each beside its analytic cost.

One file per family of blocks: a module class (or builder) and a `*_cost(counter, ...)`
function that mirrors its constructor for detectors.cost. detectors/catalog.py pairs them
under the names a spec uses.

    conv.py       ConvNormAct, DepthwiseSeparable (shared by backbones, necks, heads)
    resnet.py     BasicBlock, Bottleneck, the ResNet-V1e deep stem
    mobilenet.py  DepthwiseBlock (MobileNetV1 unit), the MobileNet stem
"""
