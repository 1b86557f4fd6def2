"""The job registry: ``JOBS`` maps a job's name to its function; ``@job`` adds one.

Kept apart from the job modules so that each of them (jobs.py, structured.py) imports only this
and :mod:`benchmarks.measure`, and :mod:`benchmarks.jobs` can import the others without a cycle.
"""

from __future__ import annotations

JOBS = {}


def job(fn):
    JOBS[fn.__name__] = fn
    return fn
