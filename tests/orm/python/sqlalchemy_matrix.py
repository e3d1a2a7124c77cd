"""SQLAlchemy 2 through pgveil with the reference policy (tests/orm.rs).

    python3 sqlalchemy_matrix.py psycopg|asyncpg <tag> <pgveil port>

An application's ORM code, unchanged: the model maps `users` with `email`
and `name` as plain strings (pgveil encrypts them and keeps the blind
index). Each step prints one JSON line {"orm", "step", "ok"}; the last line
lists the rows the application expects to remain and every plaintext it
wrote (the Rust side reads the rows back through pgveil and scans the
database for the plaintexts).
"""

import asyncio
import sys

from sqlalchemy import BigInteger, DateTime, String, delete, func, insert, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from report import Report

MODE, TAG, PORT = sys.argv[1], sys.argv[2], sys.argv[3]
R = Report(f"sqlalchemy-{MODE}", TAG)
email, name, ok, expect, final = R.email, R.name, R.ok, R.expect, R.final


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    email: Mapped[str] = mapped_column(String(254))
    name: Mapped[str] = mapped_column(String)
    plan: Mapped[str] = mapped_column(String, server_default="free")
    created_at = mapped_column(DateTime(timezone=True), server_default=func.now())


def people(n, prefix):
    return [(email(f"{prefix}{i}"), name(f"{prefix}{i}")) for i in range(n)]


def run_sync():
    from sqlalchemy import create_engine

    engine = create_engine(f"postgresql+psycopg://calmony_app@127.0.0.1:{PORT}/app")
    with Session(engine) as s:
        R.step = "orm_add"
        u = User(email=email("ada"), name=name("ada"))
        s.add(u)
        s.commit()
        expect(s.get(User, u.id).email, email("ada"), "get by primary key")
        ok()

        R.step = "bulk_insert"
        # add_all of several rows: insertmanyvalues with ordered RETURNING
        # (INSERT … SELECT … FROM (VALUES …) AS imp_sen(…) ORDER BY sen_counter).
        batch = [User(email=e, name=n) for e, n in people(5, "bulk")]
        s.add_all(batch)
        s.commit()
        expect(all(b.id is not None for b in batch), True, "ids returned")
        # Core executemany without RETURNING.
        s.execute(insert(User), [{"email": e, "name": n} for e, n in people(3, "core")])
        s.commit()
        ok()

        R.step = "lookup"
        got = s.scalars(select(User).where(User.email == email("bulk2"))).one()
        expect(got.name, name("bulk2"), "equality on the encrypted column")
        got = s.scalars(
            select(User.name).where(User.email.in_([email("bulk0"), email("core1")])).order_by(User.id)
        ).all()
        expect(got, [name("bulk0"), name("core1")], "IN list")
        expect(s.scalar(select(func.count()).select_from(User).where(User.email == email("nobody"))), 0, "miss")
        n = s.scalar(
            select(func.count()).select_from(User).where(User.email != email("bulk0"), User.email.is_not(None))
        )
        expect(n, 8, "!= and IS NOT NULL")
        ok()

        R.step = "refusals"
        # What docs/orm.md lists as refused, with the fix it names.
        from sqlalchemy import cast
        from sqlalchemy.exc import DBAPIError

        refused = {
            "like": select(User).where(User.email.like("bulk%")),
            "ilike": select(User).where(User.email.ilike("bulk%")),
            "lower": select(User).where(func.lower(User.email) == "x"),
            "cast": select(User).where(cast(User.email, String) == "x"),
            "order_by": select(User).order_by(User.email),
            "group_by": select(User.email, func.count()).group_by(User.email),
        }
        for what, q in refused.items():
            try:
                s.execute(q).all()
            except DBAPIError as e:
                code = getattr(e.orig, "sqlstate", None)
                expect(code in ("0A000", "42501"), True, f"{what} refused ({code})")
                s.rollback()
            else:
                raise AssertionError(f"{what} was not refused")
        ok()

        R.step = "bulk_update_delete"
        s.execute(update(User).where(User.email == email("bulk1")).values(name=name("bulk1 renamed")))
        s.execute(delete(User).where(User.email.in_([email("bulk3"), email("core2")])))
        s.commit()
        # ORM-enabled update by primary key (the unit of work).
        u = s.get(User, u.id)
        u.name = name("ada renamed")
        s.commit()
        ok()

        R.step = "transaction_rollback"
        s.add(User(email=email("ghost"), name=name("ghost")))
        s.flush()
        s.rollback()
        expect(s.scalar(select(func.count()).select_from(User).where(User.email == email("ghost"))), 0, "gone")
        ok()

        R.step = "yield_per"
        # A server-side (named) cursor: DECLARE … CURSOR + FETCH FORWARD n.
        got = [
            (x.email, x.name)
            for x in s.scalars(select(User).order_by(User.id).execution_options(yield_per=2))
        ]
        s.commit()
        rows = [list(r) for r in s.execute(select(User.email, User.name).order_by(User.id)).all()]
        expect([list(g) for g in got], rows, "streamed rows equal the plain SELECT")
        expect(len(rows), 7, "rows")
        ok()

        R.step = "stream_results"
        with engine.connect() as c:
            res = c.execution_options(stream_results=True, max_row_buffer=2).execute(
                select(User.email).order_by(User.id)
            )
            got = [r[0] for r in res]
        expect(got, [r[0] for r in rows], "stream_results")
        ok()
    final(rows)


async def run_async():
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    engine = create_async_engine(f"postgresql+asyncpg://calmony_app@127.0.0.1:{PORT}/app")
    # expire_on_commit=False: the asyncio ORM's usual setting (attributes
    # are not reloaded lazily, which asyncio cannot do).
    async with AsyncSession(engine, expire_on_commit=False) as s:
        R.step = "orm_add"
        u = User(email=email("ada"), name=name("ada"))
        s.add(u)
        await s.commit()
        expect((await s.get(User, u.id)).email, email("ada"), "get by primary key")
        ok()

        R.step = "bulk_insert"
        # add_all: asyncpg's executemany (no insertmanyvalues RETURNING
        # form when the dialect can batch), then Core executemany.
        batch = [User(email=e, name=n) for e, n in people(5, "bulk")]
        s.add_all(batch)
        await s.commit()
        await s.execute(insert(User), [{"email": e, "name": n} for e, n in people(3, "core")])
        await s.commit()
        ok()

        R.step = "lookup"
        got = (await s.scalars(select(User).where(User.email == email("bulk2")))).one()
        expect(got.name, name("bulk2"), "equality")
        got = (
            await s.scalars(
                select(User.name).where(User.email.in_([email("bulk0"), email("core1")])).order_by(User.id)
            )
        ).all()
        expect(got, [name("bulk0"), name("core1")], "IN list")
        ok()

        R.step = "bulk_update_delete"
        await s.execute(update(User).where(User.email == email("bulk1")).values(name=name("bulk1 renamed")))
        await s.execute(delete(User).where(User.email.in_([email("bulk3"), email("core2")])))
        await s.commit()
        u = await s.get(User, u.id, populate_existing=True)
        u.name = name("ada renamed")
        await s.commit()
        ok()

        R.step = "transaction_rollback"
        s.add(User(email=email("ghost"), name=name("ghost")))
        await s.flush()
        await s.rollback()
        n = await s.scalar(select(func.count()).select_from(User).where(User.email == email("ghost")))
        expect(n, 0, "gone")
        ok()

        R.step = "stream"
        # asyncpg's server-side cursor: a protocol portal read in batches.
        rows = [list(r) for r in (await s.execute(select(User.email, User.name).order_by(User.id))).all()]
        res = await s.stream(select(User.email, User.name).order_by(User.id).execution_options(yield_per=2))
        got = [list(r) async for r in res]
        await s.commit()
        expect(got, rows, "streamed rows equal the plain SELECT")
        expect(len(rows), 7, "rows")
        ok()
    await engine.dispose()
    final(rows)


if __name__ == "__main__":
    R.run(run_sync if MODE == "psycopg" else lambda: asyncio.run(run_async()))
