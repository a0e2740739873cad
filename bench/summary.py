#!/usr/bin/env python3
"""Prints the BENCHMARKS.md tables for one bench/run.sh run: summary.py RESULTS/RUN_ID"""
import csv
import json
import os
import sys

prefix = sys.argv[1]
floor = json.load(open(prefix + "-floor.json"))
_, loop_p50, loop_p99, _ = open(prefix + "-loopback.txt").read().split()
loop_p50_ms = int(loop_p50) / 1000
floor_ms = floor["p50_us"] / 1000
print(f"floor (in-process inference, p50): {floor['p50_us']:.1f} us; loopback HTTP round trip (p50): {loop_p50_ms * 1000:.0f} us")

rows = list(csv.DictReader(open(prefix + ".csv"))) if os.path.exists(prefix + ".csv") else []
loads = [r for r in rows if r["tool"] != "coldstart" and r["concurrency"] not in ("", "0")]
starts = {r["target"]: r for r in rows if r["tool"] == "coldstart" or r["cold_start_s"] and r["concurrency"] in ("", "0")}
if not loads:
    sys.exit(0)
print()
print("| server | concurrency | req/s | p50 ms | p99 ms | server CPU ms/req | peak RSS MB |")
print("|---|---:|---:|---:|---:|---:|---:|")
for r in loads:
    print(f"| {r['target']} | {r['concurrency']} | {float(r['rps']):,.0f} | {r['p50_ms']} | {r['p99_ms']} | {r['server_cpu_ms_per_req']} | {r['rss_peak_mb']} |")
print()
print("| server | cold start s | idle RSS MB |")
print("|---|---:|---:|")
for target, r in starts.items():
    print(f"| {target} | {r['cold_start_s']} | {r['rss_idle_mb']} |")
by = {(r["target"], r["concurrency"]): r for r in loads}
seed32, ms32, ms1 = by.get(("seed", "32")), by.get(("modelship", "32")), by.get(("modelship", "1"))
print()
if seed32 and ms32:
    print(f"c=32 throughput, modelship / seed: {float(ms32['rps']) / float(seed32['rps']):.1f}x (target >= 15x)")
if ms1:
    bound = floor_ms + loop_p50_ms
    print(f"c=1 p50: {float(ms1['p50_ms']):.3f} ms = {float(ms1['p50_ms']) / bound:.2f}x (floor {floor_ms:.3f} ms + loopback {loop_p50_ms:.3f} ms) (target <= 2x)")
