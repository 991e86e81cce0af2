"""FANet (Zhang et al. 2018), reproduced as a baseline through the catalogue (docs/fanet.md).
Its S3FD backbone is the standard VGG16 of detectors/blocks/vgg.py and its loss SSD's multibox
(detectors/multibox.py).

    neck.py  neck 'fanet': the agglomeration (A-block) hierarchy with its cost and level rules
"""
