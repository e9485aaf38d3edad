"""Training progress: a rich bar per epoch, a log line after each, and a caller's hook."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

#: Called after each epoch with (epoch number from 1, total epochs, metrics of the epoch).
ProgressFn = Callable[[int, int, dict[str, float]], None]


class EpochProgress(keras.callbacks.Callback):
    """A rich progress bar per epoch, a log line after each, and the caller's hook."""

    def __init__(
        self,
        epochs: int,
        steps: int,
        first_epoch: int,
        hook: ProgressFn | None,
        console: Console | None,
    ) -> None:
        super().__init__()
        self.epochs, self.steps, self.first_epoch = epochs, steps, first_epoch
        self.hook, self.console = hook, console
        self.bar: Progress | None = None
        self.task: Any = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self.console is not None and self.console.is_terminal:
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self.bar.start()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.bar is not None:
            if self.task is not None:
                self.bar.remove_task(self.task)
            self.task = self.bar.add_task(
                f"epoch {self.first_epoch + epoch + 1}/{self.epochs}", total=self.steps
            )

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        metrics = {k: float(v) for k, v in (logs or {}).items()}
        number = self.first_epoch + epoch + 1
        if self.console is not None:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            self.console.print(f"epoch {number}/{self.epochs}  {shown}")
        if self.hook is not None:
            self.hook(number, self.epochs, metrics)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
            self.task = None
