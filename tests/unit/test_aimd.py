"""The adaptive window of requests in flight (dnd.chat.aimd) and the per-minute budgets
(dnd.chat.budget), fed outcomes and a fake clock; every expected value is worked by hand."""

from __future__ import annotations

import pytest

from dnd.chat.aimd import AIMD
from dnd.chat.budget import RequestBudget


def test_window_grows_by_one_per_answer_until_the_first_overload_then_by_a_fiftieth():
    aimd = AIMD(ceiling=128, start=4)
    assert aimd.limit == 4 and aimd.slow_start
    for _ in range(3):
        aimd.success(window_full=True)
    assert aimd.window == 7.0 and aimd.limit == 7
    # The first 429 halves the window (slow start may have overshot by up to 2x): 7 * 0.5 = 3.5.
    assert aimd.overload(started_epoch=0) is True
    assert aimd.window == 3.5 and aimd.limit == 3 and not aimd.slow_start and aimd.epoch == 1
    # Then +1/50 per answer: 25 answers add 0.5, so 3.5 -> 4.0.
    for _ in range(25):
        aimd.success(window_full=True)
    assert aimd.window == pytest.approx(4.0) and aimd.limit == 4


def test_later_overloads_shrink_by_a_fifth_once_per_epoch():
    aimd = AIMD(ceiling=128, start=10)
    aimd.overload(started_epoch=0)  # 10 -> 5, epoch 1
    # A 429 for a request that started before that decrease reports the same congestion.
    assert aimd.overload(started_epoch=0) is False and aimd.window == 5.0
    assert aimd.overload(started_epoch=1) is True
    assert aimd.window == pytest.approx(4.0) and aimd.epoch == 2  # 5 * 0.8


def test_an_unused_window_does_not_grow():
    aimd = AIMD(ceiling=128, start=4)
    for _ in range(100):
        aimd.success(window_full=False)
    assert aimd.window == 4.0


def test_floor_and_ceiling():
    aimd = AIMD(ceiling=5, start=10)
    assert aimd.limit == 5  # the start never exceeds the ceiling
    for _ in range(20):
        aimd.success(window_full=True)
    assert aimd.window == 5.0
    for epoch in range(10):  # 5 -> 2.5 -> 2 -> 1.6 -> 1.28 -> 1.024 -> 1 (floor) ...
        aimd.overload(started_epoch=epoch)
    assert aimd.window == 1.0 and aimd.limit == 1


def test_requests_per_minute_space_the_starts_evenly():
    budget = RequestBudget(requests_per_minute=120)  # one start per 0.5 s
    assert budget.wait_s(10.0) == 0.0
    budget.started(10.0)
    assert budget.wait_s(10.2) == pytest.approx(0.3)
    assert budget.wait_s(10.5) == 0.0
    budget.started(10.5)
    budget.started(11.0)  # 11.0 + 0.5
    assert budget.wait_s(11.0) == pytest.approx(0.5)
    # Idle time is not banked: after a pause the next start is again one gap after the last.
    budget.started(20.0)
    assert budget.wait_s(20.0) == pytest.approx(0.5)


def test_tokens_per_minute_push_the_next_start_back_by_the_tokens_used():
    budget = RequestBudget(tokens_per_minute=6000)  # 100 tokens a second
    budget.started(0.0)
    assert budget.wait_s(0.0) == 0.0  # tokens are known only once the answer is back
    budget.used_tokens(1.0, 250)
    assert budget.wait_s(1.0) == pytest.approx(2.5)
    budget.used_tokens(1.5, 50)  # queued after the first: 1.0 + 2.5 + 0.5
    assert budget.wait_s(1.5) == pytest.approx(2.5)
    assert RequestBudget().wait_s(0.0) == 0.0
