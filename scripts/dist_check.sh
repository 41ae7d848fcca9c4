#!/bin/sh
# Smoke test of the single-file build: --version, the pinned Python, unpacking without a home, start-up time,
# and a dry run against a sample source.
set -eu
exe=$1
python=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export SHIV_ROOT="$work/shiv"
"$exe" --version
# Pinned to the Python that built it: the shebang names it, and any other is refused with one line, exit 78.
want=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
head -n 1 "$exe" | grep -qx "#!.*python$want" || { echo "dist: shebang is not pinned to python$want" >&2; exit 1; }
"$python" "$(dirname "$0")/build_dist.py" --stamp "$exe" "$work/other" --built-for 3.99
rc=0
"$python" "$work/other" --version 2> "$work/refused.txt" || rc=$?
test "$rc" = 78 && test "$(wc -l < "$work/refused.txt")" = 1 && grep -q "built for Python 3.99" "$work/refused.txt" \
    || { echo "dist: another Python was not refused with one line and exit 78 (rc $rc)" >&2; cat "$work/refused.txt" >&2; exit 1; }
# No SHIV_ROOT and no writable home: it unpacks into a private folder in $TMPDIR instead of a traceback.
mkdir "$work/tmp"
env -u SHIV_ROOT -u XDG_CACHE_HOME HOME=/dev/null TMPDIR="$work/tmp" "$exe" --version
test -d "$work/tmp/mcnotify-shiv-$(id -u)"
"$python" - "$work" <<'PY'
import sys
from pathlib import Path
from mcnotify.sandbox import Sandbox
from mcnotify.sandbox.demo import make_source

work = Path(sys.argv[1])
make_source(work / "app.sqlite")
box = Sandbox(work)  # not started: a dry run reaches no service
(work / "config.toml").write_text(box.config_toml(work / "state.db", f"sqlite:///{work / 'app.sqlite'}"))
PY
"$exe" --config "$work/config.toml" run-all --dry-run | tee "$work/out.txt"
grep -q "Luffy via EZTABLE" "$work/out.txt"
test ! -e "$work/state.db"
# The same preview with the reading process (it must start from inside the single file too).
MCNOTIFY_SOURCE_PARALLEL_AFTER=10 "$exe" --config "$work/config.toml" sync --dry-run | tee "$work/out2.txt"
grep -q "39 new notifications, 8 invalid, 1 expired" "$work/out2.txt"
start=$(date +%s%N)
"$exe" --help > /dev/null
echo "dist: mcnotify --help took $(( ($(date +%s%N) - start) / 1000000 )) ms once unpacked"
