"""Great Expectations imported quietly and quickly. Both changes below are speed settings over GX
internals, pinned to the GX version in constraints.txt by tests/core/test_gx_import.py; neither
changes a validation result (the same test compares results with and without them).
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import types
from typing import Any, Iterable

# GX imports these at module level for what no suite here uses (distribution tests, charts): they
# were 1 s of its 2.4 s import, paid by every cold `dvc repro` before its first gate could answer.
# Deferred, each is imported on first use of one of its attributes, so nothing that does use them breaks.
DEFERRED_IMPORTS = ("scipy.stats", "altair")


class DeferredModule(types.ModuleType):
    """Stands in sys.modules for a module until one of its attributes is used, then imports it.

    Not importlib.util.LazyLoader: on Python 3.11 the import system reads `__spec__` of any module
    imported twice, and that read alone makes a LazyLoader module load.
    """

    def __init__(self, spec: importlib.machinery.ModuleSpec):
        super().__init__(spec.name)
        self.__spec__ = spec
        self.__file__ = spec.origin
        if spec.submodule_search_locations is not None:
            self.__path__ = list(spec.submodule_search_locations)

    def __getattr__(self, attr: str) -> Any:
        # Only called for what the stand-in lacks: on first use, the real module replaces it in
        # sys.modules and its names are copied here for those that imported the stand-in.
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        real = importlib.import_module(name)
        self.__dict__.update({k: v for k, v in real.__dict__.items() if k != "__spec__"})
        return getattr(real, attr)


def _defer_imports(names: Iterable[str] = DEFERRED_IMPORTS) -> None:
    for name in names:
        if name in sys.modules:
            continue
        try:
            spec = importlib.util.find_spec(name)
        except ImportError:        # its parent package is missing: GX will say so itself
            continue
        if spec is not None:
            sys.modules[name] = DeferredModule(spec)


# GX fingerprints every batch it is given (an md5 over pandas' hash of every cell, twice per
# validate): pure metadata, and on text batches it cost more than the checks themselves.
SKIP_BATCH_FINGERPRINTS = True


def import_gx() -> tuple[Any, Any, Any]:
    """(great_expectations, its expectations module, an ephemeral context): analytics off, no
    progress bars (they would garble the stage log)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    if "great_expectations" not in sys.modules:
        _defer_imports()
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.execution_engine import pandas_execution_engine

    if SKIP_BATCH_FINGERPRINTS:
        pandas_execution_engine.HASH_THRESHOLD = 0
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return gx, gxe, ctx
