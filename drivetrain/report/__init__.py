"""The report: one self-contained HTML file that shows how the decision policy is doing as of a time.

::

    from drivetrain.report import write_report
    path = write_report(store, as_of=as_of, out="report.html")  # -> Path of the file written

``store`` is any :class:`drivetrain.data.Store` (its spec names objective, guardrails, budgets and
the latency budget); ``as_of`` a timezone-aware time (only rows received by then count, as in
:func:`drivetrain.evaluate.evaluate`). Optional: ``drift_days`` (1.0; the drift window, the days before
the last decision received by ``as_of``), ``policy_version`` (whose baselines drift compares with;
default: the version with baselines that made most decisions in the window), ``confidence`` (0.95).

The page holds a header (spec, as-of time, policy versions seen, mature and immature decisions) and
Plotly figures: the north star by day with its interval, each guardrail by cohort against its bound,
drift (PSI) per column, decision latency by day against the budget, each budget's use against its
limit, and the timeline of the alerts in the store. plotly.js is inlined and a Content-Security-Policy
forbids loading anything, so the file opens offline; a figure with no data says why in its place. The
same store and as-of time give the same file, byte for byte. Plotly is imported here only: the core
packages draw nothing.
"""

from drivetrain.report._browser import RenderCheck, check_dom, render_dom
from drivetrain.report._report import Panel, figure_data, write_report

__all__ = ["Panel", "RenderCheck", "check_dom", "figure_data", "render_dom", "write_report"]
