"""SQLAlchemy (psycopg 3 dialect) against the `compat` database: reflection
with `inspect(engine)` — tables, columns, keys, foreign keys, indexes,
constraints, views and their definitions, enums — then `MetaData.reflect`
and ordinary Core queries on the reflected tables, and a write the
masked role is refused (42501) after which its connection goes on.

Only the fixture's own objects are reflected (other tests create and drop
tables of their own in the same database while this runs). Connects with
the PG* variables. Prints a canonical transcript (see common.py)."""

import warnings

from sqlalchemy import MetaData, create_engine, func, inspect, select, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from common import emit, endpoint

TABLES = ["clinics", "kinds", "patients", "visits"]
VIEWS = ["clinic_counts"]


def engine():
    ep = endpoint()
    query = {"sslmode": ep["sslmode"]}
    if ep["sslrootcert"]:
        query["sslrootcert"] = ep["sslrootcert"]
    url = URL.create("postgresql+psycopg", username=ep["user"],
                     password=ep["password"], host=ep["host"], port=ep["port"],
                     database=ep["database"], query=query)
    return create_engine(url, pool_pre_ping=True)


def column(c):
    return {"name": c["name"], "type": repr(c["type"]),
            "nullable": c["nullable"], "default": c.get("default"),
            "autoincrement": c.get("autoincrement")}


def reflect(eng):
    insp = inspect(eng)
    emit("schemas", public="public" in insp.get_schema_names(),
         default=insp.default_schema_name)
    names = insp.get_table_names()
    emit("tables", fixture=[t for t in TABLES if t in names])
    for table in TABLES:
        emit("table", name=table,
             columns=[column(c) for c in insp.get_columns(table)],
             pk=insp.get_pk_constraint(table),
             fks=sorted(insp.get_foreign_keys(table),
                        key=lambda fk: fk["constrained_columns"]),
             indexes=sorted(insp.get_indexes(table), key=lambda i: i["name"]),
             unique=insp.get_unique_constraints(table),
             checks=insp.get_check_constraints(table),
             comment=insp.get_table_comment(table))
    views = insp.get_view_names()
    emit("views", fixture=[v for v in VIEWS if v in views])
    for view in VIEWS:
        emit("view", name=view,
             definition=" ".join(insp.get_view_definition(view).split()),
             columns=[column(c) for c in insp.get_columns(view)])
    emit("enums", enums=[e for e in insp.get_enums() if e["name"] == "mood"])
    emit("has", patients=insp.has_table("patients"),
         missing=insp.has_table("no_such_table"),
         view=insp.has_table("clinic_counts"))


def query(eng):
    meta = MetaData()
    meta.reflect(eng, only=TABLES + VIEWS, views=True)
    emit("metadata", tables=sorted(meta.tables))
    patients, visits, clinics = (meta.tables[n] for n in ("patients", "visits", "clinics"))
    with eng.connect() as conn:
        rows = conn.execute(
            select(patients.c.id, patients.c.clinic_id, patients.c.name,
                   patients.c.ssn, patients.c.email, patients.c.dob)
            .where(patients.c.id.between(1, 12)).order_by(patients.c.id)).all()
        emit("select", rows=[tuple(r) for r in rows])
        rows = conn.execute(
            select(clinics.c.name, func.count(visits.c.id))
            .select_from(visits.join(clinics))
            .group_by(clinics.c.name).order_by(clinics.c.name)).all()
        emit("join", rows=[tuple(r) for r in rows])
        rows = conn.execute(
            select(visits.c.id, visits.c.reason, patients.c.email)
            .select_from(visits.join(patients, visits.c.patient_id == patients.c.id))
            .where(visits.c.id < 10).order_by(visits.c.id)).all()
        emit("fk_join", rows=[tuple(r) for r in rows])
        rows = conn.execute(text("SELECT id, m, a FROM kinds WHERE id <= :n ORDER BY id"),
                            {"n": 3}).all()
        emit("custom_types", rows=[tuple(r) for r in rows])


def refusal(eng):
    """A write that changes nothing: allowed for an unrestricted person,
    refused (42501) for a read-only role, whose connection then goes on."""
    meta = MetaData()
    meta.reflect(eng, only=["patients"])
    patients = meta.tables["patients"]
    with eng.connect() as conn:
        try:
            res = conn.execute(patients.update().values(phone=patients.c.phone)
                               .where(patients.c.id == -1))
            emit("refusal", refused=False, rows=res.rowcount)
            conn.rollback()
        except DBAPIError as e:
            emit("refusal", refused=True, error=type(e).__name__,
                 sqlstate=getattr(e.orig, "sqlstate", None),
                 pgward=str(e.orig).startswith("pgward:"))
            conn.rollback()
        n = conn.execute(select(func.count()).select_from(patients)).scalar_one()
        emit("after_refusal", patients=n)


def main():
    warnings.simplefilter("ignore")  # "Did not recognize type 'address'"
    eng = engine()
    try:
        reflect(eng)
        query(eng)
        refusal(eng)
    finally:
        eng.dispose()
    emit("done")


if __name__ == "__main__":
    main()
