"""deltaw.linalg.ahead: results computed on worker threads ahead of the caller, in input order.

The stream's promises, each checked here: results in input order whatever the threads' timing;
no more work started ahead of the caller than the budget allows; an item's exception raised at
that item; no thread left behind when the stream ends, fails or is abandoned; the caller's own
float32 matmul precision whenever it holds a result, with every item computed at "highest" (the
workers pause while a caller holds a result at another precision, and what they computed while
a caller changed its precision is computed again); numpy's BLAS on one thread for the stream's
life, the caller's count back after it.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from deltaw.linalg.ahead import computed_ahead


class Spy:
    """A compute function that records, per item, how often it ran and at which precision."""

    def __init__(self, delay: float = 0.0, fail: int | None = None):
        self.delay, self.fail = delay, fail
        self.lock = threading.Lock()
        self.started: list[int] = []
        self.precisions: dict[int, list[str]] = {}
        self.threads: set[int] = set()

    def __call__(self, item: int, scratch: dict) -> tuple[int, str]:
        with self.lock:
            self.started.append(item)
            self.threads.add(threading.get_ident())
        seen = torch.get_float32_matmul_precision()
        time.sleep(self.delay)
        seen = seen if torch.get_float32_matmul_precision() == seen else "changed"
        assert torch.get_num_threads() == 1 and not torch.is_grad_enabled()
        scratch["calls"] = scratch.get("calls", 0) + 1  # the thread's own scratch, kept across items
        if item == self.fail:
            raise ValueError(f"item {item} cannot be computed")
        with self.lock:
            self.precisions.setdefault(item, []).append(seen)
        return item * item, seen


def stream(spy: Spy, count: int = 12, *, threads: int = 2, budget: int = 3):
    return computed_ahead(list(range(count)), spy, threads=threads, budget=budget, size=lambda item: 1)


def test_results_come_in_input_order_from_every_thread():
    spy = Spy(delay=0.002)
    got = list(stream(spy, 20, threads=3, budget=6))
    assert [item for item, _ in got] == list(range(20))
    assert [value for _, (value, _) in got] == [i * i for i in range(20)]
    assert len(spy.threads) > 1 and sorted(spy.started) == list(range(20))


@pytest.mark.parametrize("budget", [1, 3])
def test_no_more_work_is_started_ahead_of_the_caller_than_the_budget(budget):
    spy = Spy()
    for item, _ in stream(spy, 10, budget=budget):
        time.sleep(0.02)  # a slow caller: the workers run ahead as far as they may
        with spy.lock:
            ahead = len(spy.started) - (item + 1)  # started and not yet handed on
        assert 0 <= ahead <= budget


def test_an_items_exception_reaches_the_caller_at_that_item_and_no_thread_is_left():
    before = threading.active_count()
    spy = Spy(fail=4)
    got = []
    with pytest.raises(ValueError, match="item 4 cannot be computed"):
        for item, _ in stream(spy, 10):
            got.append(item)
    assert got == [0, 1, 2, 3]
    assert threading.active_count() == before


def test_an_abandoned_stream_stops_its_threads():
    before = threading.active_count()
    s = stream(Spy(delay=0.005), 50)
    assert next(s)[0] == 0 and next(s)[0] == 1
    s.close()
    assert threading.active_count() == before


def test_a_caller_at_another_precision_keeps_it_and_the_workers_pause_while_it_holds_a_result():
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        spy = Spy(delay=0.002)
        for item, _ in stream(spy, 8):
            assert torch.get_float32_matmul_precision() == "medium"  # the caller's own
            with spy.lock:
                started = len(spy.started)
            time.sleep(0.02)
            with spy.lock:
                assert len(spy.started) == started  # nothing started while the caller held the result
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(previous)
    assert all(seen == ["highest"] for seen in spy.precisions.values())


def test_what_the_workers_computed_while_the_caller_changed_its_precision_is_computed_again():
    previous = torch.get_float32_matmul_precision()
    spy = Spy(delay=0.005)
    got = {}
    try:
        for item, (_, seen) in stream(spy, 10, budget=4):
            got[item] = seen
            if item == 2:
                torch.set_float32_matmul_precision("medium")  # left so when asking for the next result
                time.sleep(0.03)  # the workers meanwhile compute items 3… at "medium"
    finally:
        torch.set_float32_matmul_precision(previous)
    assert got == {i: "highest" for i in range(10)}  # every result handed on was computed exactly
    recomputed = [i for i, seen in spy.precisions.items() if len(seen) > 1]
    assert recomputed and all(spy.precisions[i][-1] == "highest" for i in recomputed)


def test_numpy_blas_runs_on_one_thread_for_the_streams_life_and_gets_the_callers_count_back():
    import threadpoolctl

    def blas_threads() -> set[int]:
        return {i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}

    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        s = stream(Spy(), 4)
        next(s)
        assert blas_threads() == {1}
        list(s)
        assert blas_threads() == {2}


def test_a_stream_left_suspended_does_not_keep_the_interpreter_from_exiting(tmp_path):
    # ... and the items its workers are on when it exits are finished first, not cut off
    import subprocess
    import sys

    log = tmp_path / "log"
    code = ("import time\n"
            "from deltaw.linalg.ahead import computed_ahead\n"
            f"log = open({str(log)!r}, 'a', buffering=1)\n"
            "def compute(item, scratch):\n"
            "    log.write(f'start {item}\\n'); time.sleep(0.2); log.write(f'end {item}\\n'); return item\n"
            "stream = computed_ahead(list(range(100)), compute, threads=2, budget=4, size=lambda item: 1)\n"
            "assert next(stream) == (0, 0)\n"  # the workers go on ahead while the caller exits
            "print('done')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr[-2000:]
    words = log.read_text().split()
    events = list(zip(words[::2], words[1::2]))  # ("start" or "end", item)
    started = sorted(item for event, item in events if event == "start")
    assert len(started) > 1 and started == sorted(item for event, item in events if event == "end")


def test_streams_read_side_by_side_give_the_callers_blas_count_back_whichever_ends_first():
    # zip() over two streams leaves the second suspended when the first ends; it is dropped later
    import threadpoolctl

    def blas_threads() -> set[int]:
        return {i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}

    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        first, second = stream(Spy(), 3), stream(Spy(), 6)
        assert len(list(zip(first, second))) == 3
        assert blas_threads() == {1}  # the second is still open
        second.close()
        assert blas_threads() == {2}
