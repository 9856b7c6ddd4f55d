#!/bin/bash
# The lease-race rig (issue 18 §2): THREADS racers open random files of a
# baked app directory for writing as fast as they can while `sharelink link`
# deletes them, and write only into a file that had no name any more when
# their open returned; each such write must be found afterwards (put back,
# then migrated). No kills: a LOST line is a loss sharelink did not see.
#
#   bash tests/tools/lease_race/run.sh BIN [ROUNDS] [FILES] [THREADS] [MS]
#
# BIN: a sharelink binary. Output: one line per round (opens, writes into a
# nameless file, lost, sharelink's warnings); a round that lost something
# is kept under $WORK/keep-<round>.
set -u
BIN=$1; R=${2:-100}; NF=${3:-300}; NT=${4:-12}; MS=${5:-3000}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${WORK:-$(mktemp -d /tmp/lease-race.XXXXXX)}
gcc -O2 -pthread -o "$WORK/racers" "$HERE/racers.c" || exit 1
for r in $(seq 1 "$R"); do
  sb=$WORK/sb-$r; rm -rf "$sb"; mkdir -p "$sb/app/data" "$sb/share"
  (cd "$sb/app/data" && for i in $(seq 0 $((NF-1))); do echo baked > "f$i"; done)
  printf 'app_root = "%s/app"\nshare_root = "%s/share"\nrequire_mount = false\n[links]\n"data" = { share = "data", migrate = "if-empty" }\n' "$sb" "$sb" > "$sb/cfg.toml"
  sleep 0.2
  "$WORK/racers" "$sb/app/data" "$NF" "$NT" "$MS" "$sb/racers.log" &
  wp=$!
  SHARELINK_LOG=debug "$BIN" --config "$sb/cfg.toml" link 2> "$sb/sharelink.err"; rc=$?
  wait $wp
  orph=$(grep -c orphan "$sb/racers.log"); lost=0
  while read -r f o tag ok ino us; do
    [ "$o" = orphan ] || continue
    if ! grep -rqs -- "$tag" "$sb/share" "$sb/app"; then
      lost=$((lost+1)); echo "LOST $f $tag $ok $ino $us"
    fi
  done < "$sb/racers.log"
  echo "round $r rc=$rc $(tail -1 "$sb/racers.log") nameless_writes=$orph lost=$lost warnings=$(grep -c 'while sharelink' "$sb/sharelink.err")"
  if [ "$lost" -gt 0 ]; then cp -r "$sb" "$WORK/keep-$r"; fi
  rm -rf "$sb"
done
