#!/usr/bin/env bash
# Starts the machine's PostgreSQL 15 cluster and prepares a database for
# benches/aggregate.rs; prints the TRADEWATCH_BENCH_PG connection string.
set -euo pipefail
pg_ctlcluster --skip-systemctl-redirect 15 main start 2>/dev/null || true
for _ in $(seq 1 30); do
    su postgres -c "psql -qtAc 'select 1'" >/dev/null 2>&1 && break
    sleep 1
done
su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'bench'\""
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname = 'tradewatch_bench'\"" | grep -q 1 \
    || su postgres -c "psql -qc 'CREATE DATABASE tradewatch_bench'"
echo 'TRADEWATCH_BENCH_PG="host=127.0.0.1 user=postgres password=bench dbname=tradewatch_bench"'
