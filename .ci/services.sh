#!/usr/bin/env bash
# Services the test suite needs that pip cannot bring. SeaweedFS (S3) and every
# loopback server are started by the test session itself.
set -euo pipefail
echo "services: none beyond the test session's own"
