#!/usr/bin/env bash
# The component's Run step:  bash run.sh VENV_DIR WORK_DIR
# 1. Install a verified gallery (mpd sync) before the pipeline starts; offline, run on
#    the last good one.  2. Run the pipeline on the component configuration, which a
#    watcher keeps validated over IPC (a rejected deployment rolls back).  3. Restart the
#    pipeline when the watcher has written an accepted configuration or a new gallery is
#    installed (the outbox is on disk, so nothing confirmed is lost).
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
WATCHER=""
CONFIG_CHANGED=3  # edge_app.ipc_config watch: an accepted configuration was written

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
  "$VENV/bin/python" -m edge_app.ipc_config "$CONFIG" || fail "cannot read the component configuration"
  "$MPD" -v edge run --config "$CONFIG" --bundle "$GALLERY" &
  EDGE=$!
  "$VENV/bin/python" -m edge_app.ipc_config watch "$CONFIG" &
  WATCHER=$!
}

stop_edge() {
  for pid in $WATCHER $EDGE; do
    kill -TERM "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  EDGE=""
  WATCHER=""
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
  wait -n "$EDGE" "$WATCHER" "$SLEEPER"
  if ! kill -0 "$EDGE" 2>/dev/null; then
    kill "$SLEEPER" 2>/dev/null
    wait "$EDGE"
    status=$?
    stop_edge
    fail "the pipeline exited with status $status"  # Greengrass restarts the component
  fi
  if ! kill -0 "$WATCHER" 2>/dev/null; then
    kill "$SLEEPER" 2>/dev/null
    wait "$WATCHER"
    status=$?
    [ "$status" -eq "$CONFIG_CHANGED" ] || { stop_edge; fail "the configuration watcher exited with status $status"; }
    echo "mpd run: configuration changed; restarting the pipeline on it" >&2
    stop_edge
    start_edge
    continue
  fi
  if result=$(sync_gallery) && [[ $result == *installed* ]]; then
    echo "mpd run: $result; restarting the pipeline on it" >&2
    stop_edge
    start_edge
  fi
done
