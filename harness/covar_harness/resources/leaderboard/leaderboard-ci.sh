#!/usr/bin/env bash
# Leaderboard CI steps, the same on GitHub Actions and on your machine (written by `covar-harness init-leaderboard`).
#   bash leaderboard-ci.sh pr BASE_REF   validate every result file strictly, always (duplicates across old and
#                                        new included; fingerprints.json read from BASE_REF, not from the
#                                        change), list every file this branch adds, changes or deletes under the
#                                        results folder (any name: NUL-separated, unquoted), and append the
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

case "$mode" in
  pr)
    base=${2:?usage: leaderboard-ci.sh pr BASE_REF}
    # the trust anchor comes from the base branch: a pull request cannot register its own data version
    if git cat-file -e "$base:$fingerprints" 2>/dev/null; then
      anchor=$(mktemp)
      trap 'rm -f "$anchor"' EXIT
      git show "$base:$fingerprints" > "$anchor"
      extra=(--fingerprints "$anchor")
    fi
    echo "leaderboard-ci: files this change adds, changes or deletes under $results/:"
    count=0
    while IFS= read -r -d '' name; do
      printf '  %s\n' "${name//[[:cntrl:]]/?}"  # a file name is untrusted: no escape sequences in the log
      count=$((count + 1))
    done < <(git -c core.quotePath=false diff -z --name-only "$base"...HEAD -- "$results")
    [ "$count" -gt 0 ] || echo "  (none)"
    # every result folder is validated whatever the change touched (a samples.jsonl alone, any file name)
    covar-harness validate --strict "${extra[@]}" "$results"
    {
      echo "## Leaderboard with this submission"
      echo
      covar-harness leaderboard "$results" --format markdown --reference paper
    } >> "$summary"
    ;;
  main)
    [ -f "$fingerprints" ] && extra=(--fingerprints "$fingerprints")
    covar-harness validate --strict "${extra[@]}" "$results"
    covar-harness leaderboard "$results" --format markdown --reference paper > LEADERBOARD.md
    covar-harness report "$results" --out site --reference paper
    ;;
  *)
    echo "usage: leaderboard-ci.sh pr BASE_REF | main" >&2
    exit 2
    ;;
esac
