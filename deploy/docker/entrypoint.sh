#!/bin/sh
# Container roles: `head` (Ray head + serve deploy of serve_config.yaml), `worker` (joins
# RAY_HEAD_ADDRESS), anything else is run as given (e.g. `mlflow server ...`).
set -eu

RAY_PORT="${RAY_PORT:-6380}"
METRICS_PORT="${RAY_METRICS_EXPORT_PORT:-8080}"

stop_ray() {
  ray stop --force >/dev/null 2>&1 || true
  exit 0
}

case "${1:-head}" in
  head)
    trap stop_ray TERM INT
    ray start --head --port="$RAY_PORT" --dashboard-host=0.0.0.0 --dashboard-port=8265 \
      --metrics-export-port="$METRICS_PORT" --disable-usage-stats ${RAY_NUM_CPUS:+--num-cpus="$RAY_NUM_CPUS"}
    if [ "${RAYSPLIT_BOOTSTRAP_DEMO:-0}" = "1" ]; then
      # first start of a demo stack: register a champion and a challenger if none exist
      python -m raysplit.cli.bootstrap_demo
    fi
    serve deploy /app/serve_config.yaml -a http://127.0.0.1:8265
    while ray status >/dev/null 2>&1; do sleep 10; done
    ;;
  worker)
    trap stop_ray TERM INT
    ray start --address="${RAY_HEAD_ADDRESS:?set RAY_HEAD_ADDRESS=host:port}" \
      --metrics-export-port="$METRICS_PORT" --disable-usage-stats ${RAY_NUM_CPUS:+--num-cpus="$RAY_NUM_CPUS"}
    while ray status >/dev/null 2>&1; do sleep 10; done
    ;;
  *)
    exec "$@"
    ;;
esac
