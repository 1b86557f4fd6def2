"""Running a job of :mod:`benchmarks.jobs` in a child interpreter and reading back its result.

``python -m benchmarks _job NAME ARGS`` runs one job and prints its result with :func:`emit`;
:func:`run_job` starts that child and parses the line. Jobs are looked up in
:mod:`benchmarks.registry`, so job modules (which may run others, as ``python -m benchmarks.act``
does) can import this one without a cycle; an in-process run (:data:`INPROCESS`) needs the job
modules imported first (:mod:`benchmarks.run` imports :mod:`benchmarks.jobs`, which imports them all).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.registry import JOBS


class JobFailed(RuntimeError):
    pass


# Run jobs in this interpreter instead of a child (the smoke run: seconds, not isolation).
INPROCESS = False


def run_job(name: str, args: dict, *, timeout: float = 900, python: str | None = None,
            env: dict | None = None) -> dict:
    """Run the job ``name`` of :mod:`benchmarks.jobs` in a fresh interpreter; return its JSON.

    The child prints one JSON line prefixed with ``@@result ``; everything else it prints goes
    to this process's stderr. ``python`` runs the job under another interpreter (one with
    WeightWatcher installed, say).
    """
    if INPROCESS and python is None:
        return json.loads(json.dumps(JOBS[name](json.loads(json.dumps(args)))))
    cmd = [python or sys.executable, "-m", "benchmarks", "_job", name, json.dumps(args)]
    root = Path(__file__).resolve().parent.parent
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), child_env.get("PYTHONPATH")]))
    child_env.update(env or {})
    try:
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout, env=child_env)
    except subprocess.TimeoutExpired as err:
        raise JobFailed(f"{name}: timed out after {timeout:.0f} s") from err
    if proc.stderr:
        sys.stderr.write(proc.stderr[-4000:] if proc.returncode else "")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("@@result "):
            return json.loads(line[len("@@result "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    raise JobFailed(f"{name}: exited {proc.returncode} without a result: " + " | ".join(tail))


def emit(result: dict) -> None:
    """Print a job's result for :func:`run_job` (the last line of the child's stdout)."""
    sys.stdout.write("@@result " + json.dumps(result) + "\n")
    sys.stdout.flush()
