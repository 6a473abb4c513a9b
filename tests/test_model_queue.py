"""The explorer's model queue: one holder at a time, waiters served in arrival order and told how many are ahead,
re-entrant for its holder, a timeout or a cancelled waiter leaves the queue as it was."""
import threading
import time

import pytest

from coa_lora.model_queue import ModelQueue


def test_waiters_are_served_in_arrival_order_and_told_who_is_ahead():
    q = ModelQueue(poll=0.01)
    order, seen = [], {}
    q.acquire()
    threads = []
    for i in range(3):
        def work(i=i):
            q.acquire(on_wait=lambda ahead: seen.setdefault(i, set()).add(ahead))
            order.append(i)
            time.sleep(0.02)
            q.release()
        t = threading.Thread(target=work)
        t.start()
        threads.append(t)
        while q.waiting < i + 2:  # the holder and every earlier waiter are queued before the next arrives
            time.sleep(0.001)
    assert q.waiting == 4
    q.release()
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2]
    assert max(seen[0]) == 1 and max(seen[2]) == 3  # the holder plus the waiters in front of it
    assert min(seen[2]) >= 1 and q.waiting == 0


def test_reentrant_for_the_holder_and_release_by_others_refused():
    q = ModelQueue()
    with q:
        with q:
            assert q.waiting == 1
        other = threading.Thread(target=lambda: pytest.raises(RuntimeError, q.release))
        other.start()
        other.join()
    assert q.waiting == 0
    with pytest.raises(RuntimeError, match="does not hold"):
        q.release()


def test_a_timeout_or_a_failing_waiter_leaves_the_queue_as_it_was():
    q = ModelQueue(poll=0.01)
    q.acquire()
    got = []
    t = threading.Thread(target=lambda: got.append(q.acquire(timeout=0.05)))
    t.start()
    t.join(5)
    assert got == [False] and q.waiting == 1

    def cancelled(ahead):
        raise KeyboardInterrupt

    errors = []

    def waiter():
        try:
            q.acquire(on_wait=cancelled)
        except KeyboardInterrupt:
            errors.append("cancelled")

    t = threading.Thread(target=waiter)
    t.start()
    t.join(5)
    assert errors == ["cancelled"] and q.waiting == 1
    q.release()
    assert q.acquire(timeout=0.1)  # nobody stale in front
    q.release()
