"""Where the independent pieces of a many-checkpoint run execute.

An engine maps a pure, module-level function over a list of argument tuples and returns the
results in order: :class:`~deltaw.engines.local.LocalEngine` in this process, one after another;
:class:`~deltaw.engines.ray.RayEngine` as Ray tasks on a local or remote cluster. The functions
are the same in both, so the results are too; deltaw schedules nothing itself.
"""

from __future__ import annotations

from deltaw.engines.local import LocalEngine
from deltaw.errors import DeltawError

ENGINES = ("local", "ray")


def get_engine(name: str = "local", *, address: str | None = None):
    """The engine called ``name``; ``address`` is the Ray cluster's (``ray`` only)."""
    if name == "local":
        if address is not None:
            raise DeltawError("--ray-address is for --engine ray; the local engine runs in this process")
        return LocalEngine()
    if name == "ray":
        from deltaw.engines.ray import RayEngine

        return RayEngine(address)
    raise DeltawError(f"unknown engine {name!r}; use one of {', '.join(ENGINES)}")


__all__ = ["ENGINES", "LocalEngine", "get_engine"]
