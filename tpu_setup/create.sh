#!/usr/bin/env bash
# Thin wrapper: see tpu.py and README.md.
exec python3 "$(dirname "$0")/tpu.py" create "$@"
