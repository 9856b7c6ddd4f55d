#!/bin/sh
# "Scrape" today's prices into scraping/scraped_data (a share directory).
set -eu
out="scraping/scraped_data/prices-$RUN_ID.csv"
{
    echo "date,item,price"
    echo "$(date -u +%Y-%m-%d),widget,$(( $(date +%s) % 50 + 10 ))"
    echo "$(date -u +%Y-%m-%d),gadget,$(( $(date +%s) % 30 + 20 ))"
} >"$out"
echo "scrape: wrote $out"
