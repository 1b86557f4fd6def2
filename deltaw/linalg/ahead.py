"""Results computed on worker threads ahead of the caller, handed on in input order.

:func:`computed_ahead` runs one computation per item on a pool of threads, each item on one
thread and torch on one thread there (so an item's numbers are the same bits whatever the
number of threads), and yields the results in the order of the items. The threads take the next
item as soon as they are free and keep working while the caller holds a result, up to a budget
of work not yet handed on; each result is let go of as it is handed on. Against cutting the
items into stretches (all threads done before any result of a stretch is handed on, the next
stretch started when the caller asks for it) this removes a wait at every stretch and keeps
fewer results alive at once: the allocator then hands a result's memory straight to the next
one instead of returning it to the system and faulting it in again (the 224 LoRA modules of a
7B-shaped r = 64 adapter with their vectors, two threads, after reading the file as the
benchmark does: 11–19 thousand page faults a run against 41–54 thousand, 0.43–0.54 s against
0.47–0.62 s in 5 interleaved children, a median pair ratio of 1.12×). A stream still open when
the interpreter exits is stopped first: its threads finish the items they are on and start no
other.

What the threads need of the process, and what the caller sees
---------------------------------------------------------------
Autograd and torch's thread count are per thread: the workers set their own, the caller's stay
as they are. Two settings are process-wide. numpy's and scipy's BLAS runs on one thread for the
stream's life, from its first result to its last or to its closing (so that OpenBLAS does not
spin a thread per core beside torch's when the workers form the float64 Grams of
ill-conditioned LoRA factors); the caller's own BLAS calls meanwhile run on one thread unless
it sets otherwise, and its count is back when the stream ends or is abandoned, or with several
streams open, when the last of them does, in whichever order they end
(:func:`~deltaw.linalg.resources.numpy_blas_one_thread_held`; deltaw's routes set theirs around
each call anyway). The float32 matmul precision must be "highest" for exact
results: where the caller's is (torch's default), nothing is changed and the workers go on
while the caller holds a result; where it is not, the stream sets "highest" while it runs
itself and gives the caller its own back with each result, and the workers finish the items
they are on before that and start no other until the caller asks for the next result. A caller
that leaves another precision set when it asks for the next result has every result computed
while it held control recomputed. Not detected: a caller that sets another precision and sets
"highest" back while it holds one result (the items computed meanwhile may have had some
products at that precision; on CPUs without bf16 matrix units, where torch ignores the setting
for float32 products, this cannot change a number).
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import torch

from deltaw.linalg import resources

Item = TypeVar("Item")
Result = TypeVar("Result")

EXACT_PRECISION = "highest"


def computed_ahead(items: Sequence[Item], compute: Callable[[Item, dict], Result], *, threads: int,
                   budget: int, size: Callable[[Item], int]) -> Iterator[tuple[Item, Result]]:
    """``(item, compute(item, scratch))`` for every item, in order, computed on ``threads`` threads.

    Parameters
    ----------
    items : sequence
    compute : callable
        ``compute(item, scratch)``, run on a worker thread with torch on one thread and autograd
        off; ``scratch`` is a dict owned by that thread (for buffers it reuses from item to item).
        An exception is raised to the caller when the stream reaches that item.
    threads : int ≥ 1
    budget : int
        At most this much work (in ``size`` units) is started and not yet handed on at once
        (at least the next item to hand on, whatever its size): what bounds the memory of the
        results kept ahead of the caller.
    size : callable
        ``size(item)``, ≥ 0.

    Yields
    ------
    (item, result) in the order of ``items``.
    """
    sizes = [size(item) for item in items]  # here, so that a failing size() is the caller's error
    state = _State(sizes, budget)
    workers = state.workers

    def work(scratch: dict) -> None:
        resources.become_one_thread_worker()
        with torch.no_grad():
            while (i := state.take()) is not None:
                try:
                    outcome = (True, compute(items[i], scratch))
                except BaseException as err:  # handed to the caller with the item
                    outcome = (False, err)
                state.done(i, outcome)

    # numpy's BLAS on one thread for the stream's life (the workers' float64 Grams): set and reset
    # at every result it cost 0.07 ms a result (224 7B-shaped modules: 0.43 s against 0.41 s)
    try:
        with resources.numpy_blas_one_thread_held():
            for _ in range(threads):
                # daemon threads: a stream left suspended when the interpreter exits must not keep
                # it waiting for threads that wait for the stream (_stop_at_exit stops them first)
                workers.append(threading.Thread(target=work, args=({},), daemon=True, name="deltaw-ahead"))
                workers[-1].start()
            _OPEN.add(state)
            for i in range(len(items)):
                exact = torch.get_float32_matmul_precision() == EXACT_PRECISION  # the caller's, now
                with contextlib.nullcontext() if exact else resources.highest_precision():
                    state.resume(exact=exact)
                    ok, value = state.wait_for(i)
                    state.hand_on(i)
                    # The workers go on while the caller holds the result only if its precision is
                    # exact; leaving this block gives the caller its own back.
                    state.pause(caller_exact=exact)
                if not ok:
                    raise value
                yield items[i], value
                del value
    finally:
        state.stop()


class _State:
    """What the workers and the stream share, under one condition variable."""

    def __init__(self, sizes: list[int], budget: int):
        self.cv = threading.Condition()
        self.sizes, self.budget = sizes, budget
        self.count = len(sizes)
        self.next = 0  # the next item to start
        self.handed = 0  # items handed on so far
        self.ahead = 0  # size of the items started and not yet handed on
        self.results: dict[int, tuple[bool, object]] = {}
        self.running = 0  # items being computed
        self.open = False  # whether a worker may start an item: not before the stream's settings hold
        self.worked_while_caller_held = False
        self.stopped = False
        self.workers: list[threading.Thread] = []

    # --- the workers' side

    def take(self) -> int | None:
        """The index of the next item to compute, once the stream lets a worker start it; None
        when there are no more or the stream has stopped."""
        with self.cv:
            while not self.stopped and self.next < self.count and (
                    not self.open or (self.next > self.handed and self.ahead + self.sizes[self.next] > self.budget)):
                self.cv.wait()
            if self.stopped or self.next >= self.count:
                return None
            i = self.next
            self.next += 1
            self.ahead += self.sizes[i]
            self.running += 1
            return i

    def done(self, i: int, outcome: tuple[bool, object]) -> None:
        with self.cv:
            self.running -= 1
            self.results[i] = outcome
            self.cv.notify_all()

    # --- the stream's side

    def resume(self, *, exact: bool) -> None:
        """Back from the caller. Where the workers went on while the caller held a result and
        the caller's precision is no longer exact, what they computed meanwhile is thrown away
        and computed again (from the next item to hand on)."""
        with self.cv:
            if self.worked_while_caller_held and not exact:
                while self.running:
                    self.cv.wait()
                self.results.clear()
                self.next, self.ahead = self.handed, 0
            self.worked_while_caller_held = False
            self.open = True
            self.cv.notify_all()

    def wait_for(self, i: int) -> tuple[bool, object]:
        with self.cv:
            while i not in self.results:
                self.cv.wait()
            return self.results.pop(i)

    def hand_on(self, i: int) -> None:
        with self.cv:
            self.handed = i + 1
            self.ahead -= self.sizes[i]
            self.cv.notify_all()

    def pause(self, *, caller_exact: bool) -> None:
        """Before handing a result on: the workers go on if the caller's settings are exact;
        otherwise they finish the items they are on, and start no other until :meth:`resume`."""
        with self.cv:
            if caller_exact:
                self.worked_while_caller_held = True
                return
            self.open = False
            while self.running:
                self.cv.wait()

    def stop(self) -> None:
        """No more items; returns once the workers are done with the ones they were on."""
        with self.cv:
            self.stopped = True
            self.cv.notify_all()
        for worker in self.workers:
            worker.join()


#: The streams whose workers may be running: :func:`_stop_at_exit` stops them before the
#: interpreter shuts down, so that no worker is left in the middle of an item then.
_OPEN: weakref.WeakSet[_State] = weakref.WeakSet()


@atexit.register
def _stop_at_exit() -> None:
    for state in list(_OPEN):
        state.stop()
