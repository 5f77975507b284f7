#!/bin/sh
# Write the man page of one of the package's commands from its --help, at
# build time (debian/rules runs this; nothing generated is checked in, since
# every setting added changes fanoutd's --help).
#
#   debian/manpage.sh VENV COMMAND "SUMMARY" "SUBCOMMANDS" OUT
#
# VENV is the staged virtualenv (debian/fanoutd/opt/venvs/fanoutd): its
# scripts' #! already names the installed path, so the script is run with the
# staged python.  help2man makes the page from `COMMAND --help` and
# `COMMAND --version`; each SUBCOMMAND's own --help follows in a section of
# its own, verbatim.
set -eu
VENV=$1 COMMAND=$2 SUMMARY=$3 SUBCOMMANDS=$4 OUT=$5
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A wrapper named like the command, so that help2man and argparse name it right.
printf '#!/bin/sh\nexec "%s/bin/python" "%s/bin/%s" "$@"\n' "$VENV" "$VENV" "$COMMAND" > "$work/$COMMAND"
chmod +x "$work/$COMMAND"
# Each subcommand's --help as a section: roff-escaped, no filling.
: > "$work/include"
for sub in $SUBCOMMANDS; do
    {
        printf '[%s %s]\n.nf\n' "$(echo "$COMMAND" | tr a-z A-Z)" "$(echo "$sub" | tr a-z A-Z)"
        "$work/$COMMAND" "$sub" --help | sed -e 's/\\/\\e/g' -e "s/^[.']/\\\\\\&&/"
        printf '.fi\n'
    } >> "$work/include"
done
mkdir -p "$(dirname "$OUT")"
include=""
[ ! -s "$work/include" ] || include="--include=$work/include"
help2man --no-info --no-discard-stderr --section=1 --name="$SUMMARY" $include --output="$OUT" "$work/$COMMAND"
# help2man names the program by the path it ran: make it the command's.
grep -q "^\.TH \"\?$(echo "$COMMAND" | tr a-z A-Z)" "$OUT" || { echo "manpage.sh: $OUT has no .TH for $COMMAND" >&2; exit 1; }
