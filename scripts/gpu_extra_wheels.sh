#!/usr/bin/env bash
# The EXTRA_WHEELS folder for ../shared/gpu/fetch_wheels.sh: apache-beam 2.77
# and the few of its dependencies the device image lacks (cp312, manylinux;
# the image's package list is in the device tool's KINDS.md), plus this
# package's wheel. Without them the device has no apache_beam (a payload
# built with only this package's wheel cost a lease 91 s on 2026-12-01).
#
#   bash scripts/gpu_extra_wheels.sh DIR
#   EXTRA_WHEELS=DIR bash ../shared/gpu/fetch_wheels.sh . '' 55
set -euo pipefail
DIR=${1:?usage: $0 DIR}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON=${PYTHON:-python3}
mkdir -p "$DIR"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$DIR" \
  --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 --platform any \
  apache-beam==2.77.0 fastavro fasteners httplib2 jsonpickle 'objsize<0.8' \
  pymongo dnspython proto-plus pytz 'beartype<0.23' cryptography cffi pycparser
"$PYTHON" -m pip wheel --quiet --no-deps -w "$DIR" "$ROOT"
ls "$DIR"
