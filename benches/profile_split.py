#!/usr/bin/env python3
"""CPU split of pgveil per message family, from the summaries that
`PROFILE=DIR benches/pgbench.sh` writes (one `perf report --children` pass
per pgveil target). Prints one markdown table: a column per profile, a row
per family, each cell the share of pgveil's samples spent under it
(inclusive; rows overlap where one family calls another, e.g. Bind
includes its crypto).

Usage: benches/profile_split.py DIR [DIR2]   (with DIR2: before -> after)
"""
import re
import sys
from pathlib import Path

# (row label, regex on the symbol, "children", "sum" or "self": see cell)
ROWS = [
    ("send to a socket (write_all, kernel included)", r"tokio::io::util::write_all::WriteAll<W> as core::future::future::Future>::poll$", "children"),
    ("receive from a socket (read, kernel included)", r"tokio::io::split::ReadHalf<T> as tokio::io::async_read::AsyncRead>::poll_read$", "children"),
    ("runtime idle/park", r"worker::Context::park_internal$", "children"),
    ("frontend: all client messages", r"^pgveil::session::frontend::Frontend::on_frame::\{\{closure\}\}$", "children"),
    ("  Query/Parse (planning, rendering)", r"^pgveil::session::frontend::Frontend::on_frame::\{\{closure\}\}::\{\{closure\}\}$", "children"),
    ("  Bind (parameters sealed/indexed)", r"frontend::bind::<impl pgveil::session::frontend::Frontend>::(on_bind|transform_bind)::\{\{closure\}\}$", "children"),
    ("  name map (Names::drain, possible, view)", r"frontend::names::Names::(drain|possible|view|set_in)$", "sum"),
    ("  audit info per Execute", r"frontend::audit::audit_info$", "children"),
    ("backend: all server messages", r"^pgveil::session::backend::Backend::on_frame_inner::\{\{closure\}\}$", "children"),
    ("  RowDescription", r"backend::Backend::on_row_description$", "children"),
    ("  DataRow (decryption included)", r"backend::Backend::on_data_row_with::\{\{closure\}\}$", "children"),
    ("  pending-queue checks (settle_front, expect)", r"backend::Backend::settle_front$", "children"),
    ("AES-GCM (aws-lc seal/open)", r"aws_lc_0_\d+_0_EVP_AEAD_CTX_(open|seal)(_gather|_scatter)?$", "children"),
    ("HMAC blind index", r"crypto::blind_index::BlindIndexKey::compute$", "children"),
    ("malloc/free/realloc (self)", r"^(malloc|_int_malloc|cfree@GLIBC_2.2.5|_int_free|realloc|_int_realloc)$", "self"),
]

# "children% self% [dso] [.] symbol": the dso column is optional (older
# summaries sorted by symbol only).
LINE = re.compile(r"^\s*([\d.]+)%\s+([\d.]+)%\s+(?:(\S+)\s+)?\[[.k]\]\s+(.*?)\s*(?:-\s+-\s*)?$")


def load(path):
    """{symbol: (children, self)} of one summary file."""
    out = {}
    for line in path.read_text(errors="replace").splitlines():
        m = LINE.match(line)
        if m:
            out.setdefault(m.group(4).strip(), (float(m.group(1)), float(m.group(2))))
    return out


def cell(syms, pattern, kind):
    """Self: the sum of the matching symbols' own samples. Children: the
    largest inclusive share among them (the patterns name one function or
    functions that nest, e.g. on_bind and the transform_bind it calls).
    Sum: inclusive shares of sibling functions added up."""
    rx = re.compile(pattern)
    hits = [(c, s) for name, (c, s) in syms.items() if rx.search(name)]
    if not hits:
        return None
    if kind == "self":
        return sum(s for _, s in hits)
    if kind == "sum":
        return sum(c for c, _ in hits)
    return max(c for c, _ in hits)


def main():
    dirs = [Path(d) for d in sys.argv[1:]]
    if not dirs:
        sys.exit(__doc__)
    names = sorted({p.stem for d in dirs for p in d.glob("*.txt")})
    head = "| family | " + " | ".join(names) + " |"
    print(head)
    print("|" + "---|" * (len(names) + 1))
    data = [{n: load(d / f"{n}.txt") for n in names if (d / f"{n}.txt").exists()} for d in dirs]
    for label, pattern, kind in ROWS:
        cells = []
        for n in names:
            vals = []
            for d in data:
                v = cell(d[n], pattern, kind) if n in d else None
                vals.append("–" if v is None else f"{v:.1f}%")
            cells.append(" → ".join(vals))
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
