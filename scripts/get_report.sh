#!/usr/bin/env bash
# Trigger a report, poll until it is done, and save the CSV.
#   scripts/get_report.sh [BASE_URL] [OUTPUT.csv] [AS_OF]
#   e.g. scripts/get_report.sh http://127.0.0.1:8000 report.csv 2023-01-25T18:00:00Z
# Set API_TOKEN to send "Authorization: Bearer $API_TOKEN".
# On an HTTP error it prints the server's own message ({"error": ...}) and exits 1.
set -euo pipefail
base="${1:-http://127.0.0.1:8000}"
output="${2:-report.csv}"
as_of="${3:-}"
auth=()
[ -n "${API_TOKEN:-}" ] && auth=(-H "Authorization: Bearer ${API_TOKEN}")

# call URL [curl options...]: the body on stdout; on an HTTP error, the server's message on stderr and exit 1
call() {
  local url="$1" answer code body message
  shift
  answer=$(curl -sS "${auth[@]}" -w '\n%{http_code}' "$@" "$url")
  code="${answer##*$'\n'}"
  body="${answer%$'\n'*}"
  if [ "$code" -ge 400 ] 2>/dev/null || [ "$code" = "000" ]; then
    message=$(printf '%s' "$body" | sed -n 's/.*"error": *"\(\([^"\\]\|\\.\)*\)".*/\1/p')
    echo "error: HTTP $code from $url: ${message:-$body}" >&2
    exit 1
  fi
  printf '%s' "$body"
}

body='{}'
[ -n "$as_of" ] && body="{\"as_of\": \"${as_of}\"}"
answer=$(call "$base/trigger_report" -X POST -H 'Content-Type: application/json' -d "$body")
report_id=$(printf '%s' "$answer" | sed -n 's/.*"report_id": *"\([0-9a-f]*\)".*/\1/p')
[ -n "$report_id" ] || { echo "no report_id in: $answer" >&2; exit 1; }
echo "report $report_id triggered" >&2

for _ in $(seq 1 600); do
  state=$(call "$base/get_report?report_id=$report_id")
  case "$state" in
    *'"status":"Complete"'*|*'"status": "Complete"'*)
      call "$base/get_report?report_id=$report_id&format=csv" > "$output.part"
      mv "$output.part" "$output"
      echo "saved $(($(wc -l < "$output") - 1)) stores to $output" >&2
      exit 0 ;;
    *'"status":"Failed"'*|*'"status": "Failed"'*)
      echo "report failed: $state" >&2
      exit 1 ;;
    *'"phase":"counting"'*|*'"phase": "counting"'*) echo "  counting stores" >&2 ;;
    *) printf '%s\n' "$state" | sed -n 's/.*"progress": *{\([^}]*\)}.*/  progress: \1/p' >&2 ;;
  esac
  sleep 1
done
echo "gave up waiting for report $report_id" >&2
exit 1
