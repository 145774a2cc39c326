"""The decision service: routes in ``app.py``, logic in the Decider, the durable decision log."""

from drivetrain.serve._decider import Decider, Decision
from drivetrain.serve._http import Limits, run
from drivetrain.serve._log import CompactionReport, DecisionLog, RecoveryReport, compact, read_segments, recover
from drivetrain.serve._process import ServiceProcess, free_port
from drivetrain.serve._service import Service, ServiceConfig, settle_heap
from drivetrain.serve.app import create_app

__all__ = ["CompactionReport", "Decider", "Decision", "DecisionLog", "Limits", "RecoveryReport", "Service", "ServiceConfig",
           "ServiceProcess", "compact", "create_app", "free_port", "read_segments", "recover", "run", "settle_heap"]
