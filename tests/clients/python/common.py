"""What the Python client programs share: where to connect (the libpq PG*
variables, so one program serves the direct and the proxied runs) and a
canonical, deterministic transcript (one JSON object per line, keys sorted,
values reduced to JSON in a way that does not depend on the session: time
stamps in UTC, numerics as their exact text, bytes as hex)."""

import datetime
import decimal
import enum
import ipaddress
import json
import os
import ssl
import sys
import uuid


def env(name, default=None):
    value = os.environ.get(name)
    return value if value else default


def endpoint():
    """host, port, user, password, database, sslmode, sslrootcert."""
    return {
        "host": env("PGHOST", "127.0.0.1"),
        "port": int(env("PGPORT", "5432")),
        "user": env("PGUSER"),
        "password": env("PGPASSWORD"),
        "database": env("PGDATABASE"),
        "sslmode": env("PGSSLMODE", "disable"),
        "sslrootcert": env("PGSSLROOTCERT"),
    }


def ssl_context():
    """What asyncpg's `ssl=` gets: False when PGSSLMODE=disable, else a
    context trusting PGSSLROOTCERT, with host name checks for verify-full."""
    ep = endpoint()
    mode = ep["sslmode"]
    if mode == "disable":
        return False
    ctx = ssl.create_default_context(cafile=ep["sslrootcert"])
    if mode == "verify-full":
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif mode == "verify-ca":
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def plain(value):
    """A value as canonical JSON data."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.timezone.utc)
        return value.isoformat()
    if isinstance(value, (datetime.date, datetime.time, datetime.timedelta)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(value).hex()
    if isinstance(value, (uuid.UUID, ipaddress._BaseAddress)):
        return str(value)
    if isinstance(value, enum.Enum):
        return {"enum": type(value).__name__, "value": plain(value.value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if hasattr(value, "_asdict"):  # named tuples (psycopg composites)
        return {"composite": type(value).__name__,
                "fields": plain(dict(value._asdict()))}
    if hasattr(value, "items") and hasattr(value, "keys"):  # asyncpg Record
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return {"repr": repr(value)}


def emit(step, **fields):
    """One transcript line."""
    fields["step"] = step
    print(json.dumps(plain(fields), sort_keys=True), flush=True)


def error(exc):
    """What a client shows of a database error: its class, SQLSTATE and
    message (the part a person reads)."""
    sqlstate = getattr(exc, "sqlstate", None)
    diag = getattr(exc, "diag", None)
    message = None
    if diag is not None:
        message = diag.message_primary
    if message is None:
        message = getattr(exc, "message", None) or str(exc).splitlines()[0]
    return {"class": type(exc).__name__, "sqlstate": sqlstate,
            "message": message}


def flags():
    """The program's switches: --writes (steps that write, for the
    unrestricted runs) and --refusals (statements the masked role is
    refused)."""
    return {"writes": "--writes" in sys.argv[1:],
            "refusals": "--refusals" in sys.argv[1:]}
