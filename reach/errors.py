"""Errors that mean a dependency (Kafka, MariaDB, Redis) is down or overloaded.

The agents retry a step that raised one of these; the API answers 503.
Anything else is a bug.
"""

from __future__ import annotations

import asyncio

import pymysql
import redis.exceptions
from aiokafka.errors import KafkaError

DEPENDENCY_ERRORS: tuple[type[BaseException], ...] = (
    pymysql.err.OperationalError,
    pymysql.err.InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    KafkaError,
    ConnectionError,
    asyncio.TimeoutError,
)


class DependencyUnreachable(ConnectionError):
    """A dependency did not answer within its bound (at start-up, say); the message names
    the dependency, its address and the bound. A ``ConnectionError``, so it is one of
    :data:`DEPENDENCY_ERRORS` too."""
