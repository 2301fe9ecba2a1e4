#!/usr/bin/env bash
# The component's Run step:  bash run.sh VENV_DIR WORK_DIR
# 1. Install a verified gallery (mpd sync) before the pipeline starts; offline, run on
#    the last good one.  2. Run the pipeline with the component configuration read over
#    IPC.  3. Poll for a new gallery; when one is installed, restart the pipeline on it
#    (the outbox is on disk, so nothing confirmed is lost).
# Gallery settings come from the component configuration through the recipe's Setenv
# (MPD_GALLERY_SOURCE, MPD_GALLERY_PUBLIC_KEY_PEM, MPD_GALLERY_INTERVAL_S); changing
# them in a deployment restarts the component.
set -uo pipefail

VENV=$1
WORK=$2
MPD="$VENV/bin/mpd"
GALLERY="$WORK/gallery"
KEY="$WORK/gallery-public-key.pem"
CONFIG="$WORK/component-config.json"
INTERVAL=${MPD_GALLERY_INTERVAL_S:-3600}
EDGE=""

fail() { echo "mpd run: $*" >&2; exit 1; }

[ -n "${MPD_GALLERY_SOURCE:-}" ] || fail "gallery/source is not configured (deploy a configuration merge with gallery.source)"
[ -n "${MPD_GALLERY_PUBLIC_KEY_PEM:-}" ] || fail "gallery/public_key_pem is not configured: an unsigned gallery is never used"
umask 077
printf '%s\n' "$MPD_GALLERY_PUBLIC_KEY_PEM" > "$KEY"
export MPD_GALLERY_PUBLIC_KEY="$KEY"

sync_gallery() {  # prints mpd sync's one-line result; fails if the sync failed
  "$MPD" sync --once --from "$MPD_GALLERY_SOURCE" --dir "$GALLERY"
}

start_edge() {
  "$VENV/bin/python" -m edge_app.ipc_config > "$CONFIG.tmp" && mv "$CONFIG.tmp" "$CONFIG" || fail "cannot read the component configuration"
  "$MPD" -v edge run --config "$CONFIG" --bundle "$GALLERY" &
  EDGE=$!
}

stop_edge() {
  if [ -n "$EDGE" ]; then
    kill -TERM "$EDGE" 2>/dev/null
    wait "$EDGE" 2>/dev/null
  fi
  EDGE=""
}

trap 'stop_edge; exit 0' INT TERM

until sync_gallery; do
  [ -e "$GALLERY/current" ] && { echo "mpd run: gallery source unreachable, running on the installed gallery" >&2; break; }
  echo "mpd run: no gallery installed yet; retrying in 60 s" >&2
  sleep 60 & wait $!
done

start_edge
while true; do
  sleep "$INTERVAL" & SLEEPER=$!
  wait -n "$EDGE" "$SLEEPER"
  if ! kill -0 "$EDGE" 2>/dev/null; then
    kill "$SLEEPER" 2>/dev/null
    wait "$EDGE"
    status=$?
    fail "the pipeline exited with status $status"  # Greengrass restarts the component
  fi
  if result=$(sync_gallery) && [[ $result == *installed* ]]; then
    echo "mpd run: $result; restarting the pipeline on it" >&2
    stop_edge
    start_edge
  fi
done
