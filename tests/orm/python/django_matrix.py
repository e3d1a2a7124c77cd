"""Django 5.2 through pgveil with the reference policy (tests/orm.rs).

    python3 django_matrix.py client|server <tag> <pgveil port>

`client`: psycopg 3's client-side binding (Django's default: values are
interpolated into the SQL text as literals); `server`: the database option
`server_side_binding: True` (parameters bound in the extended protocol).
The model maps `users` with `email` and `name` as plain character fields:
pgveil encrypts them and keeps the blind index (see docs/orm.md). Each step
prints one JSON line; the last lists the rows the application expects and
every plaintext it wrote.
"""

import sys

import django
from django.conf import settings

BINDING, TAG, PORT = sys.argv[1], sys.argv[2], sys.argv[3]

settings.configure(
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": "127.0.0.1",
            "PORT": PORT,
            "NAME": "app",
            "USER": "calmony_app",
            "OPTIONS": {"server_side_binding": BINDING == "server"},
        }
    },
    INSTALLED_APPS=[],
    USE_TZ=True,
)
django.setup()

from django.db import models, transaction  # noqa: E402
from report import Report  # noqa: E402

R = Report(f"django-{BINDING}", TAG)
email, name, ok, expect, final = R.email, R.name, R.ok, R.expect, R.final


class User(models.Model):
    id = models.BigAutoField(primary_key=True)
    email = models.CharField(max_length=254, null=True)
    name = models.TextField(null=True)
    plan = models.TextField(default="free")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        app_label = "calmony"
        db_table = "users"
        managed = False


def run():
    R.step = "create"
    ada = User.objects.create(email=email("ada"), name=name("ada"))
    expect(User.objects.get(pk=ada.pk).email, email("ada"), "get by pk")
    ok()

    R.step = "bulk_create"
    # Django 5.2 on PostgreSQL: INSERT … SELECT * FROM UNNEST(%s::varchar(254)[], …)
    made = User.objects.bulk_create([User(email=email(f"bulk{i}"), name=name(f"bulk{i}")) for i in range(5)])
    expect(all(u.pk is not None for u in made), True, "primary keys returned")
    ok()

    R.step = "get"
    expect(User.objects.get(email=email("bulk2")).name, name("bulk2"), "equality on the encrypted field")
    expect(User.objects.filter(email=email("nobody")).exists(), False, "miss")
    ok()

    R.step = "filter_in"
    got = list(
        User.objects.filter(email__in=[email("bulk0"), email("bulk4")]).order_by("id").values_list("name", flat=True)
    )
    expect(got, [name("bulk0"), name("bulk4")], "__in")
    ok()

    R.step = "exclude_isnull"
    n = User.objects.exclude(email=email("bulk0")).filter(email__isnull=False).count()
    expect(n, 5, "exclude + isnull")
    ok()

    R.step = "update"
    n = User.objects.filter(email=email("bulk1")).update(name=name("bulk1 renamed"))
    expect(n, 1, "queryset update")
    ada.name = name("ada renamed")
    ada.save()
    ok()

    R.step = "delete"
    n, _ = User.objects.filter(email=email("bulk3")).delete()
    expect(n, 1, "queryset delete")
    ok()

    R.step = "get_or_create"
    u, created = User.objects.get_or_create(email=email("goc"), defaults={"name": name("goc")})
    expect(created, True, "created first")
    u2, created = User.objects.get_or_create(email=email("goc"), defaults={"name": name("other")})
    expect((created, u2.pk), (False, u.pk), "found second")
    u3, created = User.objects.update_or_create(email=email("goc"), defaults={"name": name("goc updated")})
    expect((created, u3.pk), (False, u.pk), "update_or_create updates")
    ok()

    R.step = "refusals"
    # What docs/orm.md lists as refused, with the fix it names.
    from django.db import NotSupportedError, ProgrammingError
    from django.db.models.functions import Lower

    refused = {
        "iexact": lambda: list(User.objects.filter(email__iexact=email("bulk0"))),
        "icontains": lambda: list(User.objects.filter(email__icontains="bulk")),
        "startswith": lambda: list(User.objects.filter(email__startswith="bulk")),
        "order_by": lambda: list(User.objects.order_by("email")),
        "lower": lambda: list(User.objects.annotate(l=Lower("email")).filter(l="x")),
        "bulk_update": lambda: User.objects.bulk_update([User(pk=ada.pk, email=email("ada2"), name="x")], ["email"]),
    }
    for what, f in refused.items():
        try:
            with transaction.atomic():
                f()
        except (NotSupportedError, ProgrammingError) as e:
            code = getattr(e.__cause__, "sqlstate", None)
            expect(code in ("0A000", "42501"), True, f"{what} refused ({code})")
        else:
            raise AssertionError(f"{what} was not refused")
    ok()

    R.step = "transaction_rollback"
    try:
        with transaction.atomic():
            User.objects.create(email=email("ghost"), name=name("ghost"))
            with transaction.atomic():  # a savepoint
                User.objects.filter(email=email("ghost")).update(name=name("ghost2"))
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    expect(User.objects.filter(email=email("ghost")).exists(), False, "rolled back")
    ok()

    R.step = "iterator"
    # A server-side cursor (DECLARE … NO SCROLL CURSOR WITH HOLD FOR …,
    # FETCH FORWARD n FROM …), in autocommit.
    plain = [[u.email, u.name] for u in User.objects.order_by("id")]
    got = [[u.email, u.name] for u in User.objects.order_by("id").iterator(chunk_size=2)]
    expect(got, plain, "iterator rows equal the plain query")
    with transaction.atomic():
        got = list(User.objects.order_by("id").values_list("email", "name").iterator(chunk_size=3))
    expect([list(g) for g in got], plain, "iterator in a transaction")
    expect(len(plain), 6, "rows")
    ok()
    final(plain)


if __name__ == "__main__":
    R.run(run)
