#!/bin/bash
# What the install step of `tasks.py` costs on a fresh venv (#35): requirements.txt as tasks.py installs it, without
# pip's byte-compilation (--no-compile), and a full lock (pip freeze of the first) with --no-deps; then the first
# import of the heavy libraries in each (these machines set PYTHONDONTWRITEBYTECODE=1: no .pyc is written on import).
#
#     bash bench/pip_install.sh
cd "$(dirname "$0")/.."
LOCK=$(mktemp)
for mode in default no-compile lock; do
  venv=/tmp/coa-pip-$mode; rm -rf $venv; python3 -m venv $venv
  $venv/bin/python -m pip install --quiet --upgrade pip 2>/dev/null
  a=$(date +%s.%N)
  case $mode in
    default) $venv/bin/python -m pip install --quiet -r requirements.txt 2>/dev/null
             $venv/bin/python -m pip freeze > "$LOCK" ;;
    no-compile) $venv/bin/python -m pip install --quiet --no-compile -r requirements.txt 2>/dev/null ;;
    lock) $venv/bin/python -m pip install --quiet --no-deps -r "$LOCK" 2>/dev/null ;;
  esac
  b=$(date +%s.%N)
  $venv/bin/python -c "import torch, transformers, peft, botorch, streamlit, pandas, scipy"
  c=$(date +%s.%N)
  echo "$mode: install $(echo "$b-$a" | bc) s, first import $(echo "$c-$b" | bc) s"
  rm -rf $venv
done
