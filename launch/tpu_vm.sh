#!/bin/bash
# she_jax on a Cloud TPU VM slice: create (or reuse) it, put the code on every worker,
# install, run the same `python -m experiments.run` on all workers, collect the logs.
#
#   launch/tpu_vm.sh --name=she-v5e-16 --zone=us-west4-a --accelerator=v5litepod-16 \
#       [--version=v2-alpha-tpuv5-lite] [--project=P] [--spot] [--queued] [--reuse] \
#       [--repo=https://github.com/ORG/she_jax.git --branch=main] [--gcs_bucket=B] \
#       [--logs=tpu_logs] [--delete] [--dry_run] -- --config=experiments/grpo.py:pod \
#       --workdir=/mnt/she_jax/runs/grpo_pod [--config.key=value ...]
#
# Options:
#   --name, --zone, --accelerator   the slice (required; --accelerator e.g. v4-32,
#                                   v5litepod-16, v5p-32, v6e-16)
#   --version                       TPU VM runtime (default: tpu-ubuntu2204-base)
#   --project                       gcloud project (default: gcloud's configured one)
#   --spot                          a spot (preemptible) slice
#   --queued                        ask through queued resources (waits until ACTIVE),
#                                   the way large or spot slices are usually granted
#   --reuse                         the slice exists: skip creation
#   --repo / --branch               git clone this on every worker instead of copying
#                                   the local checkout (`git archive HEAD`: committed code
#                                   only)
#   --gcs_bucket                    mount this bucket with gcsfuse at /mnt/she_jax on every
#                                   worker: put --workdir under it (orbax writes each
#                                   host's shards to the workdir, so all hosts must see it)
#   --logs                          local folder for each worker's log (default tpu_logs)
#   --delete                        delete the slice (or the queued resource) at the end
#   --dry_run                       print every command instead of running it
# Everything after `--` goes to experiments.run on every worker; the `pod` variant turns
# on config.distributed (jax detects the TPU slice's coordinator and process ids) and an
# fsdp mesh over all chips. --config.distributed.enabled=True is added when absent.
# A preempted spot slice: rerun with --reuse (or recreate) and the same flags; the run
# resumes from its last checkpoint in the workdir.

set -euo pipefail

NAME="" ZONE="" ACCELERATOR="" VERSION="tpu-ubuntu2204-base" PROJECT="" SPOT=0 QUEUED=0
REUSE=0 REPO="" BRANCH="main" BUCKET="" LOGS="tpu_logs" DELETE=0 DRY_RUN=0
RUN_FLAGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --accelerator=*) ACCELERATOR="${1#*=}" ;;
    --version=*) VERSION="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --spot) SPOT=1 ;;
    --queued) QUEUED=1 ;;
    --reuse) REUSE=1 ;;
    --repo=*) REPO="${1#*=}" ;;
    --branch=*) BRANCH="${1#*=}" ;;
    --gcs_bucket=*) BUCKET="${1#*=}" ;;
    --logs=*) LOGS="${1#*=}" ;;
    --delete) DELETE=1 ;;
    --dry_run) DRY_RUN=1 ;;
    --) shift; RUN_FLAGS=("$@"); break ;;
    *) echo "tpu_vm.sh: unknown option '$1' (experiments.run flags go after --)" >&2; exit 2 ;;
  esac
  shift
done
for required in NAME ZONE ACCELERATOR; do
  if [[ -z "${!required}" ]]; then
    echo "tpu_vm.sh: --$(echo "$required" | tr '[:upper:]' '[:lower:]') is required" >&2
    exit 2
  fi
done
if [[ ${#RUN_FLAGS[@]} -eq 0 ]]; then
  echo "tpu_vm.sh: give the experiments.run flags after --, e.g. -- --config=experiments/sft.py:pod" >&2
  exit 2
fi
if ! printf '%s\n' "${RUN_FLAGS[@]}" | grep -q -- '^--config.distributed.enabled'; then
  RUN_FLAGS+=("--config.distributed.enabled=True")
fi

GCLOUD=(gcloud)
[[ -n "$PROJECT" ]] && GCLOUD+=("--project=$PROJECT")
TPU=("${GCLOUD[@]}" compute tpus tpu-vm)
CODE_DIR="she_jax"  # on each worker, under the home directory

run() {  # run (or, with --dry_run, print) a command
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%q ' "$@"; echo
  else
    "$@"
  fi
}

on_workers() {  # a shell command on every worker of the slice
  run "${TPU[@]}" ssh "$NAME" --zone="$ZONE" --worker=all --command="$1"
}

# 1. The slice.
if [[ "$REUSE" == 0 ]]; then
  if [[ "$QUEUED" == 1 ]]; then
    args=(--node-id="$NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR"
          --runtime-version="$VERSION")
    [[ "$SPOT" == 1 ]] && args+=(--spot)
    run "${GCLOUD[@]}" compute tpus queued-resources create "$NAME" "${args[@]}"
    if [[ "$DRY_RUN" == 0 ]]; then
      echo "waiting for queued resource $NAME to become ACTIVE ..."
      while true; do
        state="$("${GCLOUD[@]}" compute tpus queued-resources describe "$NAME" \
                 --zone="$ZONE" --format='value(state.state)')"
        case "$state" in
          ACTIVE) break ;;
          FAILED|SUSPENDED) echo "queued resource $NAME is $state" >&2; exit 1 ;;
        esac
        sleep 30
      done
    fi
  else
    args=(--zone="$ZONE" --accelerator-type="$ACCELERATOR" --version="$VERSION")
    [[ "$SPOT" == 1 ]] && args+=(--spot)
    run "${TPU[@]}" create "$NAME" "${args[@]}"
  fi
fi

# 2. The code on every worker.
if [[ -n "$REPO" ]]; then
  on_workers "rm -rf ~/$CODE_DIR && git clone --depth=1 --branch=$(printf '%q' "$BRANCH") $(printf '%q' "$REPO") ~/$CODE_DIR"
else
  ARCHIVE="$(mktemp -d)/she_jax.tar.gz"
  run git -C "$(dirname "$0")/.." archive --format=tar.gz --output="$ARCHIVE" HEAD
  run "${TPU[@]}" scp "$ARCHIVE" "$NAME:~/she_jax.tar.gz" --zone="$ZONE" --worker=all
  on_workers "rm -rf ~/$CODE_DIR && mkdir -p ~/$CODE_DIR && tar -xzf ~/she_jax.tar.gz -C ~/$CODE_DIR"
fi

# 3. Install (jax with libtpu pinned by setup.py's tpu extra) and the shared workdir mount.
on_workers "cd ~/$CODE_DIR && python3 -m pip install -q -e '.[tpu]'"
if [[ -n "$BUCKET" ]]; then
  on_workers "sudo mkdir -p /mnt/she_jax && sudo chown \$USER /mnt/she_jax && (mountpoint -q /mnt/she_jax || gcsfuse --implicit-dirs $(printf '%q' "$BUCKET") /mnt/she_jax)"
fi

# 4. The run: the same command on every worker; each keeps its own log.
FLAGS_TEXT="$(printf '%q ' "${RUN_FLAGS[@]}")"
status=0
on_workers "cd ~/$CODE_DIR && python3 -u -m experiments.run $FLAGS_TEXT 2>&1 | tee ~/she_jax_run.log; exit \${PIPESTATUS[0]}" || status=$?

# 5. Logs: worker i's log to $LOGS/worker_i.log.
mkdir -p "$LOGS"
if [[ "$DRY_RUN" == 1 ]]; then
  WORKERS=1
else
  ENDPOINTS="$("${TPU[@]}" describe "$NAME" --zone="$ZONE" \
               --format='value(networkEndpoints[].ipAddress)' || true)"
  WORKERS="$(tr ';,' '\n\n' <<< "$ENDPOINTS" | grep -c . || true)"
  WORKERS="${WORKERS:-1}"
fi
for ((i = 0; i < WORKERS; i++)); do
  run "${TPU[@]}" scp "$NAME:~/she_jax_run.log" "$LOGS/worker_$i.log" --zone="$ZONE" --worker="$i" || true
done

# 6. Clean up.
if [[ "$DELETE" == 1 ]]; then
  if [[ "$QUEUED" == 1 ]]; then
    run "${GCLOUD[@]}" compute tpus queued-resources delete "$NAME" --zone="$ZONE" --force --quiet
  else
    run "${TPU[@]}" delete "$NAME" --zone="$ZONE" --quiet
  fi
fi
exit "$status"
