"""One line for a service that cannot be reached or a URL that cannot be used.

Connection and configuration failures surface deep inside SQLAlchemy, kombu or redis-py as
tracebacks of 40 to 150 lines that bury the one fact an operator needs: what failed, and
where. :func:`explain` finds that fact in an exception (or in what caused it) and says it in
one line, naming the service by its URL without the password.
"""

from __future__ import annotations

import errno
import re

from catdog.settings import Settings, redact_url

#: Longest cause quoted from a driver's message; the rest is what ``-v`` is for.
MAX_CAUSE_CHARS = 300


def cause_of(exc: BaseException) -> str:
    """A driver's message on one line: SQLAlchemy's wrapped original, first line only."""
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip().splitlines()
    line = re.sub(r"\s+", " ", text[0]) if text else type(original).__name__
    return line[:MAX_CAUSE_CHARS]


def _database_where(settings: Settings | None) -> str:
    return "" if settings is None else f" {redact_url(settings.database())}"


def _broker_where(settings: Settings | None) -> str:
    url = None if settings is None else settings.broker()
    return "" if url is None else f" {redact_url(url)}"


def _explain_one(exc: BaseException, settings: Settings | None) -> str | None:
    from kombu.exceptions import OperationalError as BrokerError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from sqlalchemy.exc import ArgumentError, InterfaceError
    from sqlalchemy.exc import OperationalError as DatabaseError

    from catdog.stores import StoreUnavailable

    if isinstance(exc, StoreUnavailable):
        return str(exc)
    if isinstance(exc, ArgumentError):
        # A URL without a scheme, an unknown driver: the URL itself is wrong.
        return f"CATDOG_DATABASE_URL{_database_where(settings)} is not usable: {cause_of(exc)}"
    if isinstance(exc, DatabaseError | InterfaceError):
        return f"database{_database_where(settings)}: {cause_of(exc)}"
    if isinstance(exc, BrokerError | RedisConnectionError | RedisTimeoutError):
        return f"broker{_broker_where(settings)}: {cause_of(exc)}"
    if isinstance(exc, OSError) and exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH):
        return f"connection refused: {cause_of(exc)}"
    return None


def explain(exc: BaseException, settings: Settings | None) -> str | None:
    """One line for a connection or configuration failure, or None for any other error.

    Looks through the chain of causes too: kombu and Celery wrap the redis-py error they met.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        line = _explain_one(current, settings)
        if line is not None:
            return line
        current = current.__cause__ or current.__context__
    return None
