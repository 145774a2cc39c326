"""The adaptation loop: retrain on data conditions, gate a candidate, promote or roll back.

The wiring of fit, plan and off-line evaluation that the loop uses lives in :mod:`drivetrain.assembly`.
"""
