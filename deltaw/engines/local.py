"""The local engine: plain Python, in this process, in order."""

from __future__ import annotations

from collections.abc import Callable, Sequence


class LocalEngine:
    """Runs each call in this process, one after another (the default)."""

    name = "local"
    parallelism = 1  # pieces worth splitting the work into

    def map(self, fn: Callable, calls: Sequence[tuple], *, gpu: bool = False,
            progress: Callable[[int, int], None] | None = None) -> list:
        """``[fn(*args) for args in calls]``; ``progress(done, total)`` after each.

        ``gpu`` is a hint for engines that place tasks; here ``fn``'s own ``device`` argument
        decides where the math runs.
        """
        results = []
        for args in calls:
            results.append(fn(*args))
            if progress is not None:
                progress(len(results), len(calls))
        return results

    def close(self) -> None:
        """Nothing to release."""
