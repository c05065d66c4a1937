"""The one exception hierarchy of bitsearch: every error we raise derives from `BitsearchError`.

Boundaries (the CLI, the HTTP API) catch `BitsearchError` alone and map subclasses to what they
show (a one-line message, a status code); anything else is a bug and keeps its traceback.

    BitsearchError
    ├── ConfigError (also ValueError)       a spec/config/argument is invalid; the message names the fix
    │   ├── UnknownNameError                an unknown extension name or keyword option (the registries)
    │   ├── UnsupportedBits                 a backend has no kernel for a bit pair on a layer kind
    │   └── InfeasibleBudget (solvers)      no allowed config meets a limit
    ├── ModelLoadError, WorkloadError,      each package's own kinds, defined beside the code that
    │   EstimatorError (also ValueError)    raises them (workloads.denoisers, workloads.base, sensitivity.base)
    ├── VerificationError, SolverError      a quantized run or a solver did not do what was asked
    │   (also RuntimeError)
    └── StorageError (storage.errors)       the database; its subclasses name not-found / duplicate ...

Design decision: this module is a leaf. It imports nothing of ours and nothing heavy, so that
`storage`, which otherwise depends on nothing of ours, may import it (the only exception to that
rule, written in tests/test_architecture.py) and share the base class without knowing quant.
"""

from __future__ import annotations


class BitsearchError(Exception):
    """Base class of every error bitsearch raises on purpose (not of assertion-style bug signals)."""


class ConfigError(BitsearchError, ValueError):
    """A configuration is invalid; the message names the problem and the fix."""


class UnknownNameError(ConfigError):
    """An unknown registered name or keyword option; the message lists the valid ones."""


class UnsupportedBits(ConfigError):
    """The backend has no kernel for this bit pair on this layer kind."""
