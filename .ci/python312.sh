#!/usr/bin/env bash
# Prints a Python 3.12 interpreter that runs (jax >= 0.11 needs 3.12), or fails: `python3.12`
# on PATH, then pyenv's 3.12 versions, then /root/.pyenv's (a pyenv shim of a version that is
# not selected does not run, so each candidate is tried).
candidates=()
command -v python3.12 > /dev/null && candidates+=("$(command -v python3.12)")
command -v pyenv > /dev/null && candidates+=("$(pyenv root)"/versions/3.12*/bin/python3)
candidates+=(/root/.pyenv/versions/3.12*/bin/python3)
for p in "${candidates[@]}"; do
  if [ -x "$p" ] && "$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2> /dev/null
  then
    echo "$p"
    exit 0
  fi
done
exit 1
