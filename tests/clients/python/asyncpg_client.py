"""asyncpg against the `compat` database. asyncpg always uses the extended
protocol with named prepared statements and binary formats, and looks up
types it does not know (the enum `mood`, the composite `address`) with its
own catalog queries. Steps: explicit prepared statements, binary decoding
of every type of `kinds`, custom types as results and parameters, COPY out,
a cursor (Execute with a row limit) in a transaction; with --writes
executemany and copy_records_to_table into tables of its own, and a
database error on a prepared statement; with --refusals the statements the
masked role is refused, each followed by a working query.

Connects with the PG* variables (TLS from PGSSLMODE/PGSSLROOTCERT). Prints
a canonical transcript (see common.py)."""

import asyncio
import datetime
import decimal
import io

import asyncpg

from common import emit, endpoint, error, flags, ssl_context


PATIENTS = ("SELECT id, clinic_id, name, ssn, email, dob, phone "
            "FROM patients WHERE id BETWEEN $1 AND $2 ORDER BY id")


def attributes(stmt):
    return [[a.name, a.type.name, a.type.kind, a.type.schema]
            for a in stmt.get_attributes()]


def parameters(stmt):
    return [[t.name, t.kind] for t in stmt.get_parameters()]


async def connect():
    ep = endpoint()
    return await asyncpg.connect(
        host=ep["host"], port=ep["port"], user=ep["user"],
        password=ep["password"], database=ep["database"], ssl=ssl_context())


async def reads(conn):
    stmt = await conn.prepare(PATIENTS)
    emit("prepared", attributes=attributes(stmt), parameters=parameters(stmt),
         rows=await stmt.fetch(1, 12))
    emit("prepared_again", rows=await stmt.fetch(13, 16),
         row=await stmt.fetchrow(30, 40), value=await stmt.fetchval(7, 7))
    emit("fetch_params", rows=await conn.fetch(
        "SELECT count(*), min(dob), max(ssn) FROM patients "
        "WHERE dob < $1 AND email LIKE $2",
        datetime.date(1980, 1, 1), "%example.org"))

    # Every type of `kinds`, binary; the enum and the composite make asyncpg
    # introspect them in the catalog.
    stmt = await conn.prepare("SELECT * FROM kinds WHERE id <= $1 ORDER BY id")
    emit("kinds", attributes=attributes(stmt), rows=await stmt.fetch(4))
    emit("custom_params", rows=await conn.fetch(
        "SELECT id, m, a FROM kinds WHERE m = $1 AND a = $2::address",
        "tense", ("Main St 4", "00004")))
    emit("enum_array", value=await conn.fetchval(
        "SELECT array_agg(m ORDER BY id) FROM kinds WHERE id <= $1", 5))

    # COPY out of a query.
    buf = io.BytesIO()
    await conn.copy_from_query(
        "SELECT id, clinic_id, ssn, email FROM patients WHERE id <= $1 ORDER BY id",
        12, output=buf, format="csv")
    emit("copy_out", lines=buf.getvalue().decode().splitlines())

    # A cursor: Execute with a row limit, several round trips on one portal.
    async with conn.transaction():
        got = []
        async for row in conn.cursor(
                "SELECT id, ssn FROM patients WHERE id <= $1 ORDER BY id", 30,
                prefetch=4):
            got.append(row)
        cur = await conn.cursor("SELECT id, email FROM patients ORDER BY id")
        first = await cur.fetch(3)
        await cur.forward(5)
        then = await cur.fetchrow()
    emit("cursor", rows=got, first=first, then=then)


async def writes(conn):
    rows = [(i, f"item {i}", ["calm", "tense", "elated"][i % 3],
             (f"Street {i}", f"{i:05d}"), decimal.Decimal(i) / 8)
            for i in range(1, 41)]
    await conn.execute("DELETE FROM py_asyncpg_many")
    await conn.executemany(
        "INSERT INTO py_asyncpg_many (id, label, m, a, amount) "
        "VALUES ($1, $2, $3, $4, $5)", rows)
    back = await conn.fetch("SELECT id, label, m, a, amount FROM py_asyncpg_many ORDER BY id")
    emit("executemany", count=len(back),
         same=[tuple(r.values()) for r in back]
         == [(i, l, m, tuple(a), n) for i, l, m, a, n in rows],
         first=back[:2])

    await conn.execute("DELETE FROM py_asyncpg_copy")
    records = [(i, f"rec {i}", datetime.datetime(2024, 6, 1, tzinfo=datetime.timezone.utc)
                + datetime.timedelta(hours=i), [i, i * i], b"\x00\x01" + bytes([i]))
               for i in range(1, 101)]
    result = await conn.copy_records_to_table(
        "py_asyncpg_copy", records=records,
        columns=["id", "label", "at", "nums", "raw"])
    back = await conn.fetch("SELECT id, label, at, nums, raw FROM py_asyncpg_copy ORDER BY id")
    emit("copy_records", result=result, count=len(back),
         same=[(r["id"], r["label"], r["at"], r["nums"], r["raw"]) for r in back]
         == [(i, l, at, list(n), raw) for i, l, at, n, raw in records],
         last=back[-1])

    # A database error on a prepared statement, then the connection goes on.
    stmt = await conn.prepare("SELECT 10 / $1::int")
    try:
        await stmt.fetchval(0)
        emit("prepared_error", raised=False)
    except asyncpg.PostgresError as exc:
        emit("prepared_error", raised=True, error=error(exc))
    emit("prepared_error_then", value=await stmt.fetchval(5),
         other=await conn.fetchval("SELECT count(*) FROM clinics"))


async def refused(conn, label, call):
    try:
        result = await call()
        emit(label, raised=False, result=result)
    except asyncpg.PostgresError as exc:
        emit(label, raised=True, error=error(exc))
    # The connection goes on, prepared statements included.
    emit(label + "_then", rows=await conn.fetch(
        "SELECT id, ssn FROM patients WHERE id = $1", 3))


async def refusals(conn):
    # A denied column is hidden: as if the table did not have it.
    await refused(conn, "hidden_denied_column",
                  lambda: conn.fetch("SELECT notes FROM visits WHERE id = $1", 4))
    await refused(conn, "refused_function",
                  lambda: conn.fetchval("SELECT pg_read_file($1)", "/etc/hostname"))
    await refused(conn, "refused_prepare",
                  lambda: conn.prepare("SELECT id, pg_read_file($1) FROM visits WHERE id = $2"))
    await refused(conn, "refused_update",
                  lambda: conn.execute("UPDATE patients SET name = $1 WHERE id = $2", "x", 3))
    await refused(conn, "refused_executemany",
                  lambda: conn.executemany("INSERT INTO clinics (id, name, city) "
                                           "VALUES ($1, $2, $3)",
                                           [(90, "a", "b"), (91, "c", "d")]))
    await refused(conn, "refused_copy_records",
                  lambda: conn.copy_records_to_table(
                      "clinics", records=[(92, "e", "f")],
                      columns=["id", "name", "city"]))

    # Inside a transaction the refusal aborts it like any error; the
    # transaction block rolls back and the connection goes on.
    try:
        async with conn.transaction():
            await conn.fetchval("SELECT count(*) FROM patients")
            await conn.execute("UPDATE patients SET name = $1 WHERE id = $2", "x", 3)
        emit("refused_in_transaction", raised=False)
    except asyncpg.PostgresError as exc:
        emit("refused_in_transaction", raised=True, error=error(exc))
    emit("refused_in_transaction_then",
         value=await conn.fetchval("SELECT count(*) FROM patients"),
         in_transaction=conn.is_in_transaction())


async def main():
    opts = flags()
    conn = await connect()
    try:
        await reads(conn)
        if opts["writes"]:
            await writes(conn)
        if opts["refusals"]:
            await refusals(conn)
    finally:
        await conn.close()
    emit("done", closed=conn.is_closed())


if __name__ == "__main__":
    asyncio.run(main())
