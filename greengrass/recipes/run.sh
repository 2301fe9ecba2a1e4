#!/usr/bin/env bash
# The component's Run step:  bash run.sh VENV_DIR WORK_DIR
# 1. Install a verified gallery (mpd sync) before the pipeline starts; offline, run on
#    the last good one.  2. Run the pipeline. `mpd edge run --publisher greengrass` reads
#    the component configuration over IPC, validates each deployment's configuration and
#    applies accepted ones live, and its gallery sync agent swaps each new verified
#    gallery in while it runs: nothing here restarts it.
# Gallery settings come from the component configuration through the recipe's Setenv
# (MPD_GALLERY_SOURCE, MPD_GALLERY_PUBLIC_KEY_PEM, MPD_GALLERY_INTERVAL_S); changing
# them in a deployment restarts the component.
set -uo pipefail

VENV=$1
WORK=$2
MPD="$VENV/bin/mpd"
GALLERY="$WORK/gallery"
KEY="$WORK/gallery-public-key.pem"
INTERVAL=${MPD_GALLERY_INTERVAL_S:-3600}

fail() { echo "mpd run: $*" >&2; exit 1; }

[ -n "${MPD_GALLERY_SOURCE:-}" ] || fail "gallery/source is not configured (deploy a configuration merge with gallery.source)"
[ -n "${MPD_GALLERY_PUBLIC_KEY_PEM:-}" ] || fail "gallery/public_key_pem is not configured: an unsigned gallery is never used"
umask 077
printf '%s\n' "$MPD_GALLERY_PUBLIC_KEY_PEM" > "$KEY"
export MPD_GALLERY_PUBLIC_KEY="$KEY"

# A new device waits here rather than failing: three failed starts would make it BROKEN.
until "$MPD" sync --once --from "$MPD_GALLERY_SOURCE" --dir "$GALLERY"; do
  [ -e "$GALLERY/current" ] && { echo "mpd run: gallery source unreachable, running on the installed gallery" >&2; break; }
  echo "mpd run: no gallery installed yet; retrying in 60 s" >&2
  sleep 60
done

# exec: the nucleus's SIGTERM reaches the pipeline, which drains its outbox and stops cleanly.
exec "$MPD" -v edge run --publisher greengrass --bundle "$GALLERY" \
  --gallery-from "$MPD_GALLERY_SOURCE" --gallery-interval "$INTERVAL"
