#!/usr/bin/env bash
# The paper's protocol fanned out over a SLURM job array, one GPU per task.
#
#   sbatch scripts/slurm_array.sh prepare                  # once (reads the audio; CPU is enough)
#   sbatch --array=0-7 scripts/slurm_array.sh train        # 30 (model, run) trainings over 8 GPUs, dealt
#                                                          # by cost; a task's runs of one model train stacked
#   sbatch --array=0-15 scripts/slurm_array.sh evaluate    # BSS Eval of every run on every test excerpt
#                                                          # (reads the audio; museval runs on the CPU)
#   sbatch --array=0-15 scripts/slurm_array.sh couplings   # NCA segments split over 16 tasks
#   sbatch scripts/slurm_array.sh report                   # once every shard has finished
#
# Chain them with --dependency=afterok:<jobid>. Every task resumes where it
# stopped, so a preempted or failed task is simply resubmitted.
#SBATCH --job-name=nca-np
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
#SBATCH --time=12:00:00
#SBATCH --output=logs/%x-%A_%a.out
set -euo pipefail
stage=${1:?usage: scripts/slurm_array.sh prepare|train|evaluate|couplings|report}
cd "${SLURM_SUBMIT_DIR:-.}"
profile=${PROFILE:-paper}          # or demo, or a .toml path
device=${DEVICE:-gpu}
workdir=${WORKDIR:-.}
python=${PYTHON:-.venv/bin/python}
if [ "$profile" = paper ]; then : "${MUSDB_PATH:?set MUSDB_PATH to the MUSDB18 folder}"; fi
common=(--profile "$profile" --workdir "$workdir" --quiet)
case "$stage" in
  prepare|report)
    exec "$python" -m nca_np "$stage" "${common[@]}" ;;
  train|evaluate|couplings)
    shard="${SLURM_ARRAY_TASK_ID:-0}/${SLURM_ARRAY_TASK_COUNT:-1}"
    exec "$python" -m nca_np "$stage" "${common[@]}" --device "$device" --shard "$shard" ;;
  *)
    echo "unknown stage $stage: use prepare, train, evaluate, couplings or report" >&2; exit 2 ;;
esac
