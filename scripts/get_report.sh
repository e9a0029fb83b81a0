#!/usr/bin/env bash
# Trigger a report, poll until it is done, and save the CSV.
#   scripts/get_report.sh [BASE_URL] [OUTPUT.csv] [AS_OF]
#   e.g. scripts/get_report.sh http://127.0.0.1:8000 report.csv 2023-01-25T18:00:00Z
# Set API_TOKEN to send "Authorization: Bearer $API_TOKEN".
set -euo pipefail
base="${1:-http://127.0.0.1:8000}"
output="${2:-report.csv}"
as_of="${3:-}"
auth=()
[ -n "${API_TOKEN:-}" ] && auth=(-H "Authorization: Bearer ${API_TOKEN}")

body='{}'
[ -n "$as_of" ] && body="{\"as_of\": \"${as_of}\"}"
answer=$(curl -sS -f "${auth[@]}" -X POST -H 'Content-Type: application/json' -d "$body" "$base/trigger_report")
report_id=$(printf '%s' "$answer" | sed -n 's/.*"report_id": *"\([0-9a-f]*\)".*/\1/p')
[ -n "$report_id" ] || { echo "no report_id in: $answer" >&2; exit 1; }
echo "report $report_id triggered" >&2

for _ in $(seq 1 600); do
  state=$(curl -sS -f "${auth[@]}" "$base/get_report?report_id=$report_id")
  case "$state" in
    *'"status":"Complete"'*|*'"status": "Complete"'*)
      curl -sS -f "${auth[@]}" -o "$output" "$base/get_report?report_id=$report_id&format=csv"
      echo "saved $(($(wc -l < "$output") - 1)) stores to $output" >&2
      exit 0 ;;
    *'"status":"Failed"'*|*'"status": "Failed"'*)
      echo "report failed: $state" >&2
      exit 1 ;;
    *) printf '%s\n' "$state" | sed -n 's/.*"progress": *{\([^}]*\)}.*/  progress: \1/p' >&2 ;;
  esac
  sleep 1
done
echo "gave up waiting for report $report_id" >&2
exit 1
