"""The side-effect policy on a fake clock: no thread, no sleep, no server."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heartbeat_sync.effects.policy import (
    DEFAULT_RETRY_DELAY,
    MIN_RETRY_DELAY,
    NOTIFY_PAUSE_SECONDS,
    Notify,
    Refusal,
    SideEffectPolicy,
    Wakeup,
)

RETRY = frozenset({429, 502, 503, 504})
BUSY = Refusal(status=503, error="agent busy", retry_after=5.0)
NO_AGENT = Refusal(status=503, error="workspace has no URL")
NOTIFY_OFF = Refusal(status=403, error="talk_to_user_disabled")


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(clock: Clock, **kwargs: float) -> SideEffectPolicy[object]:
    options: dict[str, float] = {"cooldown": 60.0, "retry_deadline": 300.0, **kwargs}
    return SideEffectPolicy(
        retry_statuses=RETRY,
        cooldown=options["cooldown"],
        retry_deadline=options["retry_deadline"],
        max_notify_backlog=int(options.get("max_notify_backlog", 1000)),
        max_listed=int(options.get("max_listed", 50)),
        clock=clock,
    )


def results(n: int) -> list[object]:
    return [object() for _ in range(n)]


def take_wakeup(policy: SideEffectPolicy[object]) -> Wakeup[object]:
    action = policy.next()
    assert isinstance(action, Wakeup), action
    return action


def drain_notifications(policy: SideEffectPolicy[object]) -> list[object]:
    """Hand out and accept every notification due now, as the worker would."""
    sent: list[object] = []
    while True:
        action = policy.next()
        if not isinstance(action, Notify):
            return sent
        assert policy.notify_done(None) == "sent"
        sent.append(action.result)


def test_nothing_held_nothing_due() -> None:
    policy = make(Clock())
    assert policy.next() is None
    assert policy.due_in() is None and policy.wakeup_in() is None
    assert policy.held() == 0
    assert policy.describe(queued=0, busy=False) == "nothing"


def test_first_wakeup_goes_at_once_then_waits_for_the_cooldown() -> None:
    clock = Clock()
    policy = make(clock, cooldown=60.0)
    first = results(1)
    policy.add(first)
    assert policy.wakeup_in() == 0.0
    wakeup = take_wakeup(policy)
    assert wakeup.results == tuple(first) and wakeup.more == 0
    assert policy.wakeup_done(wakeup, None) == "sent"
    assert len(drain_notifications(policy)) == 1
    policy.add(results(1))
    clock.advance(59.0)
    assert policy.wakeup_in() == pytest.approx(1.0)
    assert len(drain_notifications(policy)) == 1
    assert policy.next() is None  # the wake-up waits
    clock.advance(1.0)
    assert policy.due_in() == 0.0
    assert policy.wakeup_done(take_wakeup(policy), None) == "sent"
    assert policy.counts(queued=0).wakeups_sent == 2


def test_results_held_by_the_cooldown_go_together_in_one_wakeup() -> None:
    clock = Clock()
    policy = make(clock, cooldown=60.0)
    policy.add(results(1))
    policy.wakeup_done(take_wakeup(policy), None)
    held = [*results(2), *results(3)]
    policy.add(held[:2])
    clock.advance(30.0)
    policy.add(held[2:])
    drain_notifications(policy)
    assert policy.next() is None
    clock.advance(30.0)
    wakeup = take_wakeup(policy)
    assert wakeup.results == tuple(held)
    policy.wakeup_done(wakeup, None)
    assert policy.held() == 0


def test_results_beyond_the_listed_ones_are_counted_not_listed() -> None:
    policy = make(Clock(), max_listed=3)
    batch = results(5)
    policy.add(batch)
    policy.add(results(2))
    wakeup = take_wakeup(policy)
    assert wakeup.results == tuple(batch[:3]) and wakeup.more == 4
    assert policy.describe(queued=0, busy=False) == "a wake-up for 7 result(s), 7 notification(s)"


def test_results_arriving_during_a_wakeup_stay_for_the_next_one() -> None:
    clock = Clock()
    policy = make(clock, cooldown=10.0)
    policy.add(results(3))
    wakeup = take_wakeup(policy)
    late = results(1)
    policy.add(late)  # arrives while the wake-up is in flight
    policy.wakeup_done(wakeup, None)
    drain_notifications(policy)
    clock.advance(10.0)
    following = take_wakeup(policy)
    assert following.results == tuple(late) and following.more == 0


def test_busy_agent_is_retried_after_retry_after() -> None:
    clock = Clock()
    policy = make(clock)
    policy.add(results(1))
    wakeup = take_wakeup(policy)
    assert policy.wakeup_done(wakeup, BUSY) == "retry"
    assert policy.wakeup_in() == 5.0
    assert policy.held() == 2  # the wake-up and the notification
    drain_notifications(policy)
    clock.advance(4.9)
    assert policy.next() is None
    clock.advance(0.1)
    again = take_wakeup(policy)
    assert again.results == wakeup.results
    assert policy.wakeup_done(again, None) == "sent"
    counts = policy.counts(queued=0)
    assert counts.wakeups_sent == 1 and dict(counts.drops) == {}


@pytest.mark.parametrize(
    ("refusal", "delay"),
    [
        (Refusal(status=503), DEFAULT_RETRY_DELAY),
        (Refusal(status=429, retry_after=0.0), MIN_RETRY_DELAY),
        (Refusal(status=502, retry_after=2.0), 2.0),
        (Refusal(status=504, retry_after=1e9), 300.0),  # never past the deadline
        (Refusal(status=None, connect_error=True, retry_after=None), DEFAULT_RETRY_DELAY),
    ],
)
def test_retry_delay(refusal: Refusal, delay: float) -> None:
    policy = make(Clock(), retry_deadline=300.0)
    policy.add(results(1))
    assert policy.wakeup_done(take_wakeup(policy), refusal) == "retry"
    assert policy.wakeup_in() == pytest.approx(delay)


def test_retries_end_at_the_deadline_from_the_first_attempt() -> None:
    clock = Clock()
    policy = make(clock, retry_deadline=12.0, cooldown=60.0)
    policy.add(results(1))
    policy.wakeup_done(take_wakeup(policy), BUSY)  # t=0: retry at 5
    drain_notifications(policy)
    clock.advance(5.0)
    policy.wakeup_done(take_wakeup(policy), BUSY)  # t=5: retry at 10
    clock.advance(5.0)
    policy.wakeup_done(take_wakeup(policy), BUSY)  # t=10: only 2 s are left
    assert policy.wakeup_in() == pytest.approx(2.0)
    clock.advance(2.0)
    assert policy.wakeup_done(take_wakeup(policy), BUSY) == "dropped"  # t=12: deadline
    counts = policy.counts(queued=0)
    assert counts.wakeups_sent == 0 and counts.drops["wakeup_failed"] == 1
    # The next results wait for the cooldown and get a fresh deadline.
    policy.add(results(1))
    drain_notifications(policy)
    assert policy.wakeup_in() == pytest.approx(60.0)
    clock.advance(60.0)
    assert policy.wakeup_done(take_wakeup(policy), BUSY) == "retry"


@pytest.mark.parametrize(
    "refusal",
    [NO_AGENT, Refusal(status=400), Refusal(status=401), Refusal(status=None)],
    ids=["no-agent-url", "400", "401", "read-error"],
)
def test_refusals_that_no_retry_can_cure_are_dropped_at_once(refusal: Refusal) -> None:
    policy = make(Clock())
    policy.add(results(1))
    assert policy.wakeup_done(take_wakeup(policy), refusal) == "dropped"
    assert policy.counts(queued=0).drops == {"wakeup_failed": 1}
    assert policy.wakeup_in() is None


def test_delivery_confirmed_counts_as_sent_and_is_not_repeated() -> None:
    clock = Clock()
    policy = make(clock, cooldown=60.0)
    policy.add(results(1))
    confirmed = Refusal(status=503, retry_after=1.0, delivery_confirmed=True)
    assert policy.wakeup_done(take_wakeup(policy), confirmed) == "confirmed"
    assert policy.wakeup_in() is None
    counts = policy.counts(queued=0)
    assert counts.wakeups_sent == 1 and dict(counts.drops) == {}
    policy.add(results(1))
    assert policy.wakeup_in() == pytest.approx(60.0)  # the cooldown began


def test_notifications_off_pause_them_for_ten_minutes_then_resume() -> None:
    clock = Clock()
    policy = make(clock, cooldown=1e6)  # no wake-up comes between the notifications
    policy.add(results(1))
    policy.wakeup_done(take_wakeup(policy), None)
    assert isinstance(policy.next(), Notify)
    assert policy.notify_done(NOTIFY_OFF) == "paused"
    policy.add(results(2))  # wake-up held by the cooldown; two notifications
    assert policy.next() is None  # both dropped: paused
    assert policy.counts(queued=0).drops == {"notify_disabled": 3}
    clock.advance(NOTIFY_PAUSE_SECONDS - 1)
    policy.add(results(1))
    assert policy.next() is None
    clock.advance(1)
    policy.add(results(1))
    assert isinstance(policy.next(), Notify)
    assert policy.notify_done(None) == "sent"
    counts = policy.counts(queued=0)
    assert counts.notifications_sent == 1 and counts.drops == {"notify_disabled": 4}


def test_other_notification_failures_drop_one_and_pause_nothing() -> None:
    policy = make(Clock())
    policy.add(results(2))
    policy.wakeup_done(take_wakeup(policy), None)
    assert isinstance(policy.next(), Notify)
    assert policy.notify_done(Refusal(status=403, error="forbidden")) == "dropped"
    assert isinstance(policy.next(), Notify)
    assert policy.notify_done(None) == "sent"
    assert policy.counts(queued=0).drops == {"notify_failed": 1}


def test_after_a_wakeup_a_notification_goes_first() -> None:
    """With no cooldown and results arriving steadily, wake-ups never starve notifications."""
    policy = make(Clock(), cooldown=0.0)
    kinds = []
    for _ in range(6):
        policy.add(results(1))  # a wake-up is due every time: there is no cooldown
        action = policy.next()
        kinds.append(type(action).__name__)
        if isinstance(action, Wakeup):
            policy.wakeup_done(action, None)
        else:
            policy.notify_done(None)
    assert kinds == ["Wakeup", "Notify", "Wakeup", "Notify", "Wakeup", "Notify"]


def test_notification_backlog_is_bounded() -> None:
    policy = make(Clock(), max_notify_backlog=3)
    policy.add(results(2))
    policy.add(results(2))
    assert policy.counts(queued=0).drops == {"notify_backlog": 1}
    assert policy.held() == 1 + 3


def test_discard_counts_what_was_held_as_stopped() -> None:
    policy = make(Clock())
    policy.add(results(3))
    policy.discard()
    counts = policy.counts(queued=2)
    assert counts.drops == {"stopped": 4}  # one wake-up, three notifications
    assert counts.queue_depth == 2 and policy.due_in() is None


def test_counts_are_a_frozen_snapshot() -> None:
    policy = make(Clock())
    policy.add(results(1))
    counts = policy.counts(queued=1)
    assert counts.queue_depth == 1 + 2
    policy.drop("queue_full", 1)
    assert dict(counts.drops) == {}
    with pytest.raises(TypeError):
        counts.drops["x"] = 1  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"error": "workspace has no URL"}, Refusal(503, error="workspace has no URL")),
        ({"error": 7, "delivery_confirmed": "true"}, Refusal(503)),
        ({"delivery_confirmed": True}, Refusal(503, delivery_confirmed=True)),
        (["error"], Refusal(503)),
        (None, Refusal(503)),
    ],
)
def test_refusal_reads_any_error_body(body: object, expected: Refusal) -> None:
    assert Refusal.read(503, body, None, False) == expected


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=4),  # results in a new batch
            st.floats(min_value=0, max_value=100),  # seconds that pass
            st.sampled_from([None, BUSY, NO_AGENT, NOTIFY_OFF, Refusal(500)]),
        ),
        max_size=30,
    )
)
def test_every_result_is_notified_or_counted_once(
    steps: list[tuple[int, float, Refusal | None]],
) -> None:
    """Whatever the platform answers, no notification is lost or sent twice."""
    clock = Clock()
    policy = make(clock, cooldown=10.0, retry_deadline=30.0, max_notify_backlog=5)
    added: list[object] = []
    notified: list[object] = []
    for size, seconds, answer in steps:
        batch = results(size)
        added += batch
        policy.add(batch)
        clock.advance(seconds)
        action = policy.next()
        if isinstance(action, Wakeup):
            policy.wakeup_done(action, answer)
        elif isinstance(action, Notify) and policy.notify_done(answer) == "sent":
            notified.append(action.result)
    counts = policy.counts(queued=0)
    assert len(set(map(id, notified))) == len(notified) == counts.notifications_sent
    notify_drops = sum(
        counts.drops.get(k, 0) for k in ("notify_backlog", "notify_disabled", "notify_failed")
    )
    held_notes = policy.held() - (1 if policy.wakeup_in() is not None else 0)
    assert len(notified) + notify_drops + held_notes == len(added)


def test_a_result_only_counted_during_a_wakeup_still_gets_its_own() -> None:
    """The listed slots were full while a wake-up was in flight: the late result was only
    counted, and must still be announced by the next wake-up, not wait for another batch."""
    clock = Clock()
    policy = make(clock, cooldown=10.0, max_listed=2)
    policy.add(results(3))  # two listed, one counted
    wakeup = take_wakeup(policy)
    policy.add(results(1))  # in flight: no slot left, so only counted
    policy.wakeup_done(wakeup, None)
    assert policy.wakeup_in() == pytest.approx(10.0)
    assert "a wake-up for 1 result(s)" in policy.describe(queued=0, busy=False)
    drain_notifications(policy)
    clock.advance(10.0)
    following = take_wakeup(policy)
    assert following.results == () and following.more == 1
    policy.wakeup_done(following, None)
    assert policy.held() == 0 and policy.wakeup_in() is None


def test_a_discarded_wakeup_leaves_no_retry_deadline_behind() -> None:
    """Stopped during a busy agent's retries, then started again much later: the next
    wake-up gets its own retry deadline, not the discarded one's."""
    clock = Clock()
    policy = make(clock, retry_deadline=30.0)
    policy.add(results(1))
    assert policy.wakeup_done(take_wakeup(policy), BUSY) == "retry"
    policy.discard()  # the worker stopped
    clock.advance(100.0)
    policy.add(results(1))
    drain_notifications(policy)
    assert policy.wakeup_done(take_wakeup(policy), BUSY) == "retry"
