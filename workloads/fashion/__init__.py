"""A second trained model: a class-conditional Fashion-MNIST UNet (16x16) and its classifier (docs/fashion.md).

``data`` reads the Debian IDX files, ``train`` writes ``weights/``, ``evaluate`` samples and grades them.
"""
