"""`make browser-check`: build a report from a small twin run, render it in headless Chromium and fail
on console errors or on a figure that did not draw.

It then proves that the check can fail: a copy of the report with one figure's data removed and a
script that throws must be judged broken, or this script fails too. Exit code 0 only when the report
passes and the broken copy does not.

    python scripts/browser_check.py [--out browser-check] [--screenshot]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from drivetrain.loop import sample_run
from drivetrain.report import check_dom, render_dom, write_report


def _broken(page: str) -> str:
    """The report with its first figure's data gone (that figure cannot draw) and an error thrown."""
    start = page.index('<script type="application/json" id="fig-')
    end = page.index("</script>", start) + len("</script>")
    return page[:start] + page[end:].replace("</body>", "<script>throw new Error('deliberately broken')</script></body>", 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("browser-check"), help="directory for the store, the reports and the DOMs")
    parser.add_argument("--screenshot", action="store_true", help="also save a full-page PNG of the report")
    args = parser.parse_args()
    out: Path = args.out
    t0 = time.perf_counter()
    shutil.rmtree(out / "run", ignore_errors=True)  # a fresh store each time
    store, as_of = sample_run(out / "run", users=1500, days=4, seed=21)
    report = write_report(store, as_of=as_of, out=out / "report.html")
    print(f"built {report} ({report.stat().st_size / 1e6:.1f} MB) from a 4-day twin run in {time.perf_counter() - t0:.0f}s")

    dom = render_dom(report, screenshot=out / "report.png" if args.screenshot else None)
    (out / "report.dom.html").write_text(dom, encoding="utf-8")
    good = check_dom(dom)
    print(f"report: {good.summary()}")
    for figure in good.figures:
        print(f"  {figure}: {'drawn' if figure in good.drawn else 'NOT DRAWN'}")

    broken_page = out / "broken.html"
    broken_page.write_text(_broken(report.read_text(encoding="utf-8")), encoding="utf-8")
    broken = check_dom(render_dom(broken_page))
    print(f"deliberately broken copy: {broken.summary()}")
    if broken.ok:
        print("FAIL: the check passed a broken report, so it cannot be trusted")
        return 1
    if not good.ok:
        print("FAIL: the report did not render cleanly")
        return 1
    print(f"browser check passed in {time.perf_counter() - t0:.0f}s" + (f"; screenshot {out / 'report.png'}" if args.screenshot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
