"""The adaptation loop: retrain on data conditions, gate a candidate, promote or roll back.

The wiring of fit, plan and off-line evaluation that the loop uses lives in :mod:`drivetrain.assembly`.
"""

from drivetrain.adapt._registry import ALIASES, STATUSES, EmbeddedRegistry, Event, Lineage, MemoryRegistry, Registry, VersionRecord

__all__ = [
    "ALIASES",
    "STATUSES",
    "EmbeddedRegistry",
    "Event",
    "Lineage",
    "MemoryRegistry",
    "Registry",
    "VersionRecord",
]
