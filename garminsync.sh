#!/bin/sh
# `garminsync`, installed by `make install`: garminsync.py with the settings the timer's
# runs have (the DEST `make install` was given, the session folder, the env file), so a
# command typed by hand sees the same DEST and session as the service.
app="$HOME/.local/share/garminsync"

# Run garminsync.py from the bytecode `make install` compiled: a script named on Python's
# command line is compiled on every start (30 ms, most of a --help). -I: the installed
# copy, whatever the current folder or PYTHONPATH holds.
run() {
    exec "$app/venv/bin/python" -I -c 'import runpy, sys
sys.path.insert(0, sys.argv.pop(1))
runpy.run_module("garminsync", run_name="__main__", alter_sys=True)' "$app" "$@"
}

case " $* ${GARMINSYNC_PROFILE:+--profile} " in
*" --profile"*) # a profile's settings are its own: garminsync.py reads them
    export GARMINSYNC_COMMAND="$0"
    run "$@" ;;
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
run "$@"
