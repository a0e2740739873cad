#!/usr/bin/env bash
# Predictions as data, in one run:
# 1. server CPU per request (bench/cpu.sh: c=32, single-row V2 JSON, the server on CPU 1) with the
#    prediction log off, at 1 % and at 100 % to Parquet in a local directory, and at 100 % to
#    PostgreSQL; the four alternated ROUNDS times, medians reported;
# 2. rows per second the log's writer puts into each store: a directory, an S3 bucket (s3s-fs on
#    loopback) and PostgreSQL (crates/predictions/examples/throughput.rs, 200,000 rows);
# 3. `modelship predict` on ROWS rows (CSV in, Parquet out) against ONNX Runtime in-process
#    (Python: the same CSV read by pyarrow, the same model, chunks of 8,192), and whether the two
#    agree.
# PostgreSQL and s3s-fs are private instances in a temporary directory, as the tests start them.
#
# Usage: bench/predictions.sh      (ROUNDS=3, DURATION=8, ROWS=1000000)
# Needs: scripts/setup.sh --test (PostgreSQL, s3s-fs, pyarrow), wrk (apt-get install wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${ROUNDS:-3}"
duration="${DURATION:-8}"
rows="${ROWS:-1000000}"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 1; rm -rf "$work"; }
trap cleanup EXIT
cargo build --release --locked -p modelship >&2
cargo build --release --locked -p modelship-predictions --features postgres,s3 --example throughput >&2
bin=target/release/modelship
py=.venv/bin/python

# A private PostgreSQL. It refuses to run as root: as root, it runs as the package's postgres user.
pgbin=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d | sort | tail -n 1)
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
mkdir "$work/pg"
chmod 711 "$work"   # the postgres user must reach its directory
if [ "$(id -u)" -eq 0 ]; then chown postgres "$work/pg"; fi
as_pg "$pgbin/initdb" -D "$work/pg/data" -U modelship --auth=trust --no-sync >/dev/null
as_pg "$pgbin/postgres" -D "$work/pg/data" -p 18399 -k "$work/pg" -c listen_addresses=127.0.0.1 -c fsync=off > "$work/pg.log" 2>&1 &
pids+=($!)
pg_url="postgres://modelship@127.0.0.1:18399/postgres"
for _ in $(seq 100); do "$pgbin/psql" "$pg_url" -Atc 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.1; done

# A private S3 server.
mkdir -p "$work/s3/logs"
.cache/tools/bin/s3s-fs --host 127.0.0.1 --port 18398 --access-key bench --secret-key bench-secret "$work/s3" > "$work/s3.log" 2>&1 &
pids+=($!)
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1 AWS_ENDPOINT_URL=http://127.0.0.1:18398 AWS_ALLOW_HTTP=true
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/18398) 2>/dev/null && break; sleep 0.1; done

echo "## 1. Server CPU per request (c=32, median of $rounds alternated rounds of ${duration} s)"
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
point() {  # point NAME [serve args...]: appends "cpu_us rps p99_us"
  local name=$1
  shift
  DURATION="$duration" bench/cpu.sh "$bin" "$@" | python3 -c 'import json,sys; l=json.load(sys.stdin); print(l["cpu_us"], l["rps"], l["p99_us"])' >> "$work/point-$name"
}
for round in $(seq "$rounds"); do
  point off
  point one --prediction-log "$work/log-one-$round" --prediction-log-sample stable=0.01
  point all --prediction-log "$work/log-all-$round"
  point pg --prediction-log "$pg_url"
done
off=$(awk '{print $1}' "$work/point-off" | median)
echo "| prediction log | server CPU µs/request | vs off | req/s | p99 µs |"
echo "|---|---:|---:|---:|---:|"
for kind in off one all pg; do
  cpu=$(awk '{print $1}' "$work/point-$kind" | median)
  rps=$(awk '{print $2}' "$work/point-$kind" | median)
  p99=$(awk '{print $3}' "$work/point-$kind" | median)
  label=$(case $kind in off) echo "off";; one) echo "1 % to Parquet";; all) echo "100 % to Parquet";; pg) echo "100 % to PostgreSQL";; esac)
  echo "| $label | $cpu | $(python3 -c "print(f'{$cpu / $off:.3f}x')") | $rps | $p99 |"
done
echo "rows kept at 100 % to Parquet: $(find "$work"/log-all-* -name '*.parquet' | wc -l) files"

echo
echo "## 2. Rows per second into each store (200,000 predictions, 30 inputs each)"
for store in "$work/tp-dir" "s3://logs/throughput" "$pg_url"; do
  target/release/examples/throughput "$store" 200000
done

echo
echo "## 3. Batch scoring: modelship predict against ONNX Runtime in-process ($rows rows)"
"$py" - "$work/rows.csv" "$rows" <<'EOF'
import random, sys
random.seed(7)
with open(sys.argv[1], "w") as f:
    f.write(",".join(f"f{i}" for i in range(30)) + "\n")
    for _ in range(int(sys.argv[2])):
        f.write(",".join(f"{random.uniform(-3, 3):.4f}" for _ in range(30)) + "\n")
EOF
"$bin" predict examples/models/fraud.onnx --input "$work/rows.csv" --output "$work/preds.parquet" --json | tee "$work/predict.json"
"$py" - "$work/rows.csv" "$work/preds.parquet" "$(find .venv/lib -name 'libonnxruntime.so.*' | head -n 1)" <<'EOF'
import json, sys, time
import numpy as np, onnxruntime as ort, pyarrow.csv as pacsv, pyarrow.parquet as pq
started = time.perf_counter()
table = pacsv.read_csv(sys.argv[1])
x = np.column_stack([table.column(i).to_numpy() for i in range(table.num_columns)]).astype(np.float32)
session = ort.InferenceSession("examples/models/fraud.onnx", providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
out = []
for start in range(0, len(x), 8192):
    probabilities = session.run(None, {name: x[start:start + 8192]})[1]
    out.append(np.asarray(probabilities)[:, 1] if not isinstance(probabilities, list) else np.array([p[1] for p in probabilities]))
scores = np.concatenate(out).astype(np.float32)
seconds = time.perf_counter() - started
ours = pq.read_table(sys.argv[2]).column("prediction").to_numpy().astype(np.float32)
print(json.dumps({"in_process_ort_seconds": round(seconds, 3), "rows": len(x), "rows_per_second": round(len(x) / seconds),
                  "rows_differing": int((ours != scores).sum()), "max_abs_difference": float(np.abs(ours - scores).max())}))
EOF
