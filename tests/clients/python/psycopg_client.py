"""psycopg 3 against the `compat` database: server-side binding, prepared
statements, binary results, the custom types of `kinds`, COPY out (text
and binary), pipeline mode; with --writes COPY into `py_copy` (text and
binary) and a database error in the middle of a pipeline; with --refusals
the statements the masked role is refused, each followed by proof that the
connection (and a pipeline) goes on.

Connects with libpq's PG* variables. Prints a canonical transcript (see
common.py)."""

import datetime
import decimal

import psycopg
from psycopg import errors
from psycopg.adapt import PyFormat
from psycopg.types.composite import CompositeInfo, register_composite
from psycopg.types.enum import EnumInfo, register_enum

from common import emit, error, flags


PATIENTS = ("SELECT id, clinic_id, name, ssn, email, dob, phone "
            "FROM patients WHERE id BETWEEN %s AND %s ORDER BY id")


def columns(cur):
    return [[c.name, c.type_display] for c in cur.description]


def reads(conn):
    with conn.cursor() as cur:
        # Server-side binding: the parameters travel in Bind, not in the text.
        cur.execute(PATIENTS, (1, 12))
        emit("bound", cursor=type(cur).__name__, columns=columns(cur),
             rows=cur.fetchall())
        cur.execute("SELECT count(*), count(DISTINCT clinic_id) FROM patients "
                    "WHERE dob < %s AND name <> %s",
                    (datetime.date(1980, 1, 1), "nobody"))
        emit("bound_types", rows=cur.fetchall())

    # Prepared statements: the same query three times with prepare=True
    # runs Parse once, then Bind/Execute on the named statement.
    with conn.cursor() as cur:
        rows = []
        for pid in (3, 6, 7):
            cur.execute("SELECT id, clinic_id, ssn, email FROM patients "
                        "WHERE id = %s", (pid,), prepare=True)
            rows.append(cur.fetchall())
        emit("prepared", rows=rows)
        # Automatic preparation after prepare_threshold executions.
        conn.prepare_threshold = 2
        counts = []
        for day in range(5):
            cur.execute("SELECT count(*) FROM visits WHERE visited_at < %s",
                        (datetime.datetime(2024, 3, 1 + day,
                                           tzinfo=datetime.timezone.utc),))
            counts.append(cur.fetchone()[0])
        conn.prepare_threshold = 5
        emit("auto_prepared", counts=counts)

    # Binary results, for every type of `kinds` and for masked columns.
    with conn.cursor(binary=True) as cur:
        cur.execute("SELECT id, tags, data, amount, at, day, raw, uid, ratio, "
                    "big, flag FROM kinds WHERE id <= %s ORDER BY id", (4,))
        formats = sorted({cur.pgresult.fformat(i)
                          for i in range(cur.pgresult.nfields)})
        emit("binary_kinds", formats=formats, columns=columns(cur),
             rows=cur.fetchall())
    with conn.cursor() as cur:
        cur.execute(PATIENTS, (1, 12), binary=True)
        formats = sorted({cur.pgresult.fformat(i)
                          for i in range(cur.pgresult.nfields)})
        emit("binary_patients", formats=formats, rows=cur.fetchall())

    # The enum and the composite, looked up in the catalog and registered.
    mood = EnumInfo.fetch(conn, "mood")
    address = CompositeInfo.fetch(conn, "address")
    emit("type_info", mood=[mood.name, list(mood.labels)],
         address=[address.name, list(address.field_names)])
    register_enum(mood, conn)
    register_composite(address, conn)
    for binary in (False, True):
        with conn.cursor(binary=binary) as cur:
            cur.execute("SELECT id, m, a FROM kinds WHERE id <= 3 ORDER BY id")
            emit("custom_types", binary=binary, rows=cur.fetchall())
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM kinds WHERE m = %s AND a = %s",
                    (mood.enum["tense"],
                     address.python_type("Main St 4", "00004")))
        emit("custom_params", rows=cur.fetchall())

    # COPY out of a query and of a table, text and binary.
    with conn.cursor() as cur:
        with cur.copy("COPY (SELECT id, clinic_id, ssn, email, dob "
                      "FROM patients WHERE id <= 12 ORDER BY id) TO STDOUT") as copy:
            text = b"".join(bytes(chunk) for chunk in copy).decode()
        emit("copy_out_query", lines=text.splitlines())
        with cur.copy("COPY clinics TO STDOUT (FORMAT csv, HEADER)") as copy:
            text = b"".join(bytes(chunk) for chunk in copy).decode()
        emit("copy_out_table", lines=text.splitlines())
        with cur.copy("COPY (SELECT id, ssn, dob, m FROM patients "
                      "JOIN kinds USING (id) WHERE id <= 9 ORDER BY id) "
                      "TO STDOUT (FORMAT binary)") as copy:
            copy.set_types(["int4", "text", "date", "mood"])
            rows = list(copy.rows())
        emit("copy_out_binary", rows=rows)
    conn.commit()

    # Pipeline mode: several statements, one Sync.
    with conn.pipeline():
        c1 = conn.execute("SELECT count(*) FROM patients")
        c2 = conn.execute(PATIENTS, (10, 15))
        c3 = conn.execute("SELECT name FROM clinics ORDER BY id")
    emit("pipeline", count=c1.fetchall(), patients=c2.fetchall(),
         clinics=c3.fetchall())
    conn.commit()


def writes(conn):
    # The statements psycopg prepared really are prepared in the session
    # (the masked role may not read pg_prepared_statements).
    with conn.cursor() as cur:
        cur.execute("SELECT statement, parameter_types::text[] FROM pg_prepared_statements "
                    "WHERE NOT from_sql ORDER BY statement")
        emit("prepared_on_server", statements=cur.fetchall())
    conn.commit()

    rows = [(i, f"label {i}", decimal.Decimal(i) / 4,
             datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
             + datetime.timedelta(minutes=37 * i))
            for i in range(1, 51)]
    with conn.cursor() as cur:
        cur.execute("DELETE FROM py_copy")
        with cur.copy("COPY py_copy (id, label, amount, at) FROM STDIN") as copy:
            for row in rows[:25]:
                copy.write_row(row)
        emit("copy_in_text", rowcount=cur.rowcount)
        with cur.copy("COPY py_copy (id, label, amount, at) FROM STDIN "
                      "(FORMAT binary)") as copy:
            copy.set_types(["int4", "text", "numeric", "timestamptz"])
            for row in rows[25:]:
                copy.write_row(row)
        emit("copy_in_binary", rowcount=cur.rowcount)
        conn.commit()
        cur.execute("SELECT id, label, amount, at FROM py_copy ORDER BY id")
        back = cur.fetchall()
        emit("copy_in_back", same=back == rows, count=len(back),
             first=back[:2], last=back[-2:])
    conn.commit()

    # A database error mid-pipeline: the statement before it ran, the ones
    # after it up to the Sync are aborted, the error is raised when the
    # pipeline ends, and the connection goes on (in a new pipeline too).
    conn.autocommit = True
    pipeline_error(conn, "pipeline_error", "SELECT 1 / (%s - 1)", (1,))
    conn.autocommit = False


def pipeline_error(conn, label, sql, params):
    """psycopg may raise a pipeline's error at any later call in the block
    (it reads results as they arrive) or at its end: only what does not
    depend on when is printed."""
    c1 = c3 = None
    try:
        with conn.pipeline():
            c1 = conn.execute("SELECT count(*) FROM clinics")
            conn.execute(sql, params)
            c3 = conn.execute("SELECT count(*) FROM patients")
        emit(label, raised=False)
    except psycopg.Error as exc:
        emit(label, raised=True, error=error(exc), before=c1.fetchall(),
             status=conn.info.transaction_status.name)
    try:
        c3.fetchall()
        emit(label + "_after", fetched=True)
    except (psycopg.Error, AttributeError):
        emit(label + "_after", fetched=False)
    with conn.pipeline():
        c4 = conn.execute("SELECT count(*) FROM patients")
        c5 = conn.execute(PATIENTS, (1, 6))
    c6 = conn.execute("SELECT count(*) FROM visits")
    emit(label + "_then", count=c4.fetchall(), rows=c5.fetchall(),
         visits=c6.fetchall())


def refused(conn, label, sql, params=None, **kw):
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params, **kw)
            emit(label, raised=False, rows=cur.fetchall() if cur.description else None)
    except psycopg.Error as exc:
        emit(label, raised=True, error=error(exc),
             transaction=conn.info.transaction_status.name)
        conn.rollback()
    # The connection goes on.
    with conn.cursor() as cur:
        cur.execute("SELECT id, ssn FROM patients WHERE id = %s", (3,))
        emit(label + "_then", rows=cur.fetchall())


def refusals(conn):
    # A denied column is hidden: as if the table did not have it.
    refused(conn, "hidden_denied_column", "SELECT notes FROM visits WHERE id = %s", (4,))
    refused(conn, "refused_function", "SELECT pg_read_file(%s)", ("/etc/hostname",))
    refused(conn, "refused_catalog", "SELECT rolname, rolpassword FROM pg_authid")
    refused(conn, "refused_update", "UPDATE patients SET name = %s WHERE id = %s", ("x", 3))
    refused(conn, "refused_prepared", "SELECT id, pg_read_file(%s) FROM visits WHERE id = %s",
            ("/etc/hostname", 4), prepare=True)
    refused(conn, "refused_copy_in", "COPY clinics FROM STDIN")
    conn.commit()

    # Mid-pipeline: the refusal arrives as an ordinary error, the statements
    # after it up to the Sync are aborted, and the connection goes on.
    conn.autocommit = True
    pipeline_error(conn, "pipeline_refused",
                   "UPDATE patients SET name = %s WHERE id = %s", ("x", 3))
    conn.autocommit = False


def main():
    opts = flags()
    with psycopg.connect() as conn:
        reads(conn)
        if opts["writes"]:
            writes(conn)
        if opts["refusals"]:
            refusals(conn)
        emit("done", closed=conn.closed)


if __name__ == "__main__":
    main()
