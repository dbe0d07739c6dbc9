from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from channels.base import ProviderConfig
from channels.routing import NoProviderAvailableError, WeightedChooser

DRAWS = 20_000


def providers(**weights: int) -> list[ProviderConfig]:
    return [ProviderConfig(name=name, type="smtp", weight=weight) for name, weight in weights.items()]


def shares(chooser: WeightedChooser, exclude: tuple[str, ...] = ()) -> Counter[str]:
    return Counter(chooser.choose(exclude).name for _ in range(DRAWS))


def assert_close(counts: Counter[str], expected: dict[str, float]) -> None:
    """Each share within 5 standard deviations of a binomial draw: never flaky, still tight (~1.5%)."""
    for name, probability in expected.items():
        tolerance = 5 * math.sqrt(DRAWS * probability * (1 - probability))
        assert abs(counts[name] - DRAWS * probability) <= tolerance, (name, counts)


def test_draws_follow_the_weights() -> None:
    chooser = WeightedChooser(providers(primary=70, backup=30), random.Random(1))
    assert_close(shares(chooser), {"primary": 0.7, "backup": 0.3})


def test_three_providers() -> None:
    chooser = WeightedChooser(providers(a=5, b=3, c=2), random.Random(2))
    assert_close(shares(chooser), {"a": 0.5, "b": 0.3, "c": 0.2})


def test_exclude_renormalises_over_the_rest() -> None:
    chooser = WeightedChooser(providers(a=5, b=3, c=2), random.Random(3))
    counts = shares(chooser, exclude=("a",))
    assert counts["a"] == 0
    assert_close(counts, {"b": 0.6, "c": 0.4})


def test_failover_takes_the_only_provider_left() -> None:
    chooser = WeightedChooser(providers(primary=99, backup=1), random.Random(4))
    assert {chooser.choose(exclude={"primary"}).name for _ in range(100)} == {"backup"}


def test_unknown_names_in_exclude_are_ignored() -> None:
    chooser = WeightedChooser(providers(only=1), random.Random(5))
    assert chooser.choose(exclude=["nonexistent"]).name == "only"


def test_nothing_left_raises_a_typed_error_naming_the_excluded() -> None:
    chooser = WeightedChooser(providers(primary=1, backup=1))
    with pytest.raises(NoProviderAvailableError) as caught:
        chooser.choose(exclude={"primary", "backup"})
    assert isinstance(caught.value, LookupError)
    assert caught.value.excluded == ("backup", "primary")


def test_same_seed_same_sequence() -> None:
    def sequence(seed: int) -> list[str]:
        chooser = WeightedChooser(providers(a=1, b=1, c=1), random.Random(seed))
        return [chooser.choose().name for _ in range(50)]

    assert sequence(7) == sequence(7)
    assert sequence(7) != sequence(8)


@pytest.mark.parametrize("weight", [0, -1, True])
def test_rejects_non_positive_weights(weight: int) -> None:
    with pytest.raises(ValueError, match="weight must be a positive integer"):
        WeightedChooser([ProviderConfig(name="p", type="smtp", weight=weight)])


def test_rejects_an_empty_channel() -> None:
    with pytest.raises(ValueError, match="at least one provider"):
        WeightedChooser([])


def test_contact_limits_the_candidates_to_providers_that_can_address_it() -> None:
    fields = {"fcm": ("fcm_token",), "apns": ("apns_token",)}
    chooser = WeightedChooser(providers(fcm=50, apns=50), random.Random(3), address_fields=fields)
    assert {chooser.choose(contact={"apns_token": "t"}).name for _ in range(200)} == {"apns"}
    assert {chooser.choose(contact={"fcm_token": "t"}).name for _ in range(200)} == {"fcm"}
    assert chooser.can_reach({"fcm_token": "t"}) and not chooser.can_reach({"email": "a@b.c"})
    with pytest.raises(NoProviderAvailableError):
        chooser.choose(contact={})
    with pytest.raises(NoProviderAvailableError):
        chooser.choose(exclude={"fcm"}, contact={"fcm_token": "t"})


def test_providers_without_address_fields_reach_everyone() -> None:
    chooser = WeightedChooser(providers(hook=1), random.Random(4), address_fields={"hook": ()})
    assert chooser.choose(contact={}).name == "hook"
    assert chooser.can_reach({})


def test_a_channel_carries_only_the_contact_fields_its_providers_read() -> None:
    contact = {"email": "a@b.c", "phone": "+1555", "fcm_token": "f", "apns_token": "a", "wechat_openid": "o"}
    push = WeightedChooser(
        providers(fcm=1, apns=1), address_fields={"fcm": ("fcm_token",), "apns": ("apns_token",)}
    )
    assert push.contact_for(contact) == {"fcm_token": "f", "apns_token": "a"}  # both: failover
    assert push.contact_for({"phone": "+1555"}) == {}
    inbox = WeightedChooser(providers(mariadb=1))
    assert inbox.contact_for(contact) == {}
    hook = WeightedChooser(
        providers(hook=1), address_fields={"hook": ()}, contact_fields={"hook": ("email",)}
    )
    assert hook.contact_for(contact) == {"email": "a@b.c"}
    assert hook.can_reach({})  # what it reads is not an address it needs
