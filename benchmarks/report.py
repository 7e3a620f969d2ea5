"""Markdown table of the loss/gradient benchmarks: cyfed beside numpy.

Produce the JSON and the table (from the repository root; the ``env -u`` drops
OpenBLAS tuning variables that some machines set and that slow numpy down)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=src \\
        python -m pytest benchmarks/test_bench_losses.py --benchmark-json=bench.json -q \\
      && python benchmarks/report.py bench.json

Options: ``--stat {min,median,mean}`` picks the statistic of the rounds (default
``min``, the best of R rounds, least disturbed by other load).

On a shared machine, re-measure the rows other processes disturbed and merge
(each row is taken whole from the quietest run that has it)::

    K=$(python benchmarks/report.py bench.json --rerun-k)
    [ -n "$K" ] && env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=src \
        python -m pytest benchmarks/test_bench_losses.py -k "$K" --benchmark-json=bench2.json -q
    python benchmarks/report.py bench.json bench2.json

One row per (loss, shape, dtype, threads): cyfed's and numpy's time in ms and
``numpy / cyfed`` (> 1 means cyfed is faster).  For the squared loss at
1,000,000 x 100 the single-gemv baseline (one ``X @ coef``, one read of X) is
shown too, with ``cyfed / gemv`` (the target is <= 1.3).  Entries missing from the
JSON (a failed, skipped or deselected benchmark) show as "—", as do ratios that
need them.  A "busy N%" note marks rows during which other processes used more
than 10% of the machine (recorded by conftest.py as ``foreign_cpu``).  Reads
``extra_info`` written by test_bench_losses.py and falls back to parsing the
group name (``{loss}-{n}x{d}-{dtype}-t{threads}``) and the test name.
"""
import argparse
import json
import re
import sys

LOSS_ORDER = ("squared", "logistic", "softmax")
DTYPE_ORDER = ("float64", "float32")
_GROUP = re.compile(r"^(?P<loss>\w+)-(?P<n>\d+)x(?P<d>\d+)-(?P<dtype>\w+)-t(?P<threads>\d+)$")
_IMPL_FROM_TEST = (("test_numpy_gemv", "numpy-gemv"), ("test_numpy", "numpy"),
                   ("test_cyfed", "cyfed"))
MISSING = "—"
#: Rows where other processes used more than this share of the machine during
#: any of their benchmarks get a "busy" note: their numbers are suspect.
BUSY = 0.10


def _identify(bench):
    """(implementation, (loss, n, d, dtype, threads)) of one JSON entry, or None."""
    info = bench.get("extra_info") or {}
    try:
        key = (info["loss"], int(info["n"]), int(info["d"]), info["dtype"], int(info["threads"]))
        impl = info["implementation"]
        return impl, key
    except (KeyError, TypeError, ValueError):
        pass
    m = _GROUP.match(bench.get("group") or "")
    name = bench.get("name") or ""
    impl = next((impl for prefix, impl in _IMPL_FROM_TEST if name.startswith(prefix + "[")), None)
    if m is None or impl is None:
        return None
    return impl, (m["loss"], int(m["n"]), int(m["d"]), m["dtype"], int(m["threads"]))


def collect(data, stat="min"):
    """{(loss, n, d, dtype, threads): {implementation: (seconds, foreign_cpu)}}.

    ``foreign_cpu`` is the share of the machine other processes used while that
    benchmark ran (None when not recorded)."""
    table = {}
    for bench in data.get("benchmarks", []):
        ident = _identify(bench)
        seconds = (bench.get("stats") or {}).get(stat)
        if ident is None or seconds is None:
            continue
        impl, key = ident
        foreign = (bench.get("extra_info") or {}).get("foreign_cpu")
        table.setdefault(key, {})[impl] = (float(seconds), foreign)
    return table


def _ms(seconds):
    return MISSING if seconds is None else f"{seconds * 1e3:.2f}"


def _ratio(num, den):
    return MISSING if num is None or den is None or den <= 0 else f"{num / den:.2f}"


def markdown(table, busy=BUSY):
    shapes = list(dict.fromkeys((n, d) for _, n, d, _, _ in table))

    def order(key):
        loss, n, d, dtype, threads = key
        return (LOSS_ORDER.index(loss) if loss in LOSS_ORDER else len(LOSS_ORDER), loss,
                shapes.index((n, d)),
                DTYPE_ORDER.index(dtype) if dtype in DTYPE_ORDER else len(DTYPE_ORDER), dtype,
                threads)

    any_gemv = any("numpy-gemv" in v for v in table.values())
    head = ["loss", "shape", "dtype", "threads", "cyfed (ms)", "numpy (ms)", "numpy / cyfed"]
    if any_gemv:
        head += ["gemv (ms)", "cyfed / gemv"]
    head.append("note")
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join("---" if i < 4 or h == "note" else "---:"
                            for i, h in enumerate(head)) + "|"]
    for key in sorted(table, key=order):
        loss, n, d, dtype, threads = key
        entries = table[key]
        cy, np_, gemv = (entries.get(impl, (None, None))[0]
                         for impl in ("cyfed", "numpy", "numpy-gemv"))
        row = [loss, f"{n:,} × {d:,}", dtype, str(threads), _ms(cy), _ms(np_), _ratio(np_, cy)]
        if any_gemv:
            row += ([_ms(gemv), _ratio(cy, gemv)] if gemv is not None else ["", ""])
        load = _row_load(entries)
        row.append(f"busy {load:.0%}" if load > busy else "")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _row_load(entries, unknown=0.0):
    """Largest foreign CPU share among a row's benchmarks (``unknown`` if unrecorded)."""
    loads = [unknown if f is None else f for _, f in entries.values()]
    return max(loads) if loads else unknown


def merge(tables):
    """One table from several runs: per row, the run with the most implementations
    present, then the quietest (lowest foreign CPU share), then the latest file.
    A row is taken whole from one run, so cyfed and numpy stay side by side."""
    merged = {}
    for index, table in enumerate(tables):
        for key, entries in table.items():
            rank = (len(entries), -_row_load(entries, unknown=BUSY), index)
            if key not in merged or rank > merged[key][0]:
                merged[key] = (rank, entries)
    return {key: entries for key, (_, entries) in merged.items()}


def rerun_expression(table, busy=BUSY, expected=("cyfed", "numpy")):
    """A pytest -k expression selecting the rows that are busy or incomplete."""
    ids = []
    for (loss, n, d, dtype, threads), entries in table.items():
        if _row_load(entries) > busy or not set(expected) <= entries.keys():
            ids.append(f"{loss}-{n}x{d}-{dtype}-t{threads}")
            if "numpy-gemv" in entries:
                ids.append(f"gemv-{n}x{d}-{dtype}-t{threads}")
    return " or ".join(ids)


def read_runs(paths, prog):
    """The parsed --benchmark-json files, or None after a one-line error on stderr."""
    datas = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as fh:
                datas.append(json.load(fh))
        except (OSError, json.JSONDecodeError) as exc:
            print(f"{prog}: cannot read {path}: {exc}", file=sys.stderr)
            return None
    return datas


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_files", nargs="+", metavar="JSON",
                        help="output(s) of pytest --benchmark-json=FILE; with several, "
                             "each row comes from the quietest run that has it")
    parser.add_argument("--stat", default="min", choices=("min", "median", "mean"),
                        help="statistic of the timed rounds (default: min)")
    parser.add_argument("--rerun-k", action="store_true",
                        help="print instead a pytest -k expression selecting the busy or "
                             "incomplete rows, to re-measure them when the machine is quiet")
    args = parser.parse_args(argv)
    datas = read_runs(args.json_files, "report.py")
    if datas is None:
        return 2
    table = merge([collect(data, args.stat) for data in datas])
    if not table:
        print(f"report.py: no cyfed/numpy loss benchmarks in {', '.join(args.json_files)} "
              "(a --smoke or --benchmark-disable run records none)", file=sys.stderr)
        return 1
    if args.rerun_k:
        print(rerun_expression(table))
        return 0
    machine = datas[-1].get("machine_info") or {}
    cpu = (machine.get("cpu") or {}).get("brand_raw", "unknown CPU")
    when = ", ".join(d.get("datetime", "?")[:19] for d in datas)
    print(f"Times: {args.stat} over the rounds, ms. CPU: {cpu}; run(s) {when}. "
          f"\"busy N%\": other processes used N% of the machine during that row's runs.\n")
    print(markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
