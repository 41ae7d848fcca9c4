#!/bin/sh
# Smoke test of the single-file build: --version, start-up time, and a dry run against a sample source.
set -eu
exe=$1
python=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export SHIV_ROOT="$work/shiv"
"$exe" --version
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
