"""What robustcnn changes of ART is undone when its call ends, whichever thread ends last."""

from __future__ import annotations

import importlib
import math
import threading

from robustcnn.attacks.art import ART_PGD_MODULE, lazy_success_rate


def test_overlapping_lazy_success_rate_blocks_in_two_threads_restore_arts_function():
    """A enters, B enters, A leaves, B leaves: ART's compute_success is skipped while either block is open and
    is ART's own afterwards (saving 'the original' per block left the skip in place for good when B left)."""
    module = importlib.import_module(ART_PGD_MODULE)
    original = module.compute_success
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def first():
        with lazy_success_rate():
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def second():
        a_in.wait(5)
        with lazy_success_rate():
            b_in.set()
            a_out.wait(5)
            seen["inside"] = module.compute_success(None, None, None)  # still skipped: B's block is open

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert a_out.is_set() and b_in.is_set(), "the blocks did not overlap: the test proves nothing"
    assert math.isnan(seen["inside"])
    assert module.compute_success is original
