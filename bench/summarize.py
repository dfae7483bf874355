#!/usr/bin/env python3
"""bench/summarize.py STAMP... — the median and range of each figure over several bench/run
reports (bench/results/STAMP.json), with the goals of issue 23 checked at the median (and the
flood bound in every run). Writes bench/results/<last stamp>-repeat<N>.{md,json} and prints the
Markdown. bench/run --repeat N calls it; it can also be run on reports already written."""

import json
import statistics
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def load(stamp):
    return json.loads((RESULTS / f"{stamp}.json").read_text())


def open_loop(run, fraction):
    return next(o for o in run["rest_list"]["open_loop"] if o["fraction"] == fraction)


# (label, how to read it from one run, goal: (test, text) or None, "median" or "every")
FIGURES = [
    ("Sync ingest / COPY→stage→merge on one backend (ratio)", lambda r: r["ingest"]["ratio_to_peer"], None),
    ("Sync ingest / the peer on as many backends as writers (ratio)",
     lambda r: r["ingest"]["ratio_to_peer_on_writers_backends"], None),
    ("Sync ingest, records/s", lambda r: r["ingest"]["provider_records_per_s"], None),
    ("No-change re-sync, s", lambda r: r["resync_no_change"]["seconds"], None),
    ("REST list (50 jobs), req/s", lambda r: r["rest_list"]["rps"], None),
    ("pgbench -M prepared, the same SQL, tps", lambda r: r["rest_list"]["peer_pgbench_tps"], None),
    ("REST list / pgbench (ratio)", lambda r: r["rest_list"]["ratio_to_peer"], (lambda v: v >= 0.8, "≥ 0.8", "median")),
    ("REST service CPU per 1,000 requests, s", lambda r: r["rest_list"]["cpu_s_per_1k"], None),
    ("REST p50 at 50% of peak (open loop), ms", lambda r: open_loop(r, 50)["p50_ms"], None),
    ("REST p99 at 25% of peak (open loop), ms", lambda r: open_loop(r, 25)["p99_ms"], None),
    ("REST p99 at 50% of peak (open loop), ms", lambda r: open_loop(r, 50)["p99_ms"], (lambda v: v <= 5, "≤ 5 ms", "median")),
    ("REST p99 at 75% of peak (open loop), ms", lambda r: open_loop(r, 75)["p99_ms"], None),
    ("pgbench -R, the same SQL at the same rate: p99 at 25% of peak, ms", lambda r: open_loop(r, 25).get("peer_p99_ms"), None),
    ("pgbench -R, the same SQL at the same rate: p99 at 50% of peak, ms", lambda r: open_loop(r, 50).get("peer_p99_ms"), None),
    ("pgbench -R, the same SQL at the same rate: p99 at 75% of peak, ms", lambda r: open_loop(r, 75).get("peer_p99_ms"), None),
    ("The data statement alone at the same rate (1 round trip, 4 clients): p99 at 50% of peak, ms",
     lambda r: open_loop(r, 50).get("floor_p99_ms"), None),
    ("GraphQL list / REST list (ratio)", lambda r: r["graphql"]["list_ratio_to_rest"], None),
    ("GraphQL nested (depth 6), req/s", lambda r: r["graphql"]["nested_rps"], None),
    ("Verified key on a route with no query / no auth (ratio)",
     lambda r: round(r["auth"]["verified_key_rps"] / r["auth"]["no_auth_rps"], 3), None),
    ("Valid traffic lost beside a 16-connection wrong-key flood, %", lambda r: r["auth"]["valid_loss_pct"],
     (lambda v: v < 10, "< 10% in every run", "every")),
    ("Valid traffic lost beside a 256-connection wrong-key flood, %", lambda r: r["auth"]["valid_loss_pct_wide"],
     (lambda v: v < 10, "< 10% in every run", "every")),
    ("Wrong keys answered per second (256 connections)", lambda r: r["auth"]["wide_flood_rps"], None),
    ("Keyset: last page / first page (ratio)", lambda r: round(r["keyset"]["last_page_ms"] / r["keyset"]["first_page_ms"], 2), None),
    ("Invoice export, NDJSON / psql \\copy of the same JSON (ratio)",
     lambda r: r["invoice_export"].get("ndjson_ratio_to_peer")
     or round(r["invoice_export"]["ndjson_seconds"] / r["invoice_export"]["peer_psql_copy_json_seconds"], 2),
     (lambda v: v <= 1.3, "≤ 1.3", "median")),
    ("Invoice export, CSV / psql \\copy of the same select (ratio)",
     lambda r: r["invoice_export"].get("csv_ratio_to_peer")
     or round(r["invoice_export"]["csv_seconds"] / r["invoice_export"]["peer_psql_copy_same_csv_seconds"], 2),
     (lambda v: v <= 1.3, "≤ 1.3", "median")),
    ("Invoice export, CSV / psql \\copy of the table's own columns (ratio)",
     lambda r: round(r["invoice_export"]["csv_seconds"] / r["invoice_export"]["peer_psql_copy_csv_seconds"], 2), None),
    ("Invoice export, service RSS growth during it, KiB",
     lambda r: max(r["invoice_export"]["rss_kb_max_during_ndjson"], r["invoice_export"]["rss_kb_max_during_csv"])
     - r["invoice_export"]["rss_kb_before"], None),
    ("Jobs export, NDJSON / psql \\copy (ratio)",
     lambda r: round(r["export"]["ndjson_seconds"] / r["export"]["peer_psql_copy_seconds"], 2), None),
]


def fmt(v):
    if isinstance(v, float):
        return f"{round(v):,}" if abs(v) >= 100 else f"{round(v, 3):g}"
    return f"{v:,}"


def main(stamps):
    if not stamps:
        sys.exit("usage: bench/summarize.py STAMP... (reports in bench/results/)")
    runs = [load(s) for s in stamps]
    modes = {r["mode"] for r in runs}
    rows, summary, verdicts = [], [], []
    for label, read, goal in FIGURES:
        values = [read(r) for r in runs]
        median = statistics.median(values)
        verdict = "—"
        if goal:
            test, text, how = goal
            met = all(test(v) for v in values) if how == "every" else test(median)
            verdict = f"{text}: {'met' if met else 'NOT met'}"
            verdicts.append((label, met))
        rows.append(f"| {label} | {fmt(median)} | {fmt(min(values))} – {fmt(max(values))} | "
                    f"{', '.join(fmt(v) for v in values)} | {verdict} |")
        summary.append({"figure": label, "median": median, "min": min(values), "max": max(values), "runs": values,
                        "goal": goal[1] if goal else None})
    first = runs[0]
    name = f"{stamps[-1]}-repeat{len(stamps)}"
    met = sum(1 for _, m in verdicts if m)
    md = f"""# Benchmark {name} ({'/'.join(sorted(modes))}, {len(runs)} runs)

{first['machine']}. Each run seeds its own cluster: {first['data']['provider_records']:,} ServiceM8 records →
{first['data']['mirror_rows']:,} mirror rows over {first['data']['companies']:,} companies (skewed), {first['data']['endpoints']} endpoints;
load {first['load']['connections']} connections, {first['load']['seconds']} s per workload. Runs: {', '.join(stamps)}
(each report beside this one). Goals (issue 23) are checked at the median, the flood bound in every run:
{met} of {len(verdicts)} met.

| Figure | Median | Range | Runs | Goal |
|---|---|---|---|---|
""" + "\n".join(rows) + "\n"
    (RESULTS / f"{name}.md").write_text(md)
    (RESULTS / f"{name}.json").write_text(json.dumps({"runs": stamps, "figures": summary}, indent=2))
    print(md)


if __name__ == "__main__":
    main(sys.argv[1:])
