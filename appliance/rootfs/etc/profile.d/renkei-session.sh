# renkei: login shells on the appliance (the technician's, on the console).
# An idle session logs itself out after 15 minutes: a console left logged in
# is a root shell away (sudo) for whoever walks by.  No core files.
# Why: docs/image-hardening.md, "Console and accounts".
TMOUT=900
readonly TMOUT
export TMOUT
ulimit -c 0
