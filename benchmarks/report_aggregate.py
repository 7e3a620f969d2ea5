"""Markdown table of the aggregation benchmarks: cyfed beside its baselines, with the goals.

Produce the JSON and the table (from the repository root; the ``env -u`` drops
OpenBLAS tuning variables that some machines set and that slow numpy down)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=src \\
        python -m pytest benchmarks/test_bench_aggregate.py --benchmark-json=agg.json -q \\
      && python benchmarks/report_aggregate.py agg.json

(agg.json from ``pytest benchmarks/test_bench_aggregate.py --benchmark-json=agg.json``.)
One row per (rule, K, d, threads): cyfed's time, each baseline's time, the
ratios and the goal they are held to (see ``goals``), and whether it is met.
Ratios are ``baseline / cyfed`` (> 1: cyfed is faster), except against the
memory-bound floor ``w @ U`` (``numpy-gemv``), where it is ``cyfed / gemv``.

Options: ``--stat {min,median,mean}`` picks the statistic of the rounds (default
``min``, the best of R rounds, least disturbed by other load).  With several JSON
files each row is taken whole from the run that has most of its sides, then the
quietest; ``--rerun-k`` prints a pytest ``-k`` expression selecting the rows that
are busy or incomplete, to re-measure them::

    K=$(python benchmarks/report_aggregate.py agg.json --rerun-k)
    [ -n "$K" ] && env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=src \\
        python -m pytest benchmarks/test_bench_aggregate.py -k "$K" --benchmark-json=agg2.json -q
    python benchmarks/report_aggregate.py agg.json agg2.json

Missing entries (failed, skipped or deselected benchmarks) show as "—".  "busy N%"
in the last column marks rows during which other processes used more than 10%
of the machine (``foreign_cpu``, recorded by conftest.py): their numbers are
suspect.  Reads ``extra_info`` written by test_bench_aggregate.py and falls back
to parsing the group name (``{rule}-{K}x{d}-{dtype}-t{threads}``).
"""
import argparse
import re
import sys

from report import read_runs

FUNC_ORDER = ("weighted_mean", "median", "trimmed_mean", "krum", "geometric_median")
#: rule -> its baselines (implementation names), in column order (and the order they
#: run after cyfed in test_bench_aggregate.py).
BASELINES = {
    "weighted_mean": ("numpy-gemv", "numpy-average"),
    "median": ("numpy",),
    "trimmed_mean": ("scipy",),
    "krum": ("numpy",),
    "geometric_median": ("numpy",),
}
_GROUP = re.compile(r"^(?P<func>\w+)-(?P<K>\d+)x(?P<d>\d+)-(?P<dtype>\w+)-t(?P<threads>\d+)$")
MISSING = "—"
BUSY = 0.10


def _short(impl):
    """'numpy-gemv' -> 'gemv', 'numpy' -> 'numpy'."""
    return impl.split("-", 1)[1] if "-" in impl else impl


def goals(func, K, threads):
    """[(baseline, op, bound)] the row is held to: ``baseline / cyfed >= bound`` for
    op ">=", ``cyfed / baseline <= bound`` for op "<="; [] where no goal is set."""
    if func == "weighted_mean":
        return [("numpy-gemv", "<=", 1.1), ("numpy-average", ">=", 3.0)]
    if func == "median":                       # stated for 1 thread
        return [("numpy", ">=", 10.0 if K <= 10 else 5.0)] if threads == 1 else []
    if func == "trimmed_mean":
        return [("scipy", ">=", 20.0 if K <= 10 else 7.0)]
    if func == "krum":                         # K = 10: stated for 2 threads
        if K <= 10:
            return [("numpy", ">=", 2.0)] if threads == 2 else []
        return [("numpy", ">=", 1.0)]
    if func == "geometric_median":
        return [("numpy", ">=", 3.0)]
    return []


def _identify(bench):
    """(implementation, (func, K, d, dtype, threads)) of one JSON entry, or None."""
    info = bench.get("extra_info") or {}
    try:
        return info["implementation"], (info["function"], int(info["K"]), int(info["d"]),
                                         info["dtype"], int(info["threads"]))
    except (KeyError, TypeError, ValueError):
        pass
    m = _GROUP.match(bench.get("group") or "")
    impl = info.get("implementation")
    if m is None or impl is None:
        return None
    return impl, (m["func"], int(m["K"]), int(m["d"]), m["dtype"], int(m["threads"]))


def collect(data, stat="min"):
    """{(func, K, d, dtype, threads): {implementation: (seconds, foreign_cpu)}}."""
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


def _row_load(entries, unknown=0.0):
    loads = [unknown if f is None else f for _, f in entries.values()]
    return max(loads) if loads else unknown


def merge(tables):
    """Per row, the run with the most sides present, then the quietest, then the latest."""
    merged = {}
    for index, table in enumerate(tables):
        for key, entries in table.items():
            rank = (len(entries), -_row_load(entries, unknown=BUSY), index)
            if key not in merged or rank > merged[key][0]:
                merged[key] = (rank, entries)
    return {key: entries for key, (_, entries) in merged.items()}


def _ratio(cy, ref, op):
    """The ratio a goal with ``op`` is about: cyfed / ref for "<=", ref / cyfed for ">="."""
    if cy is None or ref is None or cy <= 0 or ref <= 0:
        return None
    return cy / ref if op == "<=" else ref / cy


def _ratio_name(impl, op):
    return f"cyfed/{_short(impl)}" if op == "<=" else f"{_short(impl)}/cyfed"


def row_cells(key, entries, busy=BUSY):
    func, K, d, dtype, threads = key
    seconds = {impl: s for impl, (s, _) in entries.items()}
    cy = seconds.get("cyfed")
    baselines = BASELINES.get(func) or tuple(i for i in entries if i != "cyfed")
    held_to = goals(func, K, threads)
    op_of = {impl: op for impl, op, _ in held_to}

    base_ms, ratios = [], []
    for impl in baselines:
        s = seconds.get(impl)
        base_ms.append(f"{_short(impl)} {MISSING if s is None else f'{s * 1e3:.2f}'}")
        op = op_of.get(impl, ">=")
        r = _ratio(cy, s, op)
        ratios.append(f"{_ratio_name(impl, op)} {MISSING if r is None else f'{r:.2f}'}")

    goal_txt, verdicts = [], []
    for impl, op, bound in held_to:
        goal_txt.append(f"{_ratio_name(impl, op)} {'≤' if op == '<=' else '≥'} {bound:g}")
        r = _ratio(cy, seconds.get(impl), op)
        verdicts.append(None if r is None else (r <= bound if op == "<=" else r >= bound))
    if not held_to:
        met = MISSING
    elif any(v is None for v in verdicts):
        met = f"{MISSING} (missing)"
    else:
        met = "yes" if all(verdicts) else "**no**"
    load = _row_load(entries)
    if load > busy:
        met += f" (busy {load:.0%})"
    cy_ms = MISSING if cy is None else f"{cy * 1e3:.2f}"
    return [func, str(K), f"{d:,}", str(threads), cy_ms, "; ".join(base_ms), "; ".join(ratios),
            "; ".join(goal_txt) or MISSING, met]


def markdown(table, busy=BUSY):
    def order(key):
        func, K, d, dtype, threads = key
        return (FUNC_ORDER.index(func) if func in FUNC_ORDER else len(FUNC_ORDER), func,
                K, d, dtype, threads)

    head = ["function", "K", "d", "threads", "cyfed ms", "baseline(s) ms", "ratio(s)", "goal",
            "met?"]
    align = ["---", "---:", "---:", "---:", "---:", "---", "---", "---", "---"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    dtypes = {key[3] for key in table}
    for key in sorted(table, key=order):
        cells = row_cells(key, table[key], busy)
        if len(dtypes) > 1:
            cells[2] += f" {key[3]}"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def missed(table):
    """Keys of the rows whose goal is not met (all sides present)."""
    out = []
    for key, entries in table.items():
        func, K, _, _, threads = key
        cy = entries.get("cyfed", (None,))[0]
        for impl, op, bound in goals(func, K, threads):
            r = _ratio(cy, entries.get(impl, (None,))[0], op)
            if r is not None and not (r <= bound if op == "<=" else r >= bound):
                out.append(key)
                break
    return out


def rerun_expression(table, busy=BUSY):
    """A pytest -k expression selecting the rows that are busy or incomplete."""
    ids = []
    for key, entries in table.items():
        func, K, d, dtype, threads = key
        expected = {"cyfed", *BASELINES.get(func, ())}
        if _row_load(entries) > busy or not expected <= entries.keys():
            ids.append(f"test_aggregate[{func}-{K}x{d}-{dtype}-t{threads}-")
    return " or ".join(ids)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_files", nargs="+", metavar="JSON",
                        help="output(s) of pytest --benchmark-json=FILE")
    parser.add_argument("--stat", default="min", choices=("min", "median", "mean"),
                        help="statistic of the timed rounds (default: min)")
    parser.add_argument("--rerun-k", action="store_true",
                        help="print instead a pytest -k expression selecting the busy or "
                             "incomplete rows")
    args = parser.parse_args(argv)
    datas = read_runs(args.json_files, "report_aggregate.py")
    if datas is None:
        return 2
    table = merge([collect(data, args.stat) for data in datas])
    if not table:
        print(f"report_aggregate.py: no aggregation benchmarks in {', '.join(args.json_files)} "
              "(a --smoke or --benchmark-disable run records none)", file=sys.stderr)
        return 1
    if args.rerun_k:
        print(rerun_expression(table))
        return 0
    machine = datas[-1].get("machine_info") or {}
    cpu = (machine.get("cpu") or {}).get("brand_raw", "unknown CPU")
    when = ", ".join(d.get("datetime", "?")[:19] for d in datas)
    print(f"Times: {args.stat} over the rounds, ms. CPU: {cpu}; run(s) {when}. Ratios: "
          "baseline/cyfed (> 1: cyfed faster), cyfed/gemv against the w @ U floor.\n")
    print(markdown(table))
    bad = missed(table)
    if bad:
        print(f"\nGoal not met in {len(bad)} row(s): "
              + ", ".join(f"{f} K={K} d={d:,} t={t}" for f, K, d, _, t in sorted(bad)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
