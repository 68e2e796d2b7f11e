"""tickcast.group_watch: when an idle consumer counts as fallen out of its group."""

from __future__ import annotations

from typing import Any

from tickcast.group_watch import MembershipWatch, group_view, orphaned


def description(state: str, *assignments: list[int], topic: str = "bars") -> dict[str, Any]:
    """A group as KafkaAdminClient.describe_groups() gives it (assignments decoded, dict form)."""
    return {
        "group_state": state,
        "members": [
            {
                "member_id": f"m{i}",
                "member_assignment": {"assigned_partitions": [{"topic": topic, "partitions": parts}]},
            }
            for i, parts in enumerate(assignments)
        ],
    }


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def watch_of(states: list[dict[str, Any]], clock: Clock, partitions: tuple[int, ...] = (0, 1)) -> MembershipWatch:
    answers = iter(states)
    return MembershipWatch(
        lambda: next(answers),
        lambda: partitions,
        "bars",
        grace_s=30,
        check_interval_s=10,
        rebalance_limit_s=120,
        clock=clock,
    )


def test_group_view_reads_owned_partitions_of_the_topic_only() -> None:
    desc = description("Stable", [0], [1])
    desc["members"].append(
        {"member_id": "x", "member_assignment": {"assigned_partitions": [{"topic": "other", "partitions": [2]}]}}
    )
    view = group_view(desc, "bars")
    assert view.state == "Stable" and view.members == 3 and view.owned == frozenset({0, 1})
    assert orphaned(view, [0, 1, 2]) == [2]
    assert orphaned(group_view(description("PreparingRebalance"), "bars"), [0, 1]) == []  # not settled yet
    assert orphaned(group_view({"group_state": "Dead", "members": []}, "bars"), [0, 1]) == [0, 1]  # no such group


def test_an_idle_member_with_orphaned_partitions_must_rejoin_after_the_grace() -> None:
    clock = Clock()
    watch = watch_of([description("Empty")], clock)
    assert watch.check(assigned=False) is None  # idle starts now
    clock.now = 29
    assert watch.check(assigned=False) is None  # within the grace: the broker is not asked
    clock.now = 31
    reason = watch.check(assigned=False)
    assert reason is not None and "[0, 1]" in reason and "no owner" in reason


def test_a_standby_is_left_alone_and_holding_partitions_resets_the_clock() -> None:
    clock = Clock()
    watch = watch_of([description("Stable", [0, 1], []), description("Stable", [0, 1], [])], clock)
    watch.check(assigned=False)
    clock.now = 31
    assert watch.check(assigned=False) is None  # every partition owned: a standby
    clock.now = 35
    assert watch.check(assigned=False) is None  # and the grace starts over, no question asked
    watch.check(assigned=True)
    clock.now = 70
    assert watch.check(assigned=False) is None


def test_a_rebalance_that_never_ends_counts_as_stuck() -> None:
    clock = Clock()
    watch = watch_of([description("PreparingRebalance")] * 20, clock)
    watch.check(assigned=False)
    reasons = []
    for t in range(31, 300, 10):
        clock.now = t
        reasons.append(watch.check(assigned=False))
    stuck = [r for r in reasons if r]
    assert stuck and "rebalancing" in stuck[0]
    assert reasons.index(stuck[0]) * 10 + 31 >= 31 + 120  # not before the limit


def test_a_broker_that_cannot_answer_is_not_a_verdict() -> None:
    clock = Clock()

    def down() -> dict[str, Any]:
        raise ConnectionError("broker down")

    watch = MembershipWatch(down, lambda: (0,), "bars", grace_s=1, check_interval_s=1, rebalance_limit_s=5, clock=clock)
    watch.check(assigned=False)
    clock.now = 5
    assert watch.check(assigned=False) is None
