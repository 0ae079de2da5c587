#!/bin/sh
# `garminsync`, installed by `make install`: garminsync.py with the settings the timer's
# runs have (the DEST `make install` was given, the session folder, the env file), so a
# command typed by hand sees the same DEST and session as the service.
app="$HOME/.local/share/garminsync"
case " $* ${GARMINSYNC_PROFILE:+--profile} " in
*" --profile"*) # a profile's settings are its own: garminsync.py reads them
    GARMINSYNC_COMMAND="$0" exec "$app/venv/bin/python" "$app/garminsync.py" "$@" ;;
esac
dropin="$HOME/.config/systemd/user/garminsync.service.d/dest.conf"
GARMINSYNC_DEST="$HOME/fit"
if [ -r "$dropin" ]; then
    GARMINSYNC_DEST=$(sed -n 's/^Environment=GARMINSYNC_DEST=//p' "$dropin")
fi
export GARMINSYNC_DEST GARMINTOKENS="$HOME/.local/state/garminsync" GARMINSYNC_COMMAND="$0"
# KEY=value lines, as systemd reads them (comments and blank lines skipped).
if [ -r "$HOME/.config/garminsync/env" ]; then
    while IFS= read -r line || [ -n "$line" ]; do
        case $line in [A-Za-z_]*=*) export "$line" ;; esac
    done <"$HOME/.config/garminsync/env"
fi
exec "$app/venv/bin/python" "$app/garminsync.py" "$@"
