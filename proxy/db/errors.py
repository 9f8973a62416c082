"""asyncpg and OS errors translated into ``proxy.core.errors``, in one place: ``translate_errors``.

The asyncpg shells of this package translate with it, chaining the driver's exception: ``Store``'s
``connection`` for every operation run through it, the decision log's writer for its own. The
connections of their own (the change feed, ``proxy.db.notices``) tell a lost connection by
``CONNECTION_ERRORS``. ``tests/test_store.py`` proves that no asyncpg exception passes untranslated.
``breaks_connection`` says which errors may leave a connection unusable, so that it is terminated
rather than returned to the pool (``proxy.db.connections``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import asyncpg

from proxy.core.errors import Conflict, StoreUnavailable, ValidationError

__all__ = ["CONNECTION_ERRORS", "breaks_connection", "translate_errors"]

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ConnectionError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    # asyncpg refusing to use a connection whose protocol state it no longer trusts (after an unsolicited
    # FATAL from a server shutting down, say): the connection is as good as lost
    asyncpg.InternalClientError,
)
# What a server says about one statement, leaving the connection and the session healthy.
_STATEMENT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.DataError,
)

# Table constraints a write can break, as the API names them (sql/).
_CHECKS = {
    "api_keys_validity_window": ("expires_at", "must be after not_before"),
    "api_keys_job_id_fkey": ("job_id", "no job with this id"),
    "api_keys_close_needs_job": ("can_close_job", "only a key bound to a job may close it"),
    "api_keys_candidate_since": ("candidate_policy", "candidate_policy and candidate_since go together"),
}


@contextlib.contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn asyncpg/OS errors raised inside the block into ours, chaining the original."""
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(f"{what}: {exc.detail or exc}") from exc
    except (asyncpg.CheckViolationError, asyncpg.ForeignKeyViolationError) as exc:
        field, reason = _CHECKS.get(exc.constraint_name or "", (exc.column_name or what, str(exc)))
        raise ValidationError(field, reason) from exc
    except (asyncpg.NotNullViolationError, asyncpg.DataError) as exc:
        raise ValidationError(exc.column_name or exc.constraint_name or what, str(exc)) from exc
    except CONNECTION_ERRORS as exc:
        raise StoreUnavailable(f"{what}: PostgreSQL unreachable ({type(exc).__name__}: {exc})") from exc
    except asyncpg.PostgresError as exc:
        raise StoreUnavailable(f"{what}: PostgreSQL error ({type(exc).__name__}: {exc})") from exc


def breaks_connection(exc: BaseException) -> bool:
    """Whether the connection may be unusable after ``exc``: a driver, socket or timeout error other
    than a statement the server refused, or a cancellation (an operation may be left half done). The
    caller's own exceptions between statements (NotFound, say) leave it as good as it was."""
    if isinstance(exc, _STATEMENT_ERRORS):
        return False
    return isinstance(exc, (*CONNECTION_ERRORS, asyncpg.PostgresError)) or not isinstance(exc, Exception)
