#!/usr/bin/env bash
# Leaderboard CI steps, the same on GitHub Actions and on your machine (written by `covar-harness init-leaderboard`).
#   bash leaderboard-ci.sh pr BASE_REF   validate every result file strictly (duplicates across old and new
#                                        included), list the files this branch adds or changes, and append the
#                                        leaderboard table to $GITHUB_STEP_SUMMARY (stdout when unset)
#   bash leaderboard-ci.sh main          validate, then rebuild LEADERBOARD.md and the static site in site/
# RESULTS_DIR (default results) and FINGERPRINTS (a JSON {task: [fingerprint, ...]} of your own data versions,
# default fingerprints.json when present) adjust it.
set -euo pipefail
mode=${1:?usage: leaderboard-ci.sh pr BASE_REF | main}
results=${RESULTS_DIR:-results}
summary=${GITHUB_STEP_SUMMARY:-/dev/stdout}
fingerprints=${FINGERPRINTS:-fingerprints.json}
extra=()
[ -f "$fingerprints" ] && extra=(--fingerprints "$fingerprints")

case "$mode" in
  pr)
    base=${2:?usage: leaderboard-ci.sh pr BASE_REF}
    changed=$(git diff --name-only --diff-filter=AMR "$base"...HEAD -- "$results" | grep '\.json$' || true)
    if [ -z "$changed" ]; then
      echo "leaderboard-ci: no result files changed under $results/"
      exit 0
    fi
    echo "leaderboard-ci: result files in this change:"
    echo "$changed" | sed 's/^/  /'
    covar-harness validate --strict "${extra[@]}" "$results"
    {
      echo "## Leaderboard with this submission"
      echo
      covar-harness leaderboard "$results" --format markdown --reference paper
    } >> "$summary"
    ;;
  main)
    covar-harness validate --strict "${extra[@]}" "$results"
    covar-harness leaderboard "$results" --format markdown --reference paper > LEADERBOARD.md
    covar-harness report "$results" --out site --reference paper
    ;;
  *)
    echo "usage: leaderboard-ci.sh pr BASE_REF | main" >&2
    exit 2
    ;;
esac
