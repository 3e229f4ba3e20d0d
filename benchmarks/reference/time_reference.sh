#!/usr/bin/env bash
# Time the public COBRA reference (github:mhmoslemi/COBRA, commit aa567ff) on this machine: DM
# backbone, per-iteration seconds and one 1500-epoch evaluation. Check the reference out into
# .ref/COBRA (git-ignored; never commit its code) or point COBRA_DIR at it, then
#
#   DATA_ROOT=/path/with/MNIST/raw+FashionMNIST/raw OUT=/path/out bash benchmarks/reference/time_reference.sh
#
# DATA_ROOT must hold torchvision's layout with the four UNCOMPRESSED IDX files:
#   $DATA_ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
#   $DATA_ROOT/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
# (the reference calls torchvision MNIST/FashionMNIST(download=True) with root
#  $DATA_ROOT/MNIST resp. $DATA_ROOT/FashionMNIST and raw_folder overridden to root/raw;
#  with the files present nothing is downloaded).
# Optional: DATASET (default Colored_FashionMNIST_background when FashionMNIST is present,
# else Colored_MNIST_foreground), PYTHON (default python3), CONFIGS (mode:ipc:iterations ...,
# eval:ipc:epochs), BATCH_REAL (default 600, the reference's default).
# Output: $OUT/reference_times.csv (what,ipc,mode,reference_s) and $OUT/reference_times.log.
# Needs: torch, torchvision, numpy, scipy, pillow, tqdm (all in the H200 image). No edits to
# the reference: limits are passed as its own flags (--Iteration N --num_eval 0, or
# --Iteration 0 --num_eval 1 --epoch_eval_train 1500); timing by wrappers (see time_reference.py).
# A full, resumable reference run (for machines lent in short calls): run_reference.py, see README.md.
set -euo pipefail
: "${DATA_ROOT:?set DATA_ROOT}"
: "${OUT:?set OUT}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python3}"
CONFIGS="${CONFIGS:-cobra:10:30 cobra:50:10 vanilla:10:30 fairdd:10:30 vanilla:50:10 fairdd:50:10 eval:10:1500}"
mkdir -p "$OUT"
DS_ARGS=()
if [ -n "${DATASET:-}" ]; then DS_ARGS=(--dataset "$DATASET"); fi
export PYTHONUNBUFFERED=1
# the reference wraps nets in DataParallel when it sees more than one GPU: time on one
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"
# shellcheck disable=SC2086
"$PY" "$HERE/time_reference.py" --data-root "$DATA_ROOT" --out "$OUT" "${DS_ARGS[@]}" \
    --batch-real "${BATCH_REAL:-600}" --configs $CONFIGS 2>&1 | tee "$OUT/reference_stdout.log"
cat "$OUT/reference_times.csv"
