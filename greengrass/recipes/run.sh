#!/usr/bin/env bash
# The application component's Startup step (greengrass/recipes/edge-component.yaml).
# Environment (from the recipe): MPD_RUNTIME_VENV, MPD_PYLIBS_DIR, MPD_MODEL_DIR, MPD_APP_DIR, MPD_STATE_DIR,
# MPD_RELEASE, MPD_HEALTH_DEADLINE_S and the gallery settings.
#
# 1. With a gallery installed, start the pipeline at once: its own sync agent fetches newer
#    galleries while it runs. Only a device with no gallery yet waits here for the first
#    one (reporting RUNNING first, so waiting never makes the component BROKEN).
# 2. The health gate runs beside the pipeline and reports RUNNING to the nucleus once a
#    health report shows frames processed (or at once for a release already proven
#    healthy on this device); without that within the deadline it reports ERRORED, and
#    the deployment rolls back.
# 3. exec: the nucleus's SIGTERM reaches the pipeline, which drains its outbox and stops.
set -uo pipefail

fail() { echo "mpd run: $*" >&2; exit 1; }

PY="${MPD_RUNTIME_VENV:?}/bin/python"
STATE=${MPD_STATE_DIR:?}
APP=${MPD_APP_DIR:?}
RELEASE=${MPD_RELEASE:?}
[ -x "$PY" ] || fail "the runtime at $MPD_RUNTIME_VENV is not installed (com.mpd.EdgeRuntime)"
export PYTHONPATH="$APP/site:${MPD_PYLIBS_DIR:?}"
export PYTHONPYCACHEPREFIX="$STATE/pycache"  # the artifact folder is read-only
MPD=("$PY" -m mpd_cli)

[ -n "${MPD_GALLERY_SOURCE:-}" ] || fail "gallery/source is not configured (deploy a configuration merge with gallery.source)"
[ -n "${MPD_GALLERY_PUBLIC_KEY_PEM:-}" ] || fail "gallery/public_key_pem is not configured: an unsigned gallery is never used"
umask 077
GALLERY="$STATE/gallery"
KEY="$STATE/gallery-public-key.pem"
printf '%s\n' "$MPD_GALLERY_PUBLIC_KEY_PEM" > "$KEY"
export MPD_GALLERY_PUBLIC_KEY="$KEY"
export MPD_HEALTH_FILE="$STATE/health.json"
INTERVAL=${MPD_GALLERY_INTERVAL_S:-3600}
GATE=("${MPD[@]}" greengrass health-gate --health-file "$MPD_HEALTH_FILE" --marker "$STATE/healthy/$RELEASE"
      --deadline "${MPD_HEALTH_DEADLINE_S:-300}")

if [ ! -e "$GALLERY/current" ]; then
  # Nothing to search yet, so nothing to judge: tell the nucleus we are up, then wait.
  "${GATE[@]}" --now || fail "cannot report the component state to the nucleus"
  until "${MPD[@]}" sync --once --from "$MPD_GALLERY_SOURCE" --dir "$GALLERY"; do
    echo "mpd run: no gallery installed yet; retrying in ${MPD_FIRST_SYNC_RETRY_S:-60} s" >&2
    sleep "${MPD_FIRST_SYNC_RETRY_S:-60}"
  done
else
  rm -f "$MPD_HEALTH_FILE"  # only this run's reports count
  "${GATE[@]}" &
fi

exec "${MPD[@]}" -v edge run --publisher greengrass --bundle "$GALLERY" \
  --gallery-from "$MPD_GALLERY_SOURCE" --gallery-interval "$INTERVAL"
