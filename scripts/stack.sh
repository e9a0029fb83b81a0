#!/usr/bin/env bash
# The whole multi-process stack on this machine, for trying it: a Dask scheduler, two Dask workers, gunicorn
# with two workers on DASK_SCHEDULER, and nginx in front where it is installed (scripts/install_nginx.sh).
# Run from the project's virtualenv (honcho is in requirements-dev.txt); Ctrl-C stops every process.
#
#   bash scripts/stack.sh          # then: curl -X POST http://127.0.0.1:8080/trigger_report
#
# SCHEDULER_PORT (8786), WEB_PORT (8000) and PROXY_PORT (8080) move the ports; the service's own settings
# (EMBEDDED_DB, MONGO_URI, DATA_DIR, API_TOKEN, ...) pass through from the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
export SCHEDULER_PORT="${SCHEDULER_PORT:-8786}" WEB_PORT="${WEB_PORT:-8000}" PROXY_PORT="${PROXY_PORT:-8080}"
export STACK_DIR="${STACK_DIR:-$PWD/deploy/temp/stack}"
export NGINX="${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}"
processes=(scheduler worker1 worker2 web)
if [ -x "$NGINX" ]; then
    # deploy/nginx.conf with this stack's ports, and a prefix of its own for nginx's temporary files
    mkdir -p "$STACK_DIR/temp"
    sed -e "s/listen 8080;/listen 127.0.0.1:${PROXY_PORT};/" \
        -e "s/server 127.0.0.1:8000;/server 127.0.0.1:${WEB_PORT};/" deploy/nginx.conf > "$STACK_DIR/nginx.conf"
    grep -q "listen 127.0.0.1:${PROXY_PORT};" "$STACK_DIR/nginx.conf"  # deploy/nginx.conf changed shape: stop
    processes+=(nginx)
    echo "stack: nginx on http://127.0.0.1:${PROXY_PORT}/ in front of gunicorn on ${WEB_PORT}" >&2
else
    echo "stack: nginx is not installed (bash scripts/install_nginx.sh): gunicorn on http://127.0.0.1:${WEB_PORT}/" >&2
fi
exec honcho start -f Procfile "${processes[@]}"
