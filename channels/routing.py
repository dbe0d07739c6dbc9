"""Choosing a provider of a channel by weight, and failing over to the others.

Pure: no I/O and no clock. The random source is injected, so tests pin the
sequence with a seeded ``random.Random``.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Collection, Mapping, Sequence

from channels.base import ProviderConfig


class NoProviderAvailableError(LookupError):
    """Every provider of the channel was excluded: nothing is left to fail over to."""

    def __init__(self, excluded: Collection[str]) -> None:
        self.excluded = tuple(sorted(excluded))
        super().__init__(f"no provider left to choose; excluded: {', '.join(self.excluded)}")


class WeightedChooser:
    """Picks a provider with probability proportional to its ``weight``.

    ``choose(exclude=...)`` renormalises over the providers not excluded, which
    is how the sender fails over: exclude the provider that just failed and
    choose again. Not thread-safe (``random.Random`` state is shared), which is
    fine for one agent loop.
    """

    def __init__(
        self,
        providers: Sequence[ProviderConfig],
        rng: random.Random | None = None,
        address_fields: Mapping[str, Sequence[str]] | None = None,
        contact_fields: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        if not providers:
            raise ValueError("a channel needs at least one provider")
        for provider in providers:
            weight = provider.weight
            if isinstance(weight, bool) or not isinstance(weight, int) or weight <= 0:
                raise ValueError(f"provider {provider.name!r}: weight must be a positive integer")
        self._providers = tuple(providers)
        # Precomputed for the common case (nothing excluded): choices() then only bisects.
        self._cumulative = tuple(itertools.accumulate(p.weight for p in self._providers))
        self._rng = rng if rng is not None else random.Random()
        # provider name -> the contact fields it sends to; absent or empty: needs no address
        self._fields = {name: tuple(fields) for name, fields in (address_fields or {}).items() if fields}
        # the contact fields any provider of the channel reads (default: the address fields)
        read = contact_fields if contact_fields is not None else self._fields
        self._carried = frozenset(field for fields in read.values() for field in fields)

    def reaches(self, provider: str, contact: Mapping[str, str]) -> bool:
        """Whether ``provider`` can address a user with this contact."""
        fields = self._fields.get(provider)
        return not fields or any(contact.get(field) for field in fields)

    def can_reach(self, contact: Mapping[str, str]) -> bool:
        """Whether any provider of the channel can address a user with this contact."""
        return any(self.reaches(p.name, contact) for p in self._providers)

    def contact_for(self, contact: Mapping[str, str]) -> dict[str, str]:
        """The part of ``contact`` a message of this channel carries: the fields its providers
        read, of every provider (not only the chosen one), so that rerouting around an open
        breaker or failing over on a retry can still address the user. Nothing else of the
        user's contact travels on the channel's outbox topic."""
        return {field: value for field, value in contact.items() if field in self._carried}

    @property
    def providers(self) -> tuple[ProviderConfig, ...]:
        return self._providers

    def choose(
        self, exclude: Collection[str] = (), contact: Mapping[str, str] | None = None
    ) -> ProviderConfig:
        """A provider whose name is not in ``exclude``, drawn by weight.

        With ``contact``, only providers that can address it are candidates (a
        push channel with FCM and APNs sends each user through the provider
        their device token belongs to). Raises :class:`NoProviderAvailableError`
        when no candidate is left.
        """
        if not exclude and (contact is None or not self._fields):
            return self._rng.choices(self._providers, cum_weights=self._cumulative)[0]
        candidates = [
            p
            for p in self._providers
            if p.name not in exclude and (contact is None or self.reaches(p.name, contact))
        ]
        if not candidates:
            raise NoProviderAvailableError(exclude)
        if len(candidates) == len(self._providers):  # the usual case: every provider can take it
            return self._rng.choices(self._providers, cum_weights=self._cumulative)[0]
        return self._rng.choices(candidates, weights=[p.weight for p in candidates])[0]
