"""The Ray engine: each call becomes a Ray task (https://docs.ray.io/en/latest/ray-core/tasks.html).

``ray`` is an optional dependency (``pip install "deltaw[ray]"``), imported only here. Without an
address a local Ray is started on this machine (and shut down by :meth:`RayEngine.close`); with
one (``ray://head:10001`` or ``auto``), tasks go to that cluster, whose workers must have deltaw
installed and see the checkpoint paths. Where the cluster has GPUs, tasks that can use one ask
for a whole GPU, so Ray places one such task per GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from deltaw.errors import DeltawError


def _import_ray():
    try:
        import ray
    except ImportError:
        raise DeltawError('--engine ray needs the package ray; install it with: pip install "deltaw[ray]"') from None
    return ray


class RayEngine:
    """Runs each call as a Ray task; results come back in call order.

    Parameters
    ----------
    address : str, optional
        The cluster to join (``ray.init(address=...)``); None starts a local Ray.
    num_cpus : int, optional
        CPUs of a locally started Ray (default: all of this machine's).
    object_store_memory : int, optional
        Bytes of a locally started Ray's object store.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None,
                 object_store_memory: int | None = None):
        self.ray = _import_ray()
        self._started = False
        if not self.ray.is_initialized():
            options = {"address": address, "include_dashboard": False, "log_to_driver": False}
            if address is None:
                options.update(num_cpus=num_cpus, object_store_memory=object_store_memory)
            try:
                self.ray.init(**options)
            except (ConnectionError, RuntimeError, ValueError) as err:
                where = f"the Ray cluster at {address}" if address else "a local Ray"
                raise DeltawError(f"cannot start {where} ({str(err).splitlines()[0]}); "
                                  "check --ray-address and that the cluster is up") from err
            self._started = True
        resources = self.ray.cluster_resources()
        self.gpus = int(resources.get("GPU", 0))
        # Pieces worth splitting the work into: a few per CPU, so that uneven tasks even out.
        self.parallelism = max(1, 2 * int(resources.get("CPU", 1)))

    def map(self, fn: Callable, calls: Sequence[tuple], *, gpu: bool = False,
            progress: Callable[[int, int], None] | None = None) -> list:
        """Submit ``fn(*args)`` for every call as a Ray task and gather the results in order.

        ``gpu``: the task can use a GPU; it asks for one when the cluster has any.
        """
        remote = self.ray.remote(num_gpus=1 if gpu and self.gpus else 0, max_retries=0)(fn)
        refs = [remote.remote(*args) for args in calls]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list = [None] * len(refs)
        pending = list(refs)
        try:
            while pending:
                ready, pending = self.ray.wait(pending, num_returns=1)
                for ref in ready:
                    results[index[ref]] = self._get(ref)
                if progress is not None:
                    progress(len(refs) - len(pending), len(refs))
        except BaseException:
            for ref in pending:
                self.ray.cancel(ref, force=True)
            raise
        return results

    def _get(self, ref):
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as err:
            # A DeltawError raised in a task arrives wrapped; the user gets its one line.
            cause = getattr(err, "cause", None)
            if isinstance(cause, DeltawError):
                raise DeltawError(str(cause)) from None
            raise

    def close(self) -> None:
        """Shut down the Ray this engine started (a joined cluster is left running)."""
        if self._started:
            self.ray.shutdown()
            self._started = False
