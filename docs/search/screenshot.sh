#!/usr/bin/env bash
# Screenshots of the Ray dashboard during a search, with Prometheus scraping the trials' metrics.
# Needs Debian's `prometheus` and `chromium` packages. The dashboard runs on 127.0.0.1 only and,
# for the headless browser, without token auth (never do that on a network address: run_search.py
# refuses it).
#   bash docs/search/screenshot.sh            -> docs/search/dashboard-*.png
set -euo pipefail
cd "$(dirname "$0")/../.."
out=docs/search
work=$(mktemp -d)
cat > "$work/prometheus.yml" <<YML
global: {scrape_interval: 5s, evaluation_interval: 5s}
scrape_configs:
  - job_name: ray
    file_sd_configs: [{files: ['/tmp/ray/prom_metrics_service_discovery.json']}]
YML
RAY_AUTH_MODE=disabled .venv/bin/python run_search.py --space search_spaces/smoke.yaml \
    --epochs 20 --grace-period 20 --storage "$work/runs" --name watched --quiet &
search=$!
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address=127.0.0.1:9090 >"$work/prometheus.log" 2>&1 &
prom=$!
trap 'kill $search $prom 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 60); do  # until Prometheus has scraped a trial gauge
    sleep 5
    if curl -sf "http://127.0.0.1:9090/api/v1/query?query=ray_cattle_trial_epoch" | grep -q trial_id; then
        break
    fi
done
curl -sf "http://127.0.0.1:9090/api/v1/query?query=ray_cattle_trial_epoch" >"$out/prometheus-query.json"
sleep 30  # a few more epochs in the graph
shot() {
    chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1500,900 \
        --virtual-time-budget=15000 --screenshot="$1" "$2" 2>/dev/null
}
shot "$out/dashboard-actors.png" "http://127.0.0.1:8265/#/actors"
# The dashboard's Metrics view embeds Grafana (not packaged by Debian); Prometheus's own graph
# shows the same series.
shot "$out/prometheus-trials.png" \
    "http://127.0.0.1:9090/graph?g0.expr=ray_cattle_trial_map50_95&g0.tab=0&g0.range_input=5m"
echo "wrote $out/dashboard-actors.png, $out/prometheus-trials.png, $out/prometheus-query.json"
