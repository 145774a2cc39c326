"""The report's axes and titles read well whatever the span: six months of days, a single alert."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import plotly.graph_objects as go

from drivetrain.report import figure_data
from drivetrain.report._report import DAILY_TICKS, _by_day
from tests.report.conftest import Sample


def test_a_long_run_gets_about_a_dozen_day_ticks_a_short_one_every_day() -> None:
    long, short = go.Figure(), go.Figure()
    _by_day(long, 180)
    _by_day(short, DAILY_TICKS)
    assert long.layout.xaxis.dtick is None and long.layout.xaxis.nticks == 12
    assert short.layout.xaxis.dtick == 86_400_000


def test_the_alert_axis_spans_days_not_milliseconds(sample: Sample) -> None:
    axis = figure_data(sample.page)["alerts"]["layout"]["xaxis"]
    low, high = (datetime.fromisoformat(t) for t in axis["range"])
    assert axis["type"] == "date" and high - low >= timedelta(days=2)  # at least a day either side of the alerts


def test_titles_show_the_time_to_the_second(sample: Sample) -> None:
    title = re.search(r"<title>(.*?)</title>", sample.page)
    assert title is not None and re.search(r"as of \d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC$", title.group(1)), title.group(1)
    assert not re.search(r"\d{2}:\d{2}:\d{2}\.\d+", sample.page.split("<body", 1)[1].split("<script", 1)[0])
