"""Table of the compressor benchmarks (test_bench_compress.py) with their goals.

From the repository root::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=src \\
        python -m pytest benchmarks/test_bench_compress.py --benchmark-json=compress.json -q \\
      && python benchmarks/report_compress.py compress.json

One row per (case, dtype): cyfed's time and throughput (GB/s of input, one
thread), the numpy baseline's time where the case has one, the ratio numpy/cyfed
and the goal: >= 1 GB/s for every round trip but PowerSGD, >= 5x numpy for the
top-k selection.  ``--stat`` picks the statistic of the rounds (default ``min``).
"""
import argparse
import sys

from report import read_runs

MISSING = "—"
BUSY = 0.10


def goal(case):
    """(kind, bound): "GB/s" >= bound, or "ratio" (numpy/cyfed) >= bound; None if none."""
    if case == "topk-select":
        return "ratio", 5.0
    if case.startswith("roundtrip-") and not case.startswith("roundtrip-PowerSGD"):
        return "GB/s", 1.0
    return None


def collect(datas, stat="min"):
    """{(case, dtype): {implementation: (seconds, nbytes, foreign_cpu)}}, later runs winning."""
    table = {}
    for data in datas:
        for bench in data.get("benchmarks", []):
            info = bench.get("extra_info") or {}
            seconds = (bench.get("stats") or {}).get(stat)
            if seconds is None or "case" not in info:
                continue
            table.setdefault((info["case"], info["dtype"]), {})[info["implementation"]] = (
                float(seconds), int(info["nbytes"]), info.get("foreign_cpu"))
    return table


def rows(table):
    out, missed = [], []
    for (case, dtype), sides in sorted(table.items()):
        cy, nbytes, load = sides.get("cyfed", (None, None, None))
        np_s = sides.get("numpy", (None,))[0]
        gbs = nbytes / cy / 1e9 if cy else None
        ratio = np_s / cy if cy and np_s else None
        target = goal(case)
        if target is None:
            goal_txt, met = MISSING, MISSING
        else:
            kind, bound = target
            value = gbs if kind == "GB/s" else ratio
            goal_txt = f"{'GB/s' if kind == 'GB/s' else 'numpy/cyfed'} ≥ {bound:g}"
            met = MISSING if value is None else ("yes" if value >= bound else "**no**")
            if value is not None and value < bound:
                missed.append(f"{case} {dtype}")
        if load is not None and load > BUSY:
            met += f" (busy {load:.0%})"
        fmt = lambda v, spec: MISSING if v is None else format(v, spec)   # noqa: E731
        out.append([case, dtype, fmt(cy and cy * 1e3, ".3f"), fmt(gbs, ".2f"),
                    fmt(np_s and np_s * 1e3, ".3f"), fmt(ratio, ".1f"), goal_txt, met])
    return out, missed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_files", nargs="+", metavar="JSON",
                        help="output(s) of pytest --benchmark-json=FILE")
    parser.add_argument("--stat", default="min", choices=("min", "median", "mean"))
    args = parser.parse_args(argv)
    datas = read_runs(args.json_files, "report_compress.py")
    if datas is None:
        return 2
    table = collect(datas, args.stat)
    if not table:
        print("report_compress.py: no compressor benchmarks found (a --smoke run records none)",
              file=sys.stderr)
        return 1
    cpu = ((datas[-1].get("machine_info") or {}).get("cpu") or {}).get("brand_raw", "?")
    print(f"Times: {args.stat} over the rounds, ms, one thread. CPU: {cpu}. "
          "GB/s: bytes of input per second.\n")
    head = ["case", "dtype", "cyfed ms", "cyfed GB/s", "numpy ms", "numpy/cyfed", "goal",
            "met?"]
    body, missed = rows(table)
    print("| " + " | ".join(head) + " |")
    print("|---|---|---:|---:|---:|---:|---|---|")
    for row in body:
        print("| " + " | ".join(row) + " |")
    if missed:
        print(f"\nGoal not met: {', '.join(missed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
