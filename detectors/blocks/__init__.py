"""Blocks of standard backbones, each beside its analytic cost; any family may use them.

One file per network: a module class (or builder) and a `*_cost(counter, ...)` function that
mirrors its constructor for detectors.cost. detectors/catalog.py pairs them under the names a
spec uses. Blocks a family's paper introduced live in that family's package (detectors/bfbox/,
detectors/asfd/).

    conv.py          ConvNormAct, DepthwiseSeparable (shared by backbones, necks, heads)
    resnet.py        BasicBlock, Bottleneck, the ResNet-V1e deep stem (SCRFD)
    mobilenet.py     DepthwiseBlock (MobileNetV1 unit), the MobileNet stem (SCRFD)
    mobilenet_v1.py  MobileNetV1's own stem (ASFD's MobileNet backbones)
    tv_resnet.py     torchvision's ResNet layout (ASFD's backbones, RSA's trunk)
    vgg.py           VGG16 and the SSD extra layers without BN (S3FD; FANet)
    extra.py         SSD / S3FD extra layers with BN (ASFD)
"""
