"""Notice a Kafka consumer that has silently fallen out of its consumer group.

Under heavy load (a load average of about 10 on 2 cores, in ``bench/sink.py``) kafka-python
3.0 missed enough heartbeats for the broker to drop a member, and the client never rejoined:
it kept polling with no partitions, at 90% CPU, while its ``/healthz`` stayed green and
nobody consumed the topic. The client's own state cannot be trusted in that case, so the
watch asks the broker.

An empty assignment alone is not a fault: a group with more members than partitions leaves
some members idle (standbys). What is a fault is an idle member while partitions of its topic
have *no owner* in the group: then the member should hold them and does not. The watch
describes the group (``DescribeGroups``, which the member's own group grant allows) only
after the member has been idle for a grace period, and at most once per check interval.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: Group states in which the assignment is settled (``Empty``: no member at all; ``Dead``: the
#: broker holds no such group, as for a group nobody has joined yet).
SETTLED_STATES = frozenset({"Stable", "Empty", "Dead"})
#: Group states in the middle of a rebalance.
REBALANCING_STATES = frozenset({"PreparingRebalance", "CompletingRebalance"})


@dataclass(frozen=True)
class GroupView:
    """What the broker says about a group: its state and who owns which partitions of a topic."""

    state: str
    members: int
    owned: frozenset[int]


def group_view(description: Mapping[str, Any], topic: str) -> GroupView:
    """Reduce one group of ``KafkaAdminClient.describe_groups()`` to a :class:`GroupView`.

    Members' assignments arrive decoded (kafka-python decodes the consumer protocol's
    ``member_assignment``); one that could not be decoded owns nothing we can see.
    """
    owned: set[int] = set()
    members = list(description.get("members") or [])
    for member in members:
        assignment = member.get("member_assignment") if isinstance(member, Mapping) else None
        for entry in _assigned_partitions(assignment):
            if entry[0] == topic:
                owned.update(entry[1])
    return GroupView(state=str(description.get("group_state") or ""), members=len(members), owned=frozenset(owned))


def _assigned_partitions(assignment: Any) -> Iterable[tuple[str, Collection[int]]]:
    """(topic, partitions) pairs of a decoded ConsumerProtocolAssignment (object or dict form)."""
    if assignment is None or isinstance(assignment, (bytes, bytearray)):
        return []
    if not isinstance(assignment, Mapping) and hasattr(assignment, "to_dict"):
        assignment = assignment.to_dict()
    if isinstance(assignment, Mapping):
        entries = assignment.get("assigned_partitions") or []
    else:
        entries = getattr(assignment, "assigned_partitions", None) or []
    pairs: list[tuple[str, Collection[int]]] = []
    for entry in entries:
        if isinstance(entry, Mapping):
            pairs.append((str(entry.get("topic")), list(entry.get("partitions") or [])))
        elif isinstance(entry, (tuple, list)) and len(entry) == 2:
            pairs.append((str(entry[0]), list(entry[1])))
        else:
            pairs.append((str(getattr(entry, "topic", "")), list(getattr(entry, "partitions", []) or [])))
    return pairs


def orphaned(view: GroupView, partitions: Collection[int]) -> list[int]:
    """Partitions of the topic that no member owns, if the group has settled; else none."""
    if view.state not in SETTLED_STATES:
        return []
    return sorted(set(partitions) - view.owned)


class MembershipWatch:
    """Tells a polling loop when its consumer has fallen out of the group and must rejoin.

    Args:
        describe: returns the group's description (one value of
            ``KafkaAdminClient.describe_groups([group])``); raising means "cannot tell now".
        partitions: returns the topic's partition ids.
        topic: the topic the group consumes.
        grace_s: how long a member may hold no partition before the broker is asked.
        check_interval_s: the least time between two questions to the broker.
        rebalance_limit_s: how long the group may stay mid-rebalance while this member holds
            nothing before that counts as stuck too.
        clock: monotonic seconds (tests).
    """

    def __init__(
        self,
        describe: Callable[[], Mapping[str, Any]],
        partitions: Callable[[], Collection[int]],
        topic: str,
        *,
        grace_s: float,
        check_interval_s: float,
        rebalance_limit_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._describe = describe
        self._partitions = partitions
        self.topic = topic
        self.grace_s = grace_s
        self.check_interval_s = check_interval_s
        self.rebalance_limit_s = rebalance_limit_s
        self._clock = clock
        self._idle_since: float | None = None
        self._last_check = float("-inf")
        self._rebalancing_since: float | None = None
        self.last_view: GroupView | None = None

    def reset(self) -> None:
        """Start over (after the consumer was replaced); :attr:`last_view` stays what was last seen."""
        self._idle_since = None
        self._rebalancing_since = None
        self._last_check = float("-inf")

    def check(self, assigned: bool) -> str | None:
        """Call after each poll; returns why the consumer must rejoin, or None while it is fine."""
        now = self._clock()
        if assigned:
            self._idle_since = None
            self._rebalancing_since = None
            return None
        if self._idle_since is None:
            self._idle_since = now
        if now - self._idle_since < self.grace_s or now - self._last_check < self.check_interval_s:
            return None
        self._last_check = now
        try:
            view = group_view(self._describe(), self.topic)
            partitions = list(self._partitions())
        except Exception as exc:  # broker down or restarting: the poll loop deals with that
            log.debug("group membership check skipped: %s", exc)
            return None
        self.last_view = view
        log.debug("group of %s: %s; partitions %s", self.topic, view, partitions)
        idle_s = now - self._idle_since
        missing = orphaned(view, partitions)
        if missing:
            return (
                f"this member has held no partition for {idle_s:.0f} s while partitions {missing} of "
                f"{self.topic} have no owner in the group (state {view.state}, {view.members} members)"
            )
        if view.state in REBALANCING_STATES:
            if self._rebalancing_since is None:
                self._rebalancing_since = now
            elif now - self._rebalancing_since >= self.rebalance_limit_s:
                return f"the group has been rebalancing for {now - self._rebalancing_since:.0f} s without this member"
            return None
        self._rebalancing_since = None
        # Every partition has an owner: this member is a standby. Look again after a grace.
        self._idle_since = now
        return None


__all__ = ["GroupView", "MembershipWatch", "group_view", "orphaned"]
