#!/usr/bin/env python3
"""The pgveil driver-matrix scenario for Python drivers (run by tests/drivers.rs).

    matrix.py MODE TAG NN PORT

MODE is one of
  psycopg-default    psycopg 3 with its default prepare_threshold (5)
  psycopg-prepare    psycopg 3, every execute with prepare=True
  psycopg-noprepare  psycopg 3 with prepare_threshold=None (never prepares)
  asyncpg            asyncpg (binary formats, statement cache)

TAG and NN make the values unique to this run (see `Scenario` in
tests/drivers.rs); PORT is pgveil's. Prints one JSON object per step and
exits 1 on the first mismatch.
"""

import asyncio
import datetime
import json
import sys
import traceback

MODE, TAG, NN, PORT = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
PREPARED_RUNS = 12
REFUSED = "SELECT id FROM users ORDER BY email"  # pgveil refuses: 0A000
STEP = "start"


def url(role):
    return f"postgresql://{role}@127.0.0.1:{PORT}/app?sslmode=disable"


def email(who):
    return f"{TAG}-{who}@example.com"


def name(what):
    return f"{TAG} {what}"


def ssn(mid):
    return f"9{NN:02d}-{mid}"


def bob_variant():
    """Bob's address as a user might type it: the normalisers find it."""
    return "  " + email("bob").upper().replace("EXAMPLE", "Example") + " "


DANA = (name("Dana Patient"), datetime.date(1984, 2, 29), ssn("11-2222"), 87)
ELI = (name("Eli Patient"), datetime.date(1990, 1, 15), ssn("33-4444"), 12)
FAY = (name("Fay Rolled Back"), datetime.date(2001, 7, 4), ssn("55-6666"), 5)


def step(s):
    global STEP
    STEP = s


def ok(**detail):
    print(json.dumps({"driver": MODE, "step": STEP, "ok": True, **detail}), flush=True)


def expect(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def is_envelope(b):
    return isinstance(b, (bytes, bytearray, memoryview)) and bytes(b[:2]) == b"pv"


def plaintext_free(value):
    """No name (tag and a space) or email of this run in a stored value."""
    text = value if isinstance(value, str) else bytes(value).decode("latin-1")
    return f"{TAG} ".lower() not in text.lower() and "@example.com" not in text.lower()


# --------------------------------------------------------------------------
# psycopg 3
# --------------------------------------------------------------------------


def run_psycopg():
    import psycopg

    kw = {"prepare": True} if MODE == "psycopg-prepare" else {}

    def connect(role):
        c = psycopg.connect(url(role), autocommit=True)
        if MODE == "psycopg-noprepare":
            c.prepare_threshold = None
        return c

    def ex(conn, sql, params=None):
        return conn.execute(sql, params, **kw)

    app, doc = connect("calmony_app"), connect("clinician")

    step("insert")
    for who in ("ann", "bob", "cat"):
        cur = ex(app, "INSERT INTO users (email, name) VALUES (%s, %s)",
                 (email(who), name(f"{who.capitalize()} Example")))
        expect(cur.rowcount, 1, "insert rowcount")
    ex(doc, "INSERT INTO phi.member_profile (legal_name, date_of_birth, ssn, risk_score) "
            "VALUES (%s, %s, %s, %s)", DANA)
    # Binary parameters (%b) for the second row.
    ex(doc, "INSERT INTO phi.member_profile (legal_name, date_of_birth, ssn, risk_score) "
            "VALUES (%b, %b, %b, %b)", ELI)
    ok()

    step("lookup")
    expect(ex(app, "SELECT name FROM users WHERE email = %s", (bob_variant(),)).fetchall(),
           [(name("Bob Example"),)], "lookup bob")
    expect(ex(app, "SELECT name FROM users WHERE email = %s", (email("nobody"),)).fetchall(),
           [], "lookup miss")
    digits = ssn("11-2222").replace("-", "")
    expect(ex(doc, "SELECT legal_name, date_of_birth, risk_score FROM phi.member_profile "
                   "WHERE ssn = %s", (digits,)).fetchall(),
           [(DANA[0], DANA[1], 87)], "lookup dana (text results)")
    bcur = doc.cursor(binary=True)
    bcur.execute("SELECT legal_name, date_of_birth, risk_score FROM phi.member_profile "
                 "WHERE ssn = %s", (digits,), **kw)
    expect(bcur.fetchall(), [(DANA[0], DANA[1], 87)], "lookup dana (binary results)")
    with connect("intake") as intake:
        rows = ex(intake, "SELECT id, legal_name FROM phi.member_profile WHERE ssn = %s",
                  (digits,)).fetchall()
        expect(len(rows), 1, "intake may search")
        expect(is_envelope(rows[0][1]), True, "intake reads ciphertext")
    ok()

    step("update")
    expect(ex(app, "UPDATE users SET name = %s WHERE email = %s",
              (name("Bob Updated"), email("bob"))).rowcount, 1, "update name")
    expect(ex(app, "UPDATE users SET email = %s WHERE email = %s",
              (email("cat2"), email("cat"))).rowcount, 1, "update email")
    expect(ex(app, "SELECT name FROM users WHERE email = %s", (email("cat2"),)).fetchall(),
           [(name("Cat Example"),)], "lookup by the new email")
    expect(ex(app, "SELECT name FROM users WHERE email = %s", (email("cat"),)).fetchall(),
           [], "the old email is gone")
    expect(ex(doc, "UPDATE phi.member_profile SET risk_score = %s WHERE ssn = %s",
              (88, ssn("11-2222"))).rowcount, 1, "update risk_score")
    ok()

    step("delete")
    expect(ex(app, "DELETE FROM users WHERE email = %s", (email("ann"),)).rowcount, 1, "delete ann")
    expect(ex(doc, "DELETE FROM phi.member_profile WHERE ssn = %s", (ssn("33-4444"),)).rowcount,
           1, "delete eli")
    ok()

    step("read_plaintext")
    expect(ex(app, "SELECT email, name FROM users ORDER BY id").fetchall(),
           [(email("bob"), name("Bob Updated")), (email("cat2"), name("Cat Example"))], "users")
    expect(ex(doc, "SELECT legal_name, date_of_birth, ssn, risk_score FROM phi.member_profile").fetchall(),
           [(DANA[0], DANA[1], DANA[2], 88)], "member_profile")
    ok()

    step("read_ciphertext")
    with connect("dba") as dba:
        rows = ex(dba, "SELECT email, name FROM users ORDER BY id").fetchall()
        expect(len(rows), 2, "dba sees the rows")
        for e, n in rows:
            expect(is_envelope(e), True, "email is an envelope")
            expect(n.startswith("pgv1:") and plaintext_free(n), True, "name is an envelope")
        for v in ex(dba, "SELECT legal_name, date_of_birth, ssn, risk_score "
                         "FROM phi.member_profile").fetchone():
            expect(is_envelope(v) and plaintext_free(v), True, "member_profile envelope")
    ok()

    step("transaction_rollback")
    with app.transaction(force_rollback=True):
        ex(app, "INSERT INTO users (email, name) VALUES (%s, %s)", (email("tx"), name("Tx Rolled Back")))
        expect(ex(app, "SELECT name FROM users WHERE email = %s", (email("tx"),)).fetchall(),
               [(name("Tx Rolled Back"),)], "own write inside the transaction")
        ex(app, "UPDATE users SET name = %s WHERE email = %s", (name("Bob In Tx"), email("bob")))
    expect(ex(app, "SELECT count(*) FROM users WHERE email = %s", (email("tx"),)).fetchone(),
           (0,), "insert rolled back")
    expect(ex(app, "SELECT name FROM users WHERE email = %s", (email("bob"),)).fetchone(),
           (name("Bob Updated"),), "update rolled back")
    with doc.transaction(force_rollback=True):
        ex(doc, "INSERT INTO phi.member_profile (legal_name, date_of_birth, ssn, risk_score) "
                "VALUES (%s, %s, %s, %s)", FAY)
    expect(ex(doc, "SELECT count(*) FROM phi.member_profile WHERE ssn = %s", (FAY[2],)).fetchone(),
           (0,), "member insert rolled back")
    ok()

    step("prepared_many")
    for i in range(PREPARED_RUNS):
        ex(app, "INSERT INTO users (email, name) VALUES (%s, %s)",
           (email(f"p{i}"), name(f"Prepared {i}")))
    for i in range(PREPARED_RUNS):
        expect(ex(app, "SELECT name FROM users WHERE email = %s", (email(f"P{i}").upper(),)).fetchall(),
               [(name(f"Prepared {i}"),)], f"prepared lookup {i}")
    named = app.execute("SELECT count(*) FROM pg_prepared_statements "
                        "WHERE statement LIKE '%%users%%'").fetchone()[0]
    if MODE == "psycopg-noprepare":
        expect(named, 0, "prepare_threshold=None never prepares")
    else:
        expect(named >= 2, True, f"server-side prepared statements ({named})")
    ok(server_prepared=named)

    step("pipeline_error")
    # One pipeline, one Sync after the first two statements: those stand;
    # the refused statement aborts the rest up to the final Sync, like any
    # error in a pipeline.
    try:
        with app.pipeline() as p:
            ex(app, "INSERT INTO users (email, name) VALUES (%s, %s)", (email("pipe1"), name("Pipe One")))
            c1 = app.cursor()
            c1.execute("SELECT name FROM users WHERE email = %s", (email("pipe1"),), **kw)
            p.sync()
            ex(app, REFUSED)
            ex(app, "INSERT INTO users (email, name) VALUES (%s, %s)", (email("pipe3"), name("Pipe Three")))
        raise AssertionError("the pipeline did not fail")
    except psycopg.errors.FeatureNotSupported as e:
        expect(e.sqlstate, "0A000", "refusal")
    expect(c1.fetchall(), [(name("Pipe One"),)], "result of a statement before the error")
    expect(ex(app, "SELECT count(*) FROM users WHERE email = %s", (email("pipe1"),)).fetchone(),
           (1,), "pipe1 stands")
    expect(ex(app, "SELECT count(*) FROM users WHERE email = %s", (email("pipe3"),)).fetchone(),
           (0,), "pipe3 was skipped")
    # executemany runs in pipeline mode (one Sync): a duplicate key in the
    # middle leaves nothing behind.
    bob_id = ex(app, "SELECT id FROM users WHERE email = %s", (email("bob"),)).fetchone()[0]
    try:
        app.cursor().executemany(
            "INSERT INTO users (id, email, name) VALUES (%s, %s, %s)",
            [(900002, email("pipe2"), name("Pipe Two")), (bob_id, email("pipe2"), name("Pipe Two")),
             (900003, email("pipe3"), name("Pipe Three"))])
        raise AssertionError("executemany did not fail")
    except psycopg.errors.UniqueViolation:
        pass
    expect(ex(app, "SELECT count(*) FROM users WHERE email = ANY(%s)",
              ([email("pipe2"), email("pipe3")],)).fetchone(), (0,), "executemany is atomic")
    ok()

    step("usable_after_error")
    with app.pipeline():
        ex(app, "INSERT INTO users (email, name) VALUES (%s, %s)", (email("pipe3"), name("Pipe Three")))
        c3 = app.cursor()
        c3.execute("SELECT name FROM users WHERE email = %s", (email("pipe3"),), **kw)
    expect(c3.fetchall(), [(name("Pipe Three"),)], "pipeline after the error")
    expect(ex(app, "SELECT name FROM users WHERE email = %s", (email("bob"),)).fetchone(),
           (name("Bob Updated"),), "plain lookup after the error")
    ok()
    for c in (app, doc):
        c.close()


# --------------------------------------------------------------------------
# asyncpg
# --------------------------------------------------------------------------


async def run_asyncpg():
    import asyncpg

    app = await asyncpg.connect(url("calmony_app"))
    doc = await asyncpg.connect(url("clinician"))
    ins_member = ("INSERT INTO phi.member_profile (legal_name, date_of_birth, ssn, risk_score) "
                  "VALUES ($1, $2, $3, $4)")

    step("insert")
    for who in ("ann", "bob", "cat"):
        expect(await app.execute("INSERT INTO users (email, name) VALUES ($1, $2)",
                                 email(who), name(f"{who.capitalize()} Example")),
               "INSERT 0 1", "insert status")
    await doc.execute(ins_member, *DANA)
    await doc.execute(ins_member, *ELI)
    ok()

    step("lookup")
    expect(await app.fetchval("SELECT name FROM users WHERE email = $1", bob_variant()),
           name("Bob Example"), "lookup bob")
    expect(await app.fetch("SELECT name FROM users WHERE email = $1", email("nobody")), [], "miss")
    digits = ssn("11-2222").replace("-", "")
    r = await doc.fetchrow("SELECT legal_name, date_of_birth, risk_score FROM phi.member_profile "
                           "WHERE ssn = $1", digits)
    expect(tuple(r), (DANA[0], DANA[1], 87), "lookup dana (binary)")
    intake = await asyncpg.connect(url("intake"))
    rows = await intake.fetch("SELECT id, legal_name FROM phi.member_profile WHERE ssn = $1", digits)
    expect(len(rows), 1, "intake may search")
    expect(is_envelope(rows[0][1]), True, "intake reads ciphertext")
    await intake.close()
    ok()

    step("update")
    expect(await app.execute("UPDATE users SET name = $1 WHERE email = $2",
                             name("Bob Updated"), email("bob")), "UPDATE 1", "update name")
    expect(await app.execute("UPDATE users SET email = $1 WHERE email = $2",
                             email("cat2"), email("cat")), "UPDATE 1", "update email")
    expect(await app.fetchval("SELECT name FROM users WHERE email = $1", email("cat2")),
           name("Cat Example"), "lookup by the new email")
    expect(await doc.execute("UPDATE phi.member_profile SET risk_score = $1 WHERE ssn = $2",
                             88, ssn("11-2222")), "UPDATE 1", "update risk_score")
    ok()

    step("delete")
    expect(await app.execute("DELETE FROM users WHERE email = $1", email("ann")), "DELETE 1", "ann")
    expect(await doc.execute("DELETE FROM phi.member_profile WHERE ssn = $1", ssn("33-4444")),
           "DELETE 1", "eli")
    ok()

    step("read_plaintext")
    rows = await app.fetch("SELECT email, name FROM users ORDER BY id")
    expect([tuple(r) for r in rows],
           [(email("bob"), name("Bob Updated")), (email("cat2"), name("Cat Example"))], "users")
    rows = await doc.fetch("SELECT legal_name, date_of_birth, ssn, risk_score FROM phi.member_profile")
    expect([tuple(r) for r in rows], [(DANA[0], DANA[1], DANA[2], 88)], "member_profile")
    ok()

    step("read_ciphertext")
    dba = await asyncpg.connect(url("dba"))
    rows = await dba.fetch("SELECT email, name FROM users ORDER BY id")
    expect(len(rows), 2, "dba sees the rows")
    for e, n in rows:
        expect(is_envelope(e), True, "email is an envelope")
        expect(n.startswith("pgv1:") and plaintext_free(n), True, "name is an envelope")
    for v in await dba.fetchrow("SELECT legal_name, date_of_birth, ssn, risk_score FROM phi.member_profile"):
        expect(is_envelope(v) and plaintext_free(v), True, "member_profile envelope")
    await dba.close()
    ok()

    step("transaction_rollback")
    tx = app.transaction()
    await tx.start()
    await app.execute("INSERT INTO users (email, name) VALUES ($1, $2)", email("tx"), name("Tx Rolled Back"))
    expect(await app.fetchval("SELECT name FROM users WHERE email = $1", email("tx")),
           name("Tx Rolled Back"), "own write inside the transaction")
    await app.execute("UPDATE users SET name = $1 WHERE email = $2", name("Bob In Tx"), email("bob"))
    await tx.rollback()
    expect(await app.fetchval("SELECT count(*) FROM users WHERE email = $1", email("tx")), 0, "rolled back")
    expect(await app.fetchval("SELECT name FROM users WHERE email = $1", email("bob")),
           name("Bob Updated"), "update rolled back")
    try:
        async with doc.transaction():
            await doc.execute(ins_member, *FAY)
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    expect(await doc.fetchval("SELECT count(*) FROM phi.member_profile WHERE ssn = $1", FAY[2]), 0,
           "member insert rolled back")
    ok()

    step("prepared_many")
    ins = await app.prepare("INSERT INTO users (email, name) VALUES ($1, $2)")
    for i in range(PREPARED_RUNS):
        await ins.fetch(email(f"p{i}"), name(f"Prepared {i}"))
    for i in range(PREPARED_RUNS):
        # The statement cache: the same text is parsed once per connection.
        expect(await app.fetchval("SELECT name FROM users WHERE email = $1", email(f"P{i}").upper()),
               name(f"Prepared {i}"), f"cached lookup {i}")
    named = await app.fetchval("SELECT count(*) FROM pg_prepared_statements "
                               "WHERE name LIKE '__asyncpg_stmt_%' AND statement LIKE '%users%'")
    expect(named >= 2, True, f"server-side prepared statements ({named})")
    ok(server_prepared=named)

    step("pipeline_error")
    # executemany pipelines Bind/Execute for every row with one Sync at the
    # end, and is atomic: a duplicate key in the middle rolls back the rows
    # before it and skips the rows after it.
    bob_id = await app.fetchval("SELECT id FROM users WHERE email = $1", email("bob"))
    try:
        await app.executemany(
            "INSERT INTO users (id, email, name) VALUES ($1, $2, $3)",
            [(900001, email("pipe1"), name("Pipe One")),
             (bob_id, email("pipe2"), name("Pipe Two")),
             (900003, email("pipe3"), name("Pipe Three"))])
        raise AssertionError("executemany did not fail")
    except asyncpg.UniqueViolationError:
        pass
    expect(await app.fetchval("SELECT count(*) FROM users WHERE email = ANY($1)",
                              [email("pipe1"), email("pipe2"), email("pipe3")]), 0,
           "executemany is atomic")
    # A statement pgveil refuses fails at prepare time, as PostgreSQL's own
    # errors do.
    try:
        await app.fetch(REFUSED)
        raise AssertionError("not refused")
    except asyncpg.FeatureNotSupportedError:
        pass
    ok()

    step("usable_after_error")
    await app.executemany("INSERT INTO users (email, name) VALUES ($1, $2)",
                          [(email("pipe1"), name("Pipe One")), (email("pipe3"), name("Pipe Three"))])
    expect(await app.fetchval("SELECT name FROM users WHERE email = $1", email("pipe3")),
           name("Pipe Three"), "after the error")
    ok()
    await app.close()
    await doc.close()


def main():
    try:
        if MODE == "asyncpg":
            asyncio.run(run_asyncpg())
        elif MODE.startswith("psycopg-"):
            run_psycopg()
        else:
            raise SystemExit(f"unknown mode {MODE}")
    except Exception as e:  # report the failing step, then fail
        print(json.dumps({"driver": MODE, "step": STEP, "ok": False,
                          "error": f"{type(e).__name__}: {e}"}), flush=True)
        traceback.print_exc()
        sys.exit(1)
    print(json.dumps({"driver": MODE, "step": "done", "ok": True}), flush=True)


if __name__ == "__main__":
    main()
