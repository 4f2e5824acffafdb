"""The queue's chart of the last 24 hours: jobs finished per hour (complete and failed) and their processing time.

Drawn on the server as SVG (partials/_chart.html): no script, so the page's CSP stays as strict as it is, and the
same markup travels with the totals over SSE and polling. This module only counts and places; the template draws.
"""
from dataclasses import dataclass
from datetime import timedelta

from core.clock import utcnow
from core.jobs.model import Job
from core.jobs.states import Status

HOURS = 24
WIDTH, HEIGHT = 720, 170  # the SVG's user units; CSS scales it to the page
LEFT, RIGHT, TOP, BOTTOM = 34, 46, 10, 24  # room for the axes' labels
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
SLOT = PLOT_W / HOURS


@dataclass
class Hour:
    start: object  # naive UTC datetime of the hour's start
    complete: int = 0
    failed: int = 0
    seconds: float = 0.0  # processing time summed over the hour's finished jobs

    @property
    def finished(self):
        return self.complete + self.failed

    @property
    def end(self):
        return self.start + timedelta(hours=1)

    @property
    def average_seconds(self):
        return self.seconds / self.finished if self.finished else None


def last_day(owner, now=None):
    """Counts and geometry for the chart of the owner's (None: everyone's) jobs finished in the last HOURS hours,
    one bar per hour ending with the current one."""
    now = now or utcnow()
    first = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=HOURS - 1)
    hours = [Hour(first + timedelta(hours=n)) for n in range(HOURS)]
    for status, started, completed in Job.finished_since(owner, first):
        hour = hours[min(int((completed - first).total_seconds() // 3600), HOURS - 1)]
        if status == Status.COMPLETE:
            hour.complete += 1
        else:
            hour.failed += 1
        if started is not None:
            hour.seconds += max((completed - started).total_seconds(), 0.0)
    return layout(hours)


def _nice_ceiling(value):
    """The smallest of 1, 2, 5 × 10^n at least value (an axis' top)."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def layout(hours):
    """Where each bar and the processing-time line go, in SVG units, with the axes' scales."""
    top_count = _nice_ceiling(max([hour.finished for hour in hours] + [1]))
    averages = [hour.average_seconds for hour in hours if hour.average_seconds is not None]
    top_seconds = _nice_ceiling(max(averages + [1]))
    bars, points = [], []
    for n, hour in enumerate(hours):
        x = LEFT + n * SLOT
        complete_h = PLOT_H * hour.complete / top_count
        failed_h = PLOT_H * hour.failed / top_count
        bars.append({"hour": hour, "x": round(x + SLOT * 0.15, 1), "width": round(SLOT * 0.7, 1),
                     "complete_y": round(TOP + PLOT_H - complete_h, 1), "complete_h": round(complete_h, 1),
                     "failed_y": round(TOP + PLOT_H - complete_h - failed_h, 1), "failed_h": round(failed_h, 1),
                     "label": hour.start.strftime("%H") if n % 3 == 0 else None, "label_x": round(x + SLOT / 2, 1)})
        if hour.average_seconds is not None:
            y = TOP + PLOT_H - PLOT_H * hour.average_seconds / top_seconds
            points.append((round(x + SLOT / 2, 1), round(y, 1)))
    finished = sum(hour.finished for hour in hours)
    failed = sum(hour.failed for hour in hours)
    seconds = sum(hour.seconds for hour in hours)
    return {"hours": hours, "bars": bars, "points": points, "line": " ".join(f"{x},{y}" for x, y in points), "top_count": top_count, "top_seconds": top_seconds,
            "finished": finished, "failed": failed, "average_seconds": seconds / finished if finished else None,
            "width": WIDTH, "height": HEIGHT, "left": LEFT, "right": WIDTH - RIGHT, "top": TOP,
            "bottom": TOP + PLOT_H}
