"""Table of the federated round benchmarks: cyfed beside the plain numpy FedAvg.

    python benchmarks/report_federated.py fed.json

(fed.json from ``pytest benchmarks/test_bench_federated.py --benchmark-json=fed.json``.)
One row per (workload, threads): best seconds per round of each side,
numpy / cyfed, and what client-level DP (central / distributed noise) adds to
cyfed's round; then the server's part alone: FedAvg's weighted mean beside
DP-FedAvg's clip + sum + noise + epsilon, in microseconds.
"""
import json
import sys


def main(path):
    rows = {}
    for bench in json.load(open(path))["benchmarks"]:
        impl = bench.get("extra_info", {}).get("implementation")
        rows.setdefault(bench["group"], {})[impl] = bench["stats"]["min"]
    print("| workload | dtype | threads | cyfed ms/round | numpy ms/round | numpy / cyfed "
          "| DP central | DP distributed |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for group in sorted(g for g in rows if g.startswith("fedavg-")):
        _, workload, threads = group.split("-")
        workload, _, dtype = workload.partition("_")
        cy, ref = rows[group].get("cyfed"), rows[group].get("numpy")
        ratio = f"{ref / cy:.1f}" if cy and ref else "—"
        overhead = [f"{rows[group][f'cyfed-dp-{n}'] / cy - 1:+.1%}"
                    if cy and f"cyfed-dp-{n}" in rows[group] else "—"
                    for n in ("central", "distributed")]
        print(f"| {workload} | {dtype} | {threads[1:]} | {cy * 1e3 if cy else float('nan'):.1f} | "
              f"{ref * 1e3 if ref else float('nan'):.1f} | {ratio} | {' | '.join(overhead)} |")

    server = sorted((g for g in rows if g.startswith("server-")),
                    key=lambda g: [int(part[1:]) for part in g.split("-")[1:]])
    if server:
        print("\n| clients | threads | FedAvg weighted mean µs | DP-FedAvg server step µs "
              "| DP extra µs |")
        print("|---:|---:|---:|---:|---:|")
        for group in server:
            _, m, threads = group.split("-")
            plain, dp = rows[group].get("plain"), rows[group].get("dp-central")
            if plain and dp:
                print(f"| {m[1:]} | {threads[1:]} | {plain * 1e6:.0f} | {dp * 1e6:.0f} | "
                      f"{(dp - plain) * 1e6:+.0f} |")


if __name__ == "__main__":
    main(sys.argv[1])
