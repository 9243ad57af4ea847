#!/usr/bin/env bash
# Run the maasbox appliance: install what it needs, build it (release), start it.
#   scripts/run.sh [maasbox serve options, e.g. --port 9000 --data-dir /srv/maasbox]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-system.sh
python3 models/fetch.py
cargo build --release -p maasbox
exec target/release/maasbox serve "$@"
