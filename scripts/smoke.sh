#!/usr/bin/env bash
# The docker-compose topology without Docker: a Redis server, the API and two workers, as local processes.
#   bash scripts/smoke.sh                      # then open the printed URL; Ctrl-C stops everything
#   API_PORT=8080 WORKERS=3 bash scripts/smoke.sh
# Knobs (environment): API_PORT (8000), REDIS_PORT (6390: a throwaway Redis, not the one on 6379), WORKERS (2),
# and every percept setting (PERCEPT_API_KEY, PERCEPT_DEVICE, ...). Needs redis-server and the project's .venv
# (`make run` creates it). tests/test_smoke_topology.py runs the same topology automatically.
set -euo pipefail
cd "$(dirname "$0")/.."

api_port=${API_PORT:-8000}
redis_port=${REDIS_PORT:-6390}
workers=${WORKERS:-2}
if [ -x .venv/bin/percept ]; then percept=.venv/bin/percept; else percept=percept; fi
command -v redis-server >/dev/null || { echo "redis-server is not installed (apt-get install redis-server)" >&2; exit 1; }
command -v "$percept" >/dev/null || { echo "no percept command: run 'make run' once to create .venv" >&2; exit 1; }

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo "stopping..." >&2
  # Workers and the API first (SIGTERM: a worker finishes its batch), Redis last.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[$i]}" 2>/dev/null || true; done
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do wait "${pids[$i]}" 2>/dev/null || true; done
}
trap cleanup INT TERM EXIT

# Its own session, so a Ctrl-C reaches the API and the workers but not Redis, which cleanup stops last.
$(command -v setsid || true) redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no --loglevel warning &
pids+=($!)
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$redis_port" ping >/dev/null || { echo "redis-server did not start on port $redis_port" >&2; exit 1; }

export REDIS_URL="redis://127.0.0.1:$redis_port/0"
"$percept" serve --host 127.0.0.1 --port "$api_port" --redis-url "$REDIS_URL" &
pids+=($!)
for ((i = 0; i < workers; i++)); do
  "$percept" worker --redis-url "$REDIS_URL" &
  pids+=($!)
done

# Ready: /readyz answers 200 once a worker has loaded its models.
url="http://127.0.0.1:$api_port"
ready=0
for _ in $(seq 240); do
  if python3 -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1] + '/readyz', timeout=2)" "$url" \
      2>/dev/null; then
    ready=1
    break
  fi
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || { echo "a process exited during start-up" >&2; exit 1; }; done
  sleep 0.5
done
[ "$ready" = 1 ] || { echo "not ready after 120 s: see the logs above" >&2; exit 1; }
echo
echo "percept is up: $url  (Redis $REDIS_URL, $workers workers; Ctrl-C stops all)"
echo "  curl -s -X POST '$url/stylize?style=muse' -H 'Content-Type: image/jpeg' --data-binary @photo.jpg -o out.jpg"
if [ -n "${PERCEPT_API_KEY:-}" ]; then
  echo "  curl -s $url/admin/workers -H \"Authorization: Bearer \$PERCEPT_API_KEY\""
fi
wait -n "${pids[@]}" || true  # until Ctrl-C or one of them exits; the EXIT trap stops the rest
