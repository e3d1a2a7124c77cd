"""The report every ORM program prints for tests/orm.rs.

One JSON line per step, {"orm", "step", "ok": true}; on a failure the
failing step with "ok": false and the error; last, {"step": "final"} with
the rows the application expects to remain and every plaintext it wrote
(the Rust side reads the rows back through pgveil and scans the database
and the logs for the plaintexts).
"""

import json


class Report:
    def __init__(self, orm, tag):
        self.orm = orm
        self.tag = tag
        self.step = "start"
        self.sentinels = []

    def email(self, who):
        """An email written by the program (remembered as a plaintext)."""
        v = f"{who}.{self.tag}@example.com"
        self.sentinels.append(v)
        return v

    def name(self, who):
        """A name written by the program (remembered as a plaintext)."""
        v = f"{who.title()} {self.tag.title()}"
        self.sentinels.append(v)
        return v

    def ok(self, **extra):
        print(json.dumps({"orm": self.orm, "step": self.step, "ok": True, **extra}), flush=True)

    def expect(self, got, want, what):
        if got != want:
            raise AssertionError(f"{self.step}: {what}: got {got!r}, want {want!r}")

    def final(self, rows):
        print(json.dumps({"step": "final", "users": rows, "sentinels": self.sentinels}), flush=True)

    def run(self, main):
        """Run `main`; report the failing step, then fail."""
        try:
            main()
        except Exception as e:
            print(json.dumps({"orm": self.orm, "step": self.step, "ok": False, "error": repr(e)}), flush=True)
            raise
