"""params.yaml: the pipeline's knobs, and the runtime settings that no output depends on."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stages.core.errors import StageError


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


def param(params: dict[str, Any], key: str) -> Any:
    """The value at a dotted key ("filter.min_score"); a missing key is one clear line."""
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise StageError(f"params.yaml: missing key {key}")
        node = node[part]
    return node


def whole_number(value: Any, key: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """A params.yaml value that must be a whole number (in [minimum, maximum]), or one clear line."""
    if (isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum)
            or (maximum is not None and value > maximum)):
        allowed = "a whole number" + (f" >= {minimum}" if minimum is not None else "")
        allowed += (" and" if minimum is not None else "") + f" <= {maximum}" if maximum is not None else ""
        raise StageError(f"params.yaml: {key} must be {allowed}, got {value!r}")
    return value


EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Runtime:
    """How a stage runs, never what it produces (params.yaml `runtime:`, which no stage lists in
    dvc.yaml: changing it reruns nothing). Outputs are byte-identical for any of these values."""
    workers: int = 2              # processes of the process-pool executor (1: in this process)
    batch_rows: int = 20000       # rows per streamed batch where a stage reads in batches
    executor: str = "local"       # local: this machine (in-process or the process pool) | ray: a Ray cluster
    ray_address: str | None = None   # executor ray: the cluster ("auto", "HOST:PORT"); none: RAY_ADDRESS, else
                                     # a Ray started on this machine for the stage (runtime.workers CPUs)
    gx_preload: bool = True       # validate in the GX preloader (core/gx_preload.py) when it answers

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "Runtime":
        r = params.get("runtime") or {}
        unknown = sorted(set(r) - set(cls.__dataclass_fields__))
        if unknown:
            raise StageError(f"params.yaml: unknown runtime settings {unknown}; known: "
                             f"{sorted(cls.__dataclass_fields__)}")
        rt = cls(**r)
        whole_number(rt.workers, "runtime.workers", 1)
        whole_number(rt.batch_rows, "runtime.batch_rows", 1)
        if rt.executor not in EXECUTORS:
            raise StageError(f"params.yaml: runtime.executor must be one of {list(EXECUTORS)}, got {rt.executor!r}")
        if rt.ray_address is not None and (not isinstance(rt.ray_address, str) or not rt.ray_address.strip()):
            raise StageError(f"params.yaml: runtime.ray_address must be a Ray address such as 'auto' or "
                             f"'10.0.0.5:6379' (or absent), got {rt.ray_address!r}")
        return rt
