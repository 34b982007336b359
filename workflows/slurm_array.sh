#!/usr/bin/env bash
# qsmprep on a SLURM cluster as a job array: one participant per array task.
#
#   sbatch --array=1-N slurm_array.sh BIDS_DIR OUTPUT_DIR WORK_ROOT [qsmprep options...]
#
# Task i processes the i-th participant of BIDS_DIR/participants.tsv (first column,
# participant_id), or of the sorted sub-* folders where there is no participants.tsv; N is
# their number ('--array=1-N%10' runs at most 10 at a time). Each task has its own work folder,
# WORK_ROOT/sub-<label>, so a failed or cancelled task resumes from it when it is resubmitted
# (e.g. 'sbatch --array=3,7 ...'). Options after WORK_ROOT go to qsmprep unchanged.
#
# Every task appends one row to the exit-code table (a lock keeps concurrent rows whole):
#   participant_id  exit_code  job_id  host  started  finished  elapsed_s
# in $QSMPREP_EXIT_CODES (default OUTPUT_DIR/logs/slurm_array_exit_codes.tsv).
#
# Environment:
#   QSMPREP_SIF         run 'apptainer run --cleanenv ... $QSMPREP_SIF' instead of qsmprep
#   QSMPREP             the qsmprep command outside a container (default: qsmprep)
#   QSMPREP_EXIT_CODES  the exit-code table
# --nprocs and --mem-gb follow the task's allocation (--cpus-per-task, --mem) unless given.
#
#SBATCH --job-name=qsmprep
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --time=12:00:00
#SBATCH --output=qsmprep-%A_%a.out
set -uo pipefail

if [ "$#" -lt 3 ]; then
    echo "usage: sbatch --array=1-N $0 BIDS_DIR OUTPUT_DIR WORK_ROOT [qsmprep options...]" >&2
    exit 2
fi
bids_dir=$(readlink -f "$1")
output_dir=$(readlink -f "$2")
work_root=$(readlink -f "$3")
shift 3

task=${SLURM_ARRAY_TASK_ID:?"not an array task: submit with sbatch --array=1-N"}

# The participants, in a stable order.
participants=()
if [ -f "$bids_dir/participants.tsv" ]; then
    while IFS=$'\t' read -r participant _; do
        participant=${participant%$'\r'}
        case "$participant" in
            sub-*) participants+=("$participant") ;;
        esac
    done <"$bids_dir/participants.tsv"
fi
if [ "${#participants[@]}" -eq 0 ]; then
    for folder in "$bids_dir"/sub-*/; do
        [ -d "$folder" ] && participants+=("$(basename "$folder")")
    done
fi
if [ "$task" -lt 1 ] || [ "$task" -gt "${#participants[@]}" ]; then
    echo "array task $task: there are ${#participants[@]} participants in $bids_dir" >&2
    exit 2
fi
participant=${participants[$((task - 1))]}
label=${participant#sub-}
work_dir="$work_root/$participant"
mkdir -p "$output_dir/logs" "$work_dir"

# Resources from the allocation, unless the options already set them.
extra=()
case " $* " in
    *" --nprocs "* | *" --nthreads "*) ;;
    *) extra+=(--nprocs "${SLURM_CPUS_PER_TASK:-1}") ;;
esac
case " $* " in
    *" --mem-gb "* | *" --mem "*) ;;
    *) if [ -n "${SLURM_MEM_PER_NODE:-}" ]; then
           extra+=(--mem-gb "$(awk -v mb="$SLURM_MEM_PER_NODE" 'BEGIN { printf "%.1f", mb / 1024 }')")
       fi ;;
esac

if [ -n "${QSMPREP_SIF:-}" ]; then
    command=(apptainer run --cleanenv -B "$bids_dir" -B "$output_dir" -B "$work_dir"
             "$QSMPREP_SIF")
else
    command=("${QSMPREP:-qsmprep}")
fi

started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
start_s=$(date +%s)
echo "array task $task: $participant on $(hostname), work folder $work_dir"
"${command[@]}" "$bids_dir" "$output_dir" participant --participant-label "$label" \
    -w "$work_dir" "${extra[@]}" "$@"
exit_code=$?
finished=$(date -u +%Y-%m-%dT%H:%M:%SZ)
elapsed=$(($(date +%s) - start_s))

table=${QSMPREP_EXIT_CODES:-$output_dir/logs/slurm_array_exit_codes.tsv}
job_id="${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-local}}_${task}"
{
    flock 9
    if [ ! -s "$table" ]; then
        printf 'participant_id\texit_code\tjob_id\thost\tstarted\tfinished\telapsed_s\n' >>"$table"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$participant" "$exit_code" "$job_id" \
        "$(hostname)" "$started" "$finished" "$elapsed" >>"$table"
} 9>>"$table.lock"
exit "$exit_code"
