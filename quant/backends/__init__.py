"""Kernel backends, registered by name. Importing this package registers the built-in ones."""

from quant.backends import fake, int8  # noqa: F401  (registration side effect)
