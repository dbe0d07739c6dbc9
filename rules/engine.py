"""Matching with durable-rules: one host, two rule sets, built per rule book.

How a fact is matched (all of it measured against durable_rules 2.0.28; see
``tests/unit/rules/test_durable_behaviour.py``):

- The fact is projected to the flat keys the rules read (:class:`~rules.expr.Projection`)
  and *asserted as a fact*, not posted as an event: durable-rules hands an event
  to the first matching rule only, while a fact fires every matching rule.
  The fact is retracted right after its actions ran, so nothing is retained:
  the per-``sid`` state stays one constant record (a single ``sid`` is used;
  every new ``sid`` would allocate about 300 KB until deleted).
- The rules' actions are named in the JSON rule sets and resolved by
  :meth:`_CollectingHost.get_action` to a collector that appends the rule's
  index; results are returned in file order.
- No match is reported by the C engine as a status code. ``Host.assert_fact``
  turns it into ``MessageNotHandledException``, whose constructor re-serialises
  the whole message; we read the status code instead (about 3x cheaper for
  the common no-match case).
- The host's background timer threads are not started: we use no timers, the
  threads would dispatch actions concurrently with the caller, and their
  self-rearming timers keep every host (and its C memory) alive forever. C
  memory of a rule set is freed when its :class:`RuleEngine` is garbage
  collected (or :meth:`RuleEngine.close`), so hot reloads do not leak.
- Each rule set is warmed up at build time with a fact only an internal rule
  matches: durable-rules aborts the process when it frees a ``sid`` state that
  has only ever seen unmatched facts.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import itertools
import json
import os
import re
import weakref
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

import durable_rules_engine as _c
import orjson
from durable import engine as durable_engine

from rules.errors import RuleEvaluationError, RuleFileError, RuleSetError
from rules.expr import Condition, FactSchema, Projection
from rules.model import ChannelRule, RuleBook, TriggerRule

SID = "0"
# Status codes of durable_rules_engine.assert_fact (see durable.engine.Ruleset._handle_result).
_HANDLED, _NOT_HANDLED, _OBSERVED = 0, 1, 2
# A rule in every rule set that only the warm-up fact matches (no guard key: no real rule sees it).
WARM_UP_KEY = "reach:warm_up"
WARM_UP_ACTION = "warm_up"
_WARM_UP_FACT = json.dumps({WARM_UP_KEY: 1, "sid": SID})

# Capacity limits, far enough below durable-rules' own that the C engine never
# fails at match time (ERR_MAX_STACK_SIZE past 64 pending alternatives per
# fact), never hangs at build time (beyond 512 alternatives in a rule set its
# open-addressing tables never find a free slot) and never refuses a fact
# (about 250 properties).
MAX_PENDING_ALTERNATIVES = 60
MAX_RULESET_ALTERNATIVES = 400
MAX_FACT_KEYS = 200

_ENGINE_ERRORS = {
    106: "too many rules for durable-rules (rule limit exceeded)",
    107: "too many existence tests for durable-rules",
    108: "too many rules share one test (durable-rules beta limit exceeded); merge them",
    113: "expression too complex for durable-rules (expression limit exceeded); split it into simpler rules",
}
_build_counter = itertools.count(1)


def _engine_error_reason(exc: Exception) -> str:
    found = re.search(r"error code: (\d+)", str(exc))
    code = int(found.group(1)) if found else None
    known = _ENGINE_ERRORS.get(code) if code is not None else None
    return known or f"durable-rules refused the rule set: {exc}"


def probe_condition(condition: Condition) -> str | None:
    """Build a throw-away one-rule rule set; return why durable-rules refuses it, or None."""
    definition = json.dumps({"probe": {"all": [{"m": condition.definition()}]}}, ensure_ascii=False)
    try:
        handle = _c.create_ruleset("reach_probe", definition)
    except _c.error as exc:
        return _engine_error_reason(exc)
    _c.delete_ruleset(handle)
    return None


@dataclasses.dataclass(frozen=True)
class CapacityProblem:
    """A rule set would exceed durable-rules' limits; ``rule_index`` names the rule to blame."""

    rule_index: int
    reason: str


def check_capacity(
    conditions: Sequence[Condition], schema: FactSchema, groups: Sequence[Hashable] | None = None
) -> list[CapacityProblem]:
    """Problems that would make durable-rules fail or hang on this rule set.

    ``groups`` (one label per condition, e.g. its file) decides the blame: a
    problem of the rule set as a whole is blamed on the group contributing most
    to it, at the rule of that group from which the limit is passed once the
    other groups are counted; without groups, on the rule that passes it.
    The bound on pending alternatives relies on alternatives led by an
    equality test excluding each other (an event has one ``name``).
    """
    labels: Sequence[Hashable] = groups if groups is not None else [None] * len(conditions)
    problems = _pressure_problems(conditions, schema, labels)
    total = sum(c.branches for c in conditions)
    if total > MAX_RULESET_ALTERNATIVES:
        weights = {i: c.branches for i, c in enumerate(conditions)}
        problems.append(
            CapacityProblem(
                _blame(weights, MAX_RULESET_ALTERNATIVES, labels),
                f"the {schema.name} rules expand to {total} alternatives "
                f"(limit {MAX_RULESET_ALTERNATIVES}); use fewer or simpler rules",
            )
        )
    keys = Projection(conditions).max_keys
    if keys > MAX_FACT_KEYS:
        weights = {i: Projection([c]).max_keys for i, c in enumerate(conditions)}
        problems.append(
            CapacityProblem(
                _blame(weights, MAX_FACT_KEYS, labels),
                f"the {schema.name} rules read {keys} distinct fields and list members "
                f"(limit {MAX_FACT_KEYS})",
            )
        )
    return problems


def _blame(weights: Mapping[int, int], limit: int, groups: Sequence[Hashable]) -> int:
    """The rule to blame for ``weights`` (rule index -> its share) passing ``limit``."""
    by_group: dict[Hashable, int] = {}
    for index in sorted(weights):
        by_group[groups[index]] = by_group.get(groups[index], 0) + weights[index]
    heaviest = max(by_group, key=by_group.__getitem__)
    mine = [index for index in sorted(weights) if groups[index] == heaviest]
    running = sum(by_group.values()) - by_group[heaviest]
    for index in mine:
        running += weights[index]
        if running > limit:
            return index
    return mine[-1]  # shares overlap (shared fields): the limit is passed only by the whole


def _pressure_problems(
    conditions: Sequence[Condition], schema: FactSchema, groups: Sequence[Hashable]
) -> list[CapacityProblem]:
    by_key: dict[str, dict[str, list[int]]] = {}
    unkeyed: list[int] = []
    for index, condition in enumerate(conditions):
        if condition.leading is None:
            unkeyed.append(index)
        else:
            key, value = condition.leading
            by_key.setdefault(key, {}).setdefault(value, []).append(index)

    def weight(indexes: Iterable[int]) -> int:
        return sum(conditions[i].branches for i in indexes)

    worst = [max(by_value.items(), key=lambda item: weight(item[1])) for by_value in by_key.values()]
    pressure = weight(unkeyed) + sum(weight(indexes) for _, indexes in worst)
    if pressure <= MAX_PENDING_ALTERNATIVES:
        return []
    detail = ", ".join(
        f"{weight(ix)} with {k.split(':')[0]} == {v}" for (v, ix), k in zip(worst, by_key, strict=True)
    )
    involved = {i: conditions[i].branches for i in [*unkeyed, *(i for _, ix in worst for i in ix)]}
    return [
        CapacityProblem(
            _blame(involved, MAX_PENDING_ALTERNATIVES, groups),
            f"up to {pressure} rule alternatives can match one {schema.name} "
            f"(limit {MAX_PENDING_ALTERNATIVES}; {weight(unkeyed)} not led by an equality test"
            + (f", {detail}" if detail else "")
            + '); start rules with an equality test such as name == "..." or merge them',
        )
    ]


class _CollectingHost(durable_engine.Host):
    """A durable-rules host whose named actions record which rules fired."""

    def __init__(self, definitions: Mapping[str, Any], actions: Mapping[str, int]) -> None:
        self.matched: list[int] = []
        self._action_index = dict(actions)
        super().__init__(dict(definitions))

    def get_action(self, action_name: str) -> Callable[[Any], None]:
        if action_name == WARM_UP_ACTION:
            return lambda closure: None
        index = self._action_index[action_name]
        matched = self.matched

        def collect(closure: Any) -> None:  # durable-rules inspects the arity: one argument
            matched.append(index)

        return collect

    def _run(self) -> None:
        """Start no timer threads (see the module docstring)."""


@dataclasses.dataclass(frozen=True)
class _RuleSet:
    """One durable-rules rule set plus what is needed to post to it."""

    name: str
    ruleset: Any  # durable.engine.Ruleset
    projection: Projection

    @property
    def handle(self) -> int:
        return int(self.ruleset._handle)


@dataclasses.dataclass(frozen=True)
class _Live:
    """A host and its two rule sets: what a rebuild replaces."""

    host: _CollectingHost
    triggers: _RuleSet
    channels: _RuleSet

    @property
    def handles(self) -> list[int]:
        return [self.triggers.handle, self.channels.handle]


def _definitions(prefix: str, conditions: Sequence[Condition]) -> dict[str, Any]:
    # Ruleset() deletes "run" from what it is given: build fresh dicts.
    rules = {
        f"{prefix}{i}": {"all": [{"m": c.definition()}], "run": f"{prefix}{i}"}
        for i, c in enumerate(conditions)
    }
    rules[WARM_UP_ACTION] = {"all": [{"m": {WARM_UP_KEY: 1}}], "run": WARM_UP_ACTION}
    return rules


def _warm_up(ruleset: Any) -> None:
    """Create the sid state through a match. durable-rules aborts the process
    (``free(): invalid pointer``) when deleting a state that only ever saw
    unmatched facts; a state created by a matched fact is freed cleanly."""
    handle = ruleset._handle
    code, state = _c.assert_fact(handle, _WARM_UP_FACT)
    if code != _HANDLED:
        raise RuleEvaluationError(f"durable-rules did not match the warm-up fact (status {code})")
    ruleset.do_actions(state, lambda error, _state: None)
    _c.retract_fact(handle, _WARM_UP_FACT)


def event_conditions(rulebook: RuleBook) -> list[Condition]:
    """What one event is matched against, in one assertion: every ``when``, then every
    ``cancel_if`` (so a rule book without ``cancel_if`` costs nothing more)."""
    cancels = [t.cancel_condition for t in rulebook.cancelling if t.cancel_condition is not None]
    return [t.condition for t in rulebook.triggers] + cancels


@dataclasses.dataclass(frozen=True)
class EventMatches:
    """What an event matched: the triggers whose ``when`` matched (they make messages)
    and the triggers whose ``cancel_if`` matched (their waiting messages are dropped)."""

    triggers: list[TriggerRule]
    cancels: list[TriggerRule]


def _build_live(rulebook: RuleBook) -> _Live:
    serial = next(_build_counter)
    names = (f"reach_triggers_{serial}", f"reach_channels_{serial}")
    trigger_conditions = event_conditions(rulebook)
    channel_conditions = [c.condition for c in rulebook.channel_rules]
    definitions = {
        names[0]: _definitions("t", trigger_conditions),
        names[1]: _definitions("c", channel_conditions),
    }
    actions = {name: i for ruleset in definitions.values() for i, name in enumerate(ruleset)}
    try:
        host = _CollectingHost(definitions, actions)
    except _c.error as exc:
        where = os.path.dirname(rulebook.files[0]) if rulebook.files else "<rules>"
        raise RuleSetError([RuleFileError(where, None, _engine_error_reason(exc))]) from exc
    live = _Live(
        host,
        _RuleSet(names[0], host.get_ruleset(names[0]), Projection(trigger_conditions)),
        _RuleSet(names[1], host.get_ruleset(names[1]), Projection(channel_conditions)),
    )
    for ruleset in (live.triggers, live.channels):
        _warm_up(ruleset.ruleset)
    return live


def _free(handles: list[int]) -> None:
    for handle in handles:
        # A rule set with a live sid state leaks that state unless it is deleted first.
        with contextlib.suppress(_c.error):
            _c.delete_state(handle, SID)
        _c.delete_ruleset(handle)


class RuleEngine:
    """Matches events to triggers and reach messages to channel rules.

    Build one with :meth:`build`. The matching methods are synchronous, do no
    I/O and must be called from one thread (the event loop's). An engine is
    immutable: hot reload builds a new one and swaps the reference.

    If durable-rules fails on a fact, that call raises
    :class:`RuleEvaluationError` and the engine rebuilds its durable-rules
    host for the next call. The failed host is dropped without freeing its C
    memory: its state is not trusted, and a crash while freeing it would turn
    one bad event into a crash loop. ``rebuilds`` counts this (export it as a
    metric); it stays 0 when the loader's limits hold.
    """

    def __init__(self, rulebook: RuleBook, live: _Live) -> None:
        self._rulebook = rulebook
        self._cancelling = rulebook.cancelling
        self._live = live
        self._finalizer = weakref.finalize(self, _free, live.handles)
        self._closed = False
        self.rebuilds = 0
        self.rebuilt_unparsable = 0  # unparsable_versions of the hosts replaced by rebuilds

    @classmethod
    def build(cls, rulebook: RuleBook) -> RuleEngine:
        """A fresh engine for ``rulebook``; raises :class:`RuleSetError` if
        durable-rules refuses the rule sets."""
        return cls(rulebook, _build_live(rulebook))

    @property
    def rulebook(self) -> RuleBook:
        return self._rulebook

    def match_triggers(self, fact: Mapping[str, Any]) -> list[TriggerRule]:
        """Every trigger whose ``when`` matches event ``fact``, in file order.

        Raises :class:`RuleEvaluationError` if durable-rules fails (the
        loader's capacity checks are there to prevent it).
        """
        return self.match_event(fact).triggers

    def match_event(self, fact: Mapping[str, Any]) -> EventMatches:
        """Every trigger whose ``when`` matches event ``fact`` and every trigger whose
        ``cancel_if`` does, each in file order; raises like :meth:`match_triggers`."""
        triggers, cancelling = self._rulebook.triggers, self._cancelling
        indexes = self._match(lambda live: live.triggers, fact)
        split = bisect.bisect_left(indexes, len(triggers))
        return EventMatches(
            [triggers[i] for i in indexes[:split]],
            [cancelling[i - len(triggers)] for i in indexes[split:]],
        )

    def channel_rule_for(self, fact: Mapping[str, Any]) -> ChannelRule | None:
        """The first channel rule (file order) matching reach-message ``fact``."""
        indexes = self._match(lambda live: live.channels, fact)
        return self._rulebook.channel_rules[indexes[0]] if indexes else None

    def select_channels(self, candidates: Sequence[str], fact: Mapping[str, Any]) -> tuple[str, ...]:
        """The channels to use for a reach message, in ``candidates`` order.

        The first matching channel rule decides: the candidates also in its
        ``use``; this may be empty (the message is unroutable). No matching
        rule: every candidate.
        """
        rule = self.channel_rule_for(fact)
        if rule is None:
            return tuple(candidates)
        allowed = set(rule.use)
        return tuple(channel for channel in candidates if channel in allowed)

    @property
    def unparsable_versions(self) -> int:
        """Facts whose value for a ``version(...)`` field was not a version, since the build
        (the comparisons read it as absent)."""
        live = self._live
        return self.rebuilt_unparsable + sum(
            r.projection.unparsable_versions for r in (live.triggers, live.channels)
        )

    def retained_facts(self) -> int:
        """Facts durable-rules still holds (always 0 between calls; for tests and health checks)."""
        total = 0
        for ruleset in (self._live.triggers, self._live.channels):
            with contextlib.suppress(_c.error):  # no state yet for this sid
                total += len(self._live.host.get_facts(ruleset.name, SID))
        return total

    def close(self) -> None:
        """Free durable-rules' memory now instead of at garbage collection.

        Only for an engine nobody uses any more; matching afterwards raises
        :class:`RuleEvaluationError`.
        """
        self._closed = True
        self._finalizer()

    def _match(self, pick: Callable[[_Live], _RuleSet], fact: Mapping[str, Any]) -> list[int]:
        if self._closed:
            raise RuleEvaluationError("the rule engine was closed")
        live = self._live
        ruleset = pick(live)
        flat = ruleset.projection.project(fact)
        flat["sid"] = SID
        payload = orjson.dumps(flat).decode()
        matched = live.host.matched
        matched.clear()
        try:
            state = self._assert(ruleset, payload)
            if state is not None:
                self._run_actions(ruleset, payload, state)
        except (_c.error, RuleEvaluationError) as exc:
            self._rebuild()
            raise RuleEvaluationError(f"durable-rules failed on a fact: {exc}") from exc
        return sorted(matched)

    def _assert(self, ruleset: _RuleSet, payload: str) -> int | None:
        code, state = _c.assert_fact(ruleset.handle, payload)
        if code == _OBSERVED:
            # Only possible if an earlier call left its fact behind: the host is suspect.
            raise RuleEvaluationError("an identical fact is already asserted")
        return int(state) if code == _HANDLED else None

    def _run_actions(self, ruleset: _RuleSet, payload: str, state: int) -> None:
        errors: list[BaseException] = []

        def complete(error: BaseException | None, _state: Any) -> None:
            if error is not None:
                errors.append(error)

        try:
            ruleset.ruleset.do_actions(state, complete)
        finally:
            _c.retract_fact(ruleset.handle, payload)
        if errors:
            raise RuleEvaluationError(f"running actions: {errors[0]}") from errors[0]

    def _rebuild(self) -> None:
        self.rebuilt_unparsable = self.unparsable_versions
        self._finalizer.detach()  # never free a host durable-rules failed in (see the class docstring)
        self._live = _build_live(self._rulebook)
        self._finalizer = weakref.finalize(self, _free, self._live.handles)
        self.rebuilds += 1
