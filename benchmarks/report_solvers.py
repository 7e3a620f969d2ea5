"""Markdown tables of the time-to-solution benchmark (test_bench_solvers.py).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python -m pytest \\
        benchmarks/test_bench_solvers.py -q -p no:cacheprovider --benchmark-json=solvers.json
    .venv/bin/python benchmarks/report_solvers.py solvers.json [more.json ...] [--stat min]

Several JSON files (e.g. a re-run of the rows another job disturbed, ``-k
logistic-cond100``) are merged row by row: each (problem, solver) row comes whole
from the file where other processes took the least of the machine (``foreign_cpu``).

One table per problem: solver | seconds (the chosen statistic of the timed rounds,
default ``min``, the least disturbed on a shared machine) | iterations | passes
(kernel passes over the data, cyfed only) | ratio to scikit-learn's fastest solver
(< 1: faster than scikit-learn) | rounds and the share of the machine other
processes used meanwhile (``busy``).  Then the issue's goals:

* cyfed's best solver <= 0.5 x scikit-learn's fastest, per problem;
* gd-auto <= 2 x gd-grid-best (where both ran), with the grid's detail.

Cases missing from the JSON (skipped, failed, deselected) show as "—".
"""
import argparse
import json
import sys

PROBLEM_ORDER = ("logistic-cond100", "logistic-cond1e4", "softmax10-cond100", "logistic-sparse")
SOLVER_ORDER = ("lbfgs", "newton-cg", "newton-cholesky", "auto", "gd-auto", "gd-grid-best",
                "sklearn-lbfgs", "sklearn-newton-cg", "sklearn-newton-cholesky", "sklearn-liblinear")
CYFED_GOAL, GD_GOAL = 0.5, 2.0
BUSY = 0.10
MISSING = "—"


def collect(datas, stat):
    """{problem: {solver: row dict}} from pytest-benchmark JSONs (the quietest row wins)."""
    table = {}
    for source, data in enumerate(datas):
        for bench in data.get("benchmarks", []):
            info = bench.get("extra_info") or {}
            problem, solver = info.get("problem"), info.get("implementation")
            seconds = (bench.get("stats") or {}).get(stat)
            if problem is None or solver is None or seconds is None:
                continue
            row = dict(info, seconds=float(seconds),
                       source=source if len(datas) > 1 else None)
            old = table.setdefault(problem, {}).get(solver)
            if old is None or busyness(row) <= busyness(old):
                table[problem][solver] = row
    return table


def busyness(row):
    busy = row.get("foreign_cpu")
    return 1.0 if busy is None else busy


def label(solver, row):
    if solver.startswith("sklearn-"):
        return solver
    name = f"cyfed {solver}"
    if solver == "auto" and row and row.get("resolved"):
        name += f" (= {row['resolved']})"
    return name


def fmt(value, spec):
    return MISSING if value is None else format(value, spec)


def sklearn_best(rows):
    sk = {s: r["seconds"] for s, r in rows.items() if s.startswith("sklearn-")}
    return min(sk.items(), key=lambda kv: kv[1]) if sk else (None, None)


def cyfed_best(rows):
    cy = {s: r["seconds"] for s, r in rows.items()
          if not s.startswith("sklearn-") and s != "gd-grid-best"}
    return min(cy.items(), key=lambda kv: kv[1]) if cy else (None, None)


def table_lines(problem, rows):
    any_row = next(iter(rows.values()))
    lines = [f"### {problem} ({any_row.get('n')} x {any_row.get('d')}, "
             f"{any_row.get('threads')} threads; target f* (1 + 1e-6), "
             f"f* = {any_row.get('fstar'):.15g}, tight solves agree to "
             f"{any_row.get('fstar_spread'):.1e})", "",
             "| solver | seconds | iterations | passes | / sklearn fastest | rounds, busy |",
             "|---|---:|---:|---:|---:|---|"]
    _, best = sklearn_best(rows)
    solvers = [s for s in SOLVER_ORDER if s in rows] + sorted(set(rows) - set(SOLVER_ORDER))
    for solver in solvers:
        row = rows[solver]
        ratio = row["seconds"] / best if best else None
        busy = row.get("foreign_cpu")
        note = f"{row.get('rounds', MISSING)}"
        if row.get("source") is not None:
            note += f", file {row['source'] + 1}"
        if busy is not None and busy > BUSY:
            note += f", busy {busy:.0%}"
        lines.append(f"| {label(solver, row)} | {row['seconds']:.3f} | "
                     f"{fmt(row.get('iterations'), 'd')} | {fmt(row.get('passes'), 'd')} | "
                     f"{fmt(ratio, '.2f')} | {note} |")
    return lines


def goal_lines(problem, rows):
    lines = []
    sk_name, sk = sklearn_best(rows)
    cy_name, cy = cyfed_best(rows)
    if sk and cy:
        ratio = cy / sk
        lines.append(f"- {problem}: cyfed's best ({cy_name}, {cy:.3f} s) / sklearn's fastest "
                     f"({sk_name}, {sk:.3f} s) = {ratio:.2f} (goal <= {CYFED_GOAL}): "
                     f"{'MET' if ratio <= CYFED_GOAL else 'MISSED'}")
    else:
        lines.append(f"- {problem}: cyfed vs sklearn: {MISSING} (missing rows)")
    if "gd-auto" in rows and "gd-grid-best" in rows:
        auto, grid = rows["gd-auto"], rows["gd-grid-best"]
        ratio = auto["seconds"] / grid["seconds"]
        detail = grid.get("grid") or {}
        lines.append(f"- {problem}: gd-auto ({auto['seconds']:.3f} s, {auto.get('iterations')} "
                     f"it) / gd-grid-best ({grid['seconds']:.3f} s, {grid.get('iterations')} "
                     f"it, lr = {detail.get('best_multiplier')} x auto's "
                     f"{fmt(detail.get('auto_lr'), '.4g')}) = {ratio:.2f} "
                     f"(goal <= {GD_GOAL}): {'MET' if ratio <= GD_GOAL else 'MISSED'}")
        for mult, res in detail.items():
            if isinstance(res, dict):
                lines.append(f"  - lr = {mult} x auto: {res['status']}, "
                             f"{res['seconds']:.2f} s, {res['iterations']} iterations")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", help="pytest-benchmark JSON(s) of "
                        "test_bench_solvers.py")
    parser.add_argument("--stat", default="min", choices=("min", "median", "mean", "max"))
    args = parser.parse_args(argv)
    datas = []
    for path in args.json:
        with open(path) as fh:
            datas.append(json.load(fh))
    table = collect(datas, args.stat)
    if not table:
        sys.exit(f"{', '.join(args.json)}: no test_bench_solvers.py results")
    problems = [p for p in PROBLEM_ORDER if p in table] + sorted(set(table) - set(PROBLEM_ORDER))
    out = []
    for problem in problems:
        out += table_lines(problem, table[problem]) + [""]
    out.append(f"Goals (seconds = {args.stat} of the timed rounds):")
    for problem in problems:
        out += goal_lines(problem, table[problem])
    print("\n".join(out))


if __name__ == "__main__":
    main()
