"""Tables of the secure-aggregation benchmarks (test_bench_secagg.py).

    python benchmarks/report_secagg.py secagg.json

Best time of each benchmark: mask expansion + add in GB/s of ring vector per
core; secure_sum rounds beside np.sum; SecAgg+ scaling with time / (n log2 n).
"""
import json
import math
import sys


def main(path):
    benches = json.load(open(path))["benchmarks"]
    by_group = {}
    for b in benches:
        by_group.setdefault(b["group"], []).append(b)

    print("| mask expand + add | d | cipher | us | GB/s per core |")
    print("|---|---:|---|---:|---:|")
    for group in sorted(g for g in by_group if g.startswith("mask-")):
        for b in sorted(by_group[group], key=lambda b: b["extra_info"]["implementation"]):
            t, nbytes = b["stats"]["min"], b["extra_info"]["bytes"]
            print(f"| | {nbytes // 4} | {b['extra_info']['implementation']} | {t * 1e6:.1f} | "
                  f"{nbytes / t / 1e9:.2f} |")

    print("\n| round | n x d | degree | secure_sum ms | np.sum ms | secure / plain |")
    print("|---|---|---:|---:|---:|---:|")
    for group in sorted(g for g in by_group if g.startswith("round-")):
        side = {b["extra_info"]["implementation"]: b for b in by_group[group]}
        cy, ref = side.get("cyfed"), side.get("numpy")
        if cy is None:
            continue
        info = cy["extra_info"]
        t_ref = ref["stats"]["min"] if ref else float("nan")
        print(f"| {group[6:]} | {info['n']} x {info['d']} | {info['degree']} | "
              f"{cy['stats']['min'] * 1e3:.0f} | {t_ref * 1e3:.2f} | "
              f"{cy['stats']['min'] / t_ref:.0f} |")

    print("\n| SecAgg+ n | d | degree | round s | us / (n log2 n) | ms per client |")
    print("|---:|---:|---:|---:|---:|---:|")
    for b in sorted(by_group.get("scaling-log", []), key=lambda b: b["extra_info"]["n"]):
        info, t = b["extra_info"], b["stats"]["min"]
        n = info["n"]
        print(f"| {n} | {info['d']} | {info['degree']} | {t:.2f} | "
              f"{t / (n * math.log2(n)) * 1e6:.1f} | {t / n * 1e3:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1])
