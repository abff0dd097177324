#!/usr/bin/env bash
# Rebuilds the committed fixture tests/official_run/ from scratch with the OFFICIAL TR-DETR code.
#
# usage: TRDETR_OFFICIAL_GIT=/path/to/TR-DETR/.git bash experiments/make_official_run.sh [WORK_DIR]
#
#  1. tests/official_run/make_data.py writes the generated QVHighlights-layout dataset to
#     WORK_DIR/data (train 48 / val 23 queries, 24+16-d video, 16-d text; deterministic).
#  2. The official training script runs on it through the CPU harness
#     ../shared/tools/official-bench/train_official.sh (QVHighlights hyperparameters: bsz 32,
#     lr 1e-4, seed 2017, ...) with the smallest model the official code accepts appended to
#     its argv (see EXTRA below; hidden_dim stays 256: the decoder's sine embedding is 2 x 128).
#     --eval_bsz 5 makes the 23 val queries five batches (5,5,5,5,3) of different padded lengths.
#  3. From the official results folder it keeps: model_best.ckpt's state_dict as float32
#     model_best.npz (the .ckpt itself, optimizer included, is ~35 MB), opt.json,
#     best_hl_val_preds.jsonl and best_hl_val_preds_metrics.json (the official evaluation of
#     the best epoch), the annotation files, and run.json (provenance: official commit, torch,
#     argv, best epoch, the features' SHA-256). It checks that the official final inference
#     (hl_val_submission*.json*, model_best.ckpt reloaded) wrote the same predictions.
# Not run in CI: needs the official source (TRDETR_OFFICIAL_GIT) and ~2 minutes of 2 CPU cores.
# Env: TRDETR_PYTHON (the project's python, default python3), TRDETR_SHARED (default ../shared).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARED=${TRDETR_SHARED:-$HERE/../shared}
BENCH=$SHARED/tools/official-bench
PROJECT_PY=${TRDETR_PYTHON:-python3}
WORK=${1:-$(mktemp -d -t trdetr-official-run.XXXXXX)}
FIXTURE=$HERE/tests/official_run
EPOCHS=30
EXTRA=(--v_feat_dim 40 --t_feat_dim 16 --enc_layers 1 --dec_layers 1 --dim_feedforward 32
       --eval_bsz 5)

: "${TRDETR_OFFICIAL_GIT:?set TRDETR_OFFICIAL_GIT to a git directory of mingyao1120/TR-DETR}"
OFFICIAL_PY=$(bash "$BENCH/setup.sh" | tail -n 1)

mkdir -p "$WORK"
digest=$("$PROJECT_PY" "$FIXTURE/make_data.py" "$WORK/data")
echo "dataset in $WORK/data (features sha256 $digest)"

TRDETR_THREADS=${TRDETR_THREADS:-2} bash "$BENCH/train_official.sh" \
  "$WORK/data" "$WORK/out" "$EPOCHS" "${EXTRA[@]}"
RES=$(ls -d "$WORK"/out/hl-* | sort | tail -n 1)
for f in model_best.ckpt opt.json best_hl_val_preds.jsonl best_hl_val_preds_metrics.json \
         hl_val_submission.jsonl hl_val_submission_metrics.json; do
  [ -f "$RES/$f" ] || { echo "missing $RES/$f"; exit 1; }
done
cmp "$RES/best_hl_val_preds.jsonl" "$RES/hl_val_submission.jsonl"
cmp "$RES/best_hl_val_preds_metrics.json" "$RES/hl_val_submission_metrics.json"

cp "$RES/opt.json" "$RES/best_hl_val_preds.jsonl" "$RES/best_hl_val_preds_metrics.json" \
   "$WORK/data/train.jsonl" "$WORK/data/val.jsonl" "$FIXTURE/"
EXTRA_JSON=$(printf '%s\n' "${EXTRA[@]}" | "$OFFICIAL_PY" -c 'import json,sys; print(json.dumps(sys.stdin.read().split()))')
"$OFFICIAL_PY" - "$RES" "$FIXTURE" "$digest" "$EPOCHS" "$EXTRA_JSON" \
  "$(cat "${TRDETR_OFFICIAL_ROOT:-$HOME/.cache/trdetr-official}/src/.official_rev")" <<'PY'
import json, sys, numpy as np, torch
res, fixture, digest, epochs, extra, rev = sys.argv[1:]
ckpt = torch.load(f"{res}/model_best.ckpt", map_location="cpu", weights_only=False)
arrays = {k: v.detach().float().numpy() for k, v in ckpt["model"].items()}
np.savez(f"{fixture}/model_best.npz", **arrays)
json.dump(dict(
    official_commit=rev, torch=torch.__version__, n_epoch=int(epochs),
    best_epoch=int(ckpt["epoch"]) + 1, extra_argv=json.loads(extra),
    eval_bsz=ckpt["opt"].eval_bsz, features_sha256=digest,
    num_parameters=int(sum(a.size for a in arrays.values())),
), open(f"{fixture}/run.json", "w"), indent=1)
print(f"wrote {fixture}: best epoch {int(ckpt['epoch']) + 1}, {len(arrays)} tensors")
PY
