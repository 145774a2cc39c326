"""The decision service: routes in ``app.py``, logic in the Decider, the durable decision log.

Names load on first use: `drivetrain compact` (and the service's own compactor process) needs only the
decision log and the store, so it does not import the models (LightGBM, scikit-learn, SciPy, numba),
which took four fifths of its start-up.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from drivetrain.serve._decider import Decider, Decision, shadow_row
    from drivetrain.serve._http import Limits, run
    from drivetrain.serve._log import CompactionReport, DecisionLog, RecoveryReport, compact, read_segments, recover
    from drivetrain.serve._process import DecisionLoad, ServiceProcess, free_port, http_client
    from drivetrain.serve._service import Service, ServiceConfig, settle_heap
    from drivetrain.serve.app import create_app

_HOMES = {
    "Decider": "_decider", "Decision": "_decider", "shadow_row": "_decider",
    "Limits": "_http", "run": "_http",
    "CompactionReport": "_log", "DecisionLog": "_log", "RecoveryReport": "_log", "compact": "_log", "read_segments": "_log",
    "recover": "_log",
    "DecisionLoad": "_process", "ServiceProcess": "_process", "free_port": "_process", "http_client": "_process",
    "Service": "_service", "ServiceConfig": "_service", "settle_heap": "_service",
    "create_app": "app",
}

__all__ = ["CompactionReport", "Decider", "Decision", "DecisionLoad", "DecisionLog", "Limits", "RecoveryReport", "Service", "ServiceConfig",
           "ServiceProcess", "compact", "create_app", "free_port", "http_client", "read_segments", "recover", "run",
           "settle_heap", "shadow_row"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'drivetrain.serve' has no attribute {name!r}")
    value = getattr(import_module(f"drivetrain.serve.{home}"), name)
    globals()[name] = value  # the next use is a plain attribute
    return value
