#!/usr/bin/env bash
# Side-by-side train-step (and eval-forward) throughput: the official PyTorch code on CPU
# against experiments/benchmark.py, alternating runs in one sitting, same batch shapes
# (32 x 75 clips x 2818-d video, 32 tokens; QVHighlights model and losses).
#
#   TRDETR_OFFICIAL_GIT=/path/to/TR-DETR/.git bash experiments/compare_official.sh [ROUNDS] [-- benchmark args]
#
# TRDETR_OFFICIAL_GIT: a git directory of the public repository mingyao1120/TR-DETR (the
# official side is set up from it by ../shared/tools/official-bench/setup.sh, once).
# Prints every JSON line as it comes, then the median examples/s of each side and the ratio
# (trdetr_jax / official). Run it on an idle machine: other jobs on the cores make both
# sides' numbers meaningless (bench_step.py warns on a high load average).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-2}"
shift || true
[ "${1:-}" = "--" ] && shift
shared="${TRDETR_SHARED:-$(cd .. && pwd)/shared}"
bench="$shared/tools/official-bench"
if [ -z "${TRDETR_OFFICIAL_GIT:-}" ]; then
  echo "compare_official.sh: set TRDETR_OFFICIAL_GIT to a git directory of mingyao1120/TR-DETR" >&2
  exit 2
fi
[ -f "$bench/setup.sh" ] || { echo "compare_official.sh: $bench/setup.sh not found (TRDETR_SHARED)" >&2; exit 2; }
official_py="$(bash "$bench/setup.sh" | tail -n 1)"
threads="$(nproc)"
out="$(mktemp -d)"
for r in $(seq 1 "$rounds"); do
  echo "== round $r of $rounds: official" >&2
  "$official_py" "$bench/bench_step.py" --eval --threads "$threads" --steps 20 --warmup 3 \
    2>>"$out/official.err" | tee -a "$out/official.jsonl"
  echo "== round $r of $rounds: trdetr_jax" >&2
  python experiments/benchmark.py --steps 20 --warmup 3 --eval "$@" | tee -a "$out/ours.jsonl"
done
python - "$out" <<'PY'
import json, pathlib, statistics, sys
out = pathlib.Path(sys.argv[1])
def rows(name):
    return [json.loads(l) for l in (out / name).read_text().splitlines() if l.startswith("{")]
off, ours = rows("official.jsonl"), rows("ours.jsonl")
def med(rs, key):
    vals = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(vals) if vals else None
o_ex, j_ex = med(off, "examples_per_s"), med(ours, "examples_per_s")
o_ev, j_ev = med(off, "eval_forward_ms_median"), med(ours, "eval_forward_ms_median")
print(json.dumps({
    "official_examples_per_s": o_ex, "trdetr_jax_examples_per_s": j_ex,
    "train_step_ratio": round(j_ex / o_ex, 3) if o_ex and j_ex else None,
    "official_eval_forward_ms": o_ev, "trdetr_jax_eval_forward_ms": j_ev,
    "eval_forward_ratio": round(o_ev / j_ev, 3) if o_ev and j_ev else None,
    "rounds": len(ours),
}))
PY
