"""Progress for people on stderr, so stdout carries only the rows a command prints.

``catdog classify DIR --format csv > out.csv`` typed in a terminal shows its bar in the
terminal and leaves a file that starts with the CSV header. Rich's default console is
stdout; every bar and message here is built on :func:`stderr_console` instead.
"""

from __future__ import annotations

from collections import Counter

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text


def stderr_console() -> Console:
    """A console on stderr (colour and live bars only when stderr is a terminal)."""
    return Console(stderr=True)


class RateColumn(ProgressColumn):
    """Items per second over Rich's recent window, blank until there is one."""

    def render(self, task: Task) -> Text:
        """``12.3 img/s``, or nothing before the first two updates."""
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:.1f} img/s", style="progress.data.speed")


def labeling_progress(console: Console) -> Progress:
    """A bar with what is happening, count, rate and time left; off when not a terminal.

    ``transient``: the bar leaves the terminal when done, so the one-line summary that
    follows is what stays.
    """
    return Progress(
        SpinnerColumn(),
        # Descriptions are ours, never file names: markup in them stays ours.
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


def not_registered_text(reasons: Counter[str]) -> str:
    """``3 not registered (not an image type: 2, dangling link: 1)``, most frequent first."""
    total = sum(reasons.values())
    if not total:
        return "0 not registered"
    parts = ", ".join(f"{reason}: {n}" for reason, n in reasons.most_common())
    return f"{total} not registered ({parts})"
