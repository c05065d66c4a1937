"""quant: how a layer runs quantized (inventory, BitConfig, quantizers, backends, costs).

Import submodules directly (`from quant.config import BitConfig`); this package keeps its own
import light so that the CLI starts fast.
"""
