#!/usr/bin/env bash
# Builds fastseq._C with FASTSEQ_PORTABLE=1 (no -march=native: the binary any x86-64 or
# aarch64 runs, at::vec's portable vectors) in a temporary copy of the tracked sources, and
# runs the kernel tests against it: the portable code paths of the recurrent engine and
# attention must stay correct, not only compile. About 3-5 minutes on 2 cores.
# Usage: scripts/portable_check.sh   (PYTHON=... defaults to .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$PWD/.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
git ls-files -z | xargs -0 -I{} cp --parents {} "$WORK"
cd "$WORK"
echo "portable build in $WORK"
FASTSEQ_PORTABLE=1 "$PY" setup.py -q build_ext --inplace > build.log 2>&1 || { tail -40 build.log; exit 1; }
PYTHONPATH="$WORK" "$PY" - <<'PYEOF'
import fastseq, os
assert os.path.dirname(fastseq.__file__).startswith(os.getcwd()), fastseq.__file__
PYEOF
PYTHONPATH="$WORK" "$PY" -m pytest -q -p no:cacheprovider tests/test_recurrent_engine.py tests/test_lstm.py \
  tests/test_gru_rnn.py tests/test_attention.py
