#!/bin/sh
# Read the baked inputs from forecasting/data/input and write a naive
# forecast (mean of the history) to forecasting/data/output.
set -eu
. forecasting/config/forecasting.conf
mkdir -p forecasting/data/output
out="forecasting/data/output/forecast-$RUN_ID.csv"
echo "series,horizon,forecast" >"$out"
for f in forecasting/data/input/*.csv; do
    series="$(basename "$f" .csv)"
    mean="$(awk -F, 'NR > 1 { s += $2; n++ } END { if (n) printf "%.2f", s / n; else print 0 }' "$f")"
    echo "$series,$HORIZON_DAYS,$mean" >>"$out"
done
echo "forecast: wrote $out ($(($(wc -l <"$out") - 1)) series)"
