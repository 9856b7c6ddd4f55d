#!/bin/sh
# Use (and refresh) the model cache, then write predictions.
set -eu
params=modelling/cache/sarima_params/default.params
[ -f "$params" ] || { echo "model: missing $params" >&2; exit 1; }
mkdir -p modelling/cache/time_moe_cache
echo "run=$RUN_ID" >"modelling/cache/time_moe_cache/$RUN_ID.cache"
out="modelling/predictions/predictions-$RUN_ID.csv"
latest="$(ls -1 forecasting/data/output/forecast-*.csv | tail -n 1)"
{ echo "# model: $(grep -v '^#' "$params" | tr '\n' ' ')"; cat "$latest"; } >"$out"
echo "model: wrote $out"
