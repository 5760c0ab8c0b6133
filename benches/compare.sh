#!/usr/bin/env bash
# Compare PostgreSQL direct, through PgBouncer (session mode) and through pgward.
#
#   DURATION=10 bash benches/compare.sh
#
# Starts a throwaway PostgreSQL cluster, PgBouncer and pgward on loopback in a
# temporary directory, runs pgbench (-S, simple and prepared, 1 and 16
# clients), a ~100 MB COPY out, and measures pgward's memory per idle client
# session. pgbench also runs through pgward as a restricted role (every
# statement analyzed and rewritten; pgbench_accounts behind a masked,
# row-filtered subquery) to price the policy engine against an unrestricted
# role, and through a second pgward with audit.record_statements off to
# price the audit trail. Every client uses TLS (sslmode=require) against every target.
# Everything started here is stopped and deleted on exit.
#
# Environment:
#   DURATION   seconds per pgbench run (default 10)
#   SCALE      pgbench scale factor (default 10)
#   IDLE_N     idle sessions for the memory measurement (default 200)
#   PGWARD     pgward binary (default target/release/pgward)
#   AUDIT_DURABILITY  spool (default: ReadyForQuery waits for the audit
#              event's spool write), commit (for its commit to the store) or
#              queue
#   AUDIT_PAIRS  this many more back-to-back pairs of prepared -c 16 runs,
#              audit on then off, each ratio and their mean (default 0): a
#              single run cannot settle a difference of a few per cent
set -euo pipefail

DURATION=${DURATION:-10}
SCALE=${SCALE:-10}
IDLE_N=${IDLE_N:-200}
AUDIT_PAIRS=${AUDIT_PAIRS:-0}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PGWARD=${PGWARD:-$ROOT/target/release/pgward}

die() { echo "compare.sh: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }

# ---------------------------------------------------------------- prerequisites
[[ $DURATION =~ ^[0-9]+$ && $DURATION -gt 0 ]] || die "DURATION must be a positive integer"
[[ $AUDIT_PAIRS =~ ^[0-9]+$ ]] || die "AUDIT_PAIRS must be a whole number"
[[ -x $PGWARD ]] || die "no pgward binary at $PGWARD: run 'cargo build --release' first"
for tool in psql pgbench python3 timeout; do
  command -v "$tool" >/dev/null || die "$tool not found (Debian: apt-get install postgresql-client python3 coreutils)"
done

IS_ROOT=0
[[ $(id -u) -eq 0 ]] && IS_ROOT=1

if ! command -v pgbouncer >/dev/null; then
  if [[ $IS_ROOT -eq 1 ]] && command -v apt-get >/dev/null; then
    log "installing pgbouncer"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q pgbouncer >/dev/null 2>&1; then
      apt-get update -q >/dev/null 2>&1 || true
      apt-get install -y -q pgbouncer >/dev/null || die "apt-get install pgbouncer failed"
    fi
    # The package may start its own service; it is not ours to keep running
    # (it listens on 6432 as user postgres, which we never use).
  fi
  command -v pgbouncer >/dev/null || die "pgbouncer not found: install it (Debian: apt-get install pgbouncer)"
fi

# PostgreSQL server binaries: the directory holding initdb on PATH, else the
# newest /usr/lib/postgresql/*/bin.
PGBIN=""
if command -v initdb >/dev/null; then
  PGBIN=$(dirname "$(readlink -f "$(command -v initdb)")")
fi
if [[ -z $PGBIN || ! -x $PGBIN/pg_ctl || ! -x $PGBIN/postgres ]]; then
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
fi
[[ -n $PGBIN && -x $PGBIN/initdb && -x $PGBIN/pg_ctl && -x $PGBIN/postgres ]] ||
  die "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found (Debian: apt-get install postgresql)"

# initdb, postgres and pgbouncer refuse root: run them as nobody.
# AS_SVC is a command prefix, not a function, so that `"${AS_SVC[@]}" cmd &`
# leaves $! pointing at cmd itself (setpriv execs), which the trap can kill.
SVC_USER=$(id -un)
SVC_GROUP=$(id -gn)
AS_SVC=(env)
if [[ $IS_ROOT -eq 1 ]]; then
  id nobody >/dev/null 2>&1 || die "running as root needs a 'nobody' account to run PostgreSQL and PgBouncer"
  command -v setpriv >/dev/null || die "setpriv not found (Debian: apt-get install util-linux)"
  SVC_USER=nobody
  SVC_GROUP=$(id -gn nobody)
  AS_SVC=(setpriv --reuid=nobody --regid="$SVC_GROUP" --clear-groups --)
fi

# ---------------------------------------------------------------- cleanup
TMP=$(mktemp -d /tmp/pgward-compare.XXXXXX)
chmod 0711 "$TMP"
PIDS=()
PG_STARTED=0
IDLE_FD_OPEN=0
cleanup() {
  local rc=$?
  set +e
  if [[ $IDLE_FD_OPEN -eq 1 ]]; then exec 7>&-; fi
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null
  done
  for pid in "${PIDS[@]}"; do
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if [[ $PG_STARTED -eq 1 ]]; then
    "${AS_SVC[@]}" "$PGBIN/pg_ctl" -D "$TMP/pg/data" -m immediate -w -t 20 stop >/dev/null 2>&1
  fi
  if [[ $rc -ne 0 ]]; then
    for f in "$TMP/pg/postgres.log" "$TMP/pgbouncer/pgbouncer.log" "$TMP/pgward.log"; do
      if [[ -s $f ]]; then
        echo "---- last lines of $(basename "$f")" >&2
        tail -n 15 "$f" >&2
      fi
    done
  fi
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() { # port what pid
  local deadline=$((SECONDS + 30))
  while ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
    if [[ -n ${3:-} ]] && ! kill -0 "$3" 2>/dev/null; then die "$2 exited during startup"; fi
    ((SECONDS < deadline)) || die "$2 did not listen on 127.0.0.1:$1 within 30 s"
    sleep 0.2
  done
}

PW=$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')
BENCH_PW=$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')
PG_PORT=$(free_port)
BOUNCER_PORT=$(free_port)
PGWARD_PORT=$(free_port)
ADMIN_PORT=$(free_port)
OFF_PORT=$(free_port)
OFF_ADMIN_PORT=$(free_port)
export PGCONNECT_TIMEOUT=10

# ---------------------------------------------------------------- pgward init
# First, because it creates the certificate every target serves.
log "pgward init"
"$PGWARD" init --dir "$TMP/pgward" \
  --upstream "postgres://postgres:$PW@127.0.0.1:$PG_PORT" \
  --upstream-tls require \
  --listen "127.0.0.1:$PGWARD_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" >/dev/null
CERTS=$TMP/pgward/certs
if [[ -n ${AUDIT_DURABILITY:-} ]]; then
  printf '\naudit:\n  durability: %s\n' "$AUDIT_DURABILITY" >>"$TMP/pgward/pgward.yaml"
fi
echo "$BENCH_PW" | "$PGWARD" user add bench --role dba --password-stdin \
  --config "$TMP/pgward/pgward.yaml" >/dev/null
# The restricted role: the filter keeps every row (so both roles do the same
# work), but PostgreSQL still evaluates it and the mask for each statement.
cat >"$TMP/pgward/policies/masked.yaml" <<EOF
roles:
  masked:
    upstream: { user: postgres, password: "$PW" }
    databases: [postgres]
    statements: [read]
    tables:
      public.pgbench_accounts:
        columns:
          filler: { mask: redact }
        rows: "bid <= {{ user.max_branch }}"
      public.pgbench_branches: {}
      public.pgbench_tellers: {}
      public.pgbench_history: {}
EOF
# The same pgward without statement events: what auditing costs.
"$PGWARD" init --dir "$TMP/pgward-off" \
  --upstream "postgres://postgres:$PW@127.0.0.1:$PG_PORT" \
  --upstream-tls require \
  --listen "127.0.0.1:$OFF_PORT" --admin-listen "127.0.0.1:$OFF_ADMIN_PORT" >/dev/null
printf '\naudit:\n  record_statements: false\n' >>"$TMP/pgward-off/pgward.yaml"
echo "$BENCH_PW" | "$PGWARD" user add bench --role dba --password-stdin \
  --config "$TMP/pgward-off/pgward.yaml" >/dev/null
echo "$BENCH_PW" | "$PGWARD" user add masked --role masked --attr max_branch=1000000 \
  --password-stdin --config "$TMP/pgward/pgward.yaml" >/dev/null

# ---------------------------------------------------------------- PostgreSQL
log "initdb ($PGBIN), port $PG_PORT"
mkdir -m 0700 "$TMP/pg"
printf '%s\n' "$PW" >"$TMP/pg/pwfile"
install -m 0644 "$CERTS/server.crt" "$TMP/pg/server.crt"
install -m 0600 "$CERTS/server.key" "$TMP/pg/server.key"
[[ $IS_ROOT -eq 1 ]] && chown -R "$SVC_USER:$SVC_GROUP" "$TMP/pg"
(cd "$TMP/pg" && "${AS_SVC[@]}" "$PGBIN/initdb" -D "$TMP/pg/data" -U postgres -E UTF8 --locale=C --no-sync \
  --auth-local=trust --auth-host=scram-sha-256 --pwfile="$TMP/pg/pwfile" >"$TMP/pg/initdb.log" 2>&1) ||
  { cat "$TMP/pg/initdb.log" >&2; die "initdb failed"; }
rm -f "$TMP/pg/pwfile"
cat >>"$TMP/pg/data/postgresql.conf" <<EOF

# added by benches/compare.sh
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$TMP/pg'
max_connections = $((IDLE_N + 100 > 300 ? IDLE_N + 100 : 300))
fsync = off
synchronous_commit = off
full_page_writes = off
password_encryption = 'scram-sha-256'
ssl = on
ssl_cert_file = '$TMP/pg/server.crt'
ssl_key_file = '$TMP/pg/server.key'
EOF
cat >"$TMP/pg/data/pg_hba.conf" <<EOF
local all all trust
host all all 127.0.0.1/32 scram-sha-256
EOF
(cd "$TMP/pg" && "${AS_SVC[@]}" "$PGBIN/pg_ctl" -D "$TMP/pg/data" -l "$TMP/pg/postgres.log" -w -t 60 start >/dev/null) ||
  die "PostgreSQL did not start"
PG_STARTED=1

# ---------------------------------------------------------------- PgBouncer
log "pgbouncer (session mode), port $BOUNCER_PORT"
mkdir -m 0700 "$TMP/pgbouncer"
install -m 0644 "$CERTS/server.crt" "$TMP/pgbouncer/server.crt"
install -m 0600 "$CERTS/server.key" "$TMP/pgbouncer/server.key"
printf '"postgres" "%s"\n' "$PW" >"$TMP/pgbouncer/userlist.txt"
cat >"$TMP/pgbouncer/pgbouncer.ini" <<EOF
[databases]
* = host=127.0.0.1 port=$PG_PORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $TMP/pgbouncer/userlist.txt
pool_mode = session
max_client_conn = 500
default_pool_size = 100
client_tls_sslmode = require
client_tls_cert_file = $TMP/pgbouncer/server.crt
client_tls_key_file = $TMP/pgbouncer/server.key
server_tls_sslmode = require
ignore_startup_parameters = extra_float_digits
logfile = $TMP/pgbouncer/pgbouncer.log
pidfile = $TMP/pgbouncer/pgbouncer.pid
EOF
chmod 0600 "$TMP/pgbouncer/userlist.txt" "$TMP/pgbouncer/pgbouncer.ini"
[[ $IS_ROOT -eq 1 ]] && chown -R "$SVC_USER:$SVC_GROUP" "$TMP/pgbouncer"
"${AS_SVC[@]}" pgbouncer "$TMP/pgbouncer/pgbouncer.ini" >/dev/null 2>&1 &
BOUNCER_PID=$!
PIDS+=("$BOUNCER_PID")
wait_port "$BOUNCER_PORT" pgbouncer "$BOUNCER_PID"

# ---------------------------------------------------------------- pgward
log "pgward serve, port $PGWARD_PORT"
"$PGWARD" serve --config "$TMP/pgward/pgward.yaml" >"$TMP/pgward.log" 2>&1 &
PGWARD_PID=$!
PIDS+=("$PGWARD_PID")
wait_port "$PGWARD_PORT" pgward "$PGWARD_PID"
"$PGWARD" serve --config "$TMP/pgward-off/pgward.yaml" >"$TMP/pgward-off.log" 2>&1 &
OFF_PID=$!
PIDS+=("$OFF_PID")
wait_port "$OFF_PORT" "pgward (audit off)" "$OFF_PID"

# ---------------------------------------------------------------- targets
TARGETS=(direct pgbouncer pgward)
declare -A CONN PASS
CONN[direct]="host=127.0.0.1 port=$PG_PORT user=postgres dbname=postgres sslmode=require"
CONN[pgbouncer]="host=127.0.0.1 port=$BOUNCER_PORT user=postgres dbname=postgres sslmode=require"
CONN[pgward]="host=127.0.0.1 port=$PGWARD_PORT user=bench dbname=postgres sslmode=require"
PASS[direct]=$PW
PASS[pgbouncer]=$PW
PASS[pgward]=$BENCH_PW
CONN[masked]="host=127.0.0.1 port=$PGWARD_PORT user=masked dbname=postgres sslmode=require"
PASS[masked]=$BENCH_PW
CONN[audit_off]="host=127.0.0.1 port=$OFF_PORT user=bench dbname=postgres sslmode=require"
PASS[audit_off]=$BENCH_PW

for t in "${TARGETS[@]}"; do
  ssl=$(PGPASSWORD=${PASS[$t]} timeout 30 psql "${CONN[$t]}" -XAtqc "select ssl from pg_stat_ssl where pid = pg_backend_pid()" 2>&1) ||
    die "cannot connect to $t: $ssl"
  # Through a proxy this is the proxy's upstream connection, not ours.
  [[ $ssl == t ]] || die "$t: upstream connection is not TLS ($ssl)"
done

log "pgbench -i -s $SCALE"
PGPASSWORD=$PW timeout 600 pgbench -i -q -s "$SCALE" "${CONN[direct]}" >"$TMP/pgbench-init.log" 2>&1 ||
  { cat "$TMP/pgbench-init.log" >&2; die "pgbench -i failed"; }

# ---------------------------------------------------------------- pgbench
declare -A TPS LAT
MODES=("simple 1" "simple 16" "prepared 1" "prepared 16")
# Workload by workload, every target back to back (pgward with audit on,
# then off, then the masked role), so that drift on a shared machine does
# not land on one side of a ratio.
for m in "${MODES[@]}"; do
  for t in "${TARGETS[@]}" audit_off masked; do
    read -r mode clients <<<"$m"
    jobs=$((clients > 1 ? 2 : 1))
    log "pgbench -S -M $mode -c $clients -j $jobs -T $DURATION -> $t"
    out=$TMP/pgbench-$t-$mode-$clients.log
    PGPASSWORD=${PASS[$t]} timeout $((DURATION + 60)) \
      pgbench -n -S -M "$mode" -c "$clients" -j "$jobs" -T "$DURATION" "${CONN[$t]}" >"$out" 2>&1 ||
      { tail -n 20 "$out" >&2; die "pgbench against $t failed"; }
    TPS[$t,$m]=$(awk '/^tps = / {printf "%.0f", $3; exit}' "$out")
    LAT[$t,$m]=$(awk '/^latency average = / {printf "%.3f", $4; exit}' "$out")
    [[ -n ${TPS[$t,$m]} && -n ${LAT[$t,$m]} ]] || { cat "$out" >&2; die "cannot parse pgbench output"; }
  done
done

# ---------------------------------------------------------------- audit pairs
PAIR_RATIOS=()
for ((i = 1; i <= AUDIT_PAIRS; i++)); do
  declare -A PAIR=()
  for t in pgward audit_off; do
    log "pair $i of $AUDIT_PAIRS: pgbench -S -M prepared -c 16 -j 2 -T $DURATION -> $t"
    out=$TMP/pair-$i-$t.log
    PGPASSWORD=${PASS[$t]} timeout $((DURATION + 60)) \
      pgbench -n -S -M prepared -c 16 -j 2 -T "$DURATION" "${CONN[$t]}" >"$out" 2>&1 ||
      { tail -n 20 "$out" >&2; die "pgbench against $t failed"; }
    PAIR[$t]=$(awk '/^tps = / {printf "%.0f", $3; exit}' "$out")
    [[ -n ${PAIR[$t]} ]] || { cat "$out" >&2; die "cannot parse pgbench output"; }
  done
  PAIR_RATIOS+=("$(awk -v a="${PAIR[pgward]}" -v b="${PAIR[audit_off]}" 'BEGIN {printf "%.3f", a / b}')")
done

# ---------------------------------------------------------------- COPY out
COPY_SQL="\\copy (select g, repeat('x', 90) from generate_series(1, 1000000) g) to stdout"
declare -A MBS
COPY_BYTES=0
for t in "${TARGETS[@]}"; do
  best=""
  for _ in 1 2 3; do
    log "COPY out -> $t"
    start=$(date +%s.%N)
    bytes=$(PGPASSWORD=${PASS[$t]} timeout 120 psql "${CONN[$t]}" -Xq -c "$COPY_SQL" | wc -c) ||
      die "COPY through $t failed"
    end=$(date +%s.%N)
    ((bytes > 0)) || die "COPY through $t returned no data"
    if [[ $COPY_BYTES -eq 0 ]]; then
      COPY_BYTES=$bytes
    elif [[ $bytes -ne $COPY_BYTES ]]; then
      die "COPY through $t returned $bytes bytes, direct returned $COPY_BYTES"
    fi
    mbs=$(awk -v b="$bytes" -v s="$start" -v e="$end" 'BEGIN {printf "%.1f", b / 1e6 / (e - s)}')
    if [[ -z $best ]] || awk -v a="$mbs" -v b="$best" 'BEGIN {exit !(a > b)}'; then best=$mbs; fi
  done
  MBS[$t]=$best
done

# ---------------------------------------------------------------- idle memory
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
log "opening $IDLE_N idle TLS sessions through pgward"
RSS_BEFORE=$(rss_kib "$PGWARD_PID")
mkfifo "$TMP/idle.in"
PGPASSWORD=$BENCH_PW timeout 300 python3 "$HERE/idle_clients.py" --host 127.0.0.1 --port "$PGWARD_PORT" \
  --user bench --database postgres --count "$IDLE_N" --cafile "$CERTS/ca.crt" --hold 240 \
  <"$TMP/idle.in" >"$TMP/idle.out" 2>"$TMP/idle.err" &
IDLE_PID=$!
PIDS+=("$IDLE_PID")
exec 7>"$TMP/idle.in"
IDLE_FD_OPEN=1
deadline=$((SECONDS + 120))
until grep -q '^ready' "$TMP/idle.out"; do
  kill -0 "$IDLE_PID" 2>/dev/null || { cat "$TMP/idle.err" >&2; die "idle clients failed"; }
  ((SECONDS < deadline)) || die "idle clients not ready within 120 s"
  sleep 0.5
done
sleep 2
RSS_AFTER=$(rss_kib "$PGWARD_PID")
echo >&7
exec 7>&-
IDLE_FD_OPEN=0
wait "$IDLE_PID" || true
sleep 2
RSS_CLOSED=$(rss_kib "$PGWARD_PID")
PER_SESSION=$(awk -v a="$RSS_AFTER" -v b="$RSS_BEFORE" -v n="$IDLE_N" 'BEGIN {printf "%.0f", (a - b) / n}')

# ---------------------------------------------------------------- report
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "-"}'; }
cell() { printf '%s tps (%s ms)' "${TPS[$1,$2]}" "${LAT[$1,$2]}"; }
COPY_MB=$(awk -v b="$COPY_BYTES" 'BEGIN {printf "%.0f", b / 1e6}')

echo
echo "pgward comparison ($(nproc) cores, TLS sslmode=require for every target, pgbench -S -T $DURATION, scale $SCALE)"
printf '%-22s  %-24s  %-24s  %-24s  %-13s  %s\n' workload direct pgbouncer pgward pgward/direct pgward/pgbouncer
for m in "${MODES[@]}"; do
  read -r mode clients <<<"$m"
  printf '%-22s  %-24s  %-24s  %-24s  %-13s  %s\n' "select $mode -c $clients" \
    "$(cell direct "$m")" "$(cell pgbouncer "$m")" "$(cell pgward "$m")" \
    "$(ratio "${TPS[pgward,$m]}" "${TPS[direct,$m]}")" "$(ratio "${TPS[pgward,$m]}" "${TPS[pgbouncer,$m]}")"
done
printf '%-22s  %-24s  %-24s  %-24s  %-13s  %s\n' "copy $COPY_MB MB out" \
  "${MBS[direct]} MB/s" "${MBS[pgbouncer]} MB/s" "${MBS[pgward]} MB/s" \
  "$(ratio "${MBS[pgward]}" "${MBS[direct]}")" "$(ratio "${MBS[pgward]}" "${MBS[pgbouncer]}")"
echo
echo "restricted role through pgward (every statement analyzed, rewritten; masked, row-filtered pgbench_accounts)"
printf '%-22s  %-24s  %-24s  %s\n' workload "pgward unrestricted" "pgward masked" masked/unrestricted
for m in "${MODES[@]}"; do
  read -r mode clients <<<"$m"
  printf '%-22s  %-24s  %-24s  %s\n' "select $mode -c $clients" \
    "$(cell pgward "$m")" "$(cell masked "$m")" "$(ratio "${TPS[masked,$m]}" "${TPS[pgward,$m]}")"
done
echo
echo "audit trail: pgward with statement events (durability ${AUDIT_DURABILITY:-spool}) vs audit.record_statements off"
printf '%-22s  %-24s  %-24s  %s\n' workload "pgward audit on" "pgward audit off" on/off
for m in "${MODES[@]}"; do
  read -r mode clients <<<"$m"
  printf '%-22s  %-24s  %-24s  %s\n' "select $mode -c $clients" \
    "$(cell pgward "$m")" "$(cell audit_off "$m")" "$(ratio "${TPS[pgward,$m]}" "${TPS[audit_off,$m]}")"
done
if ((AUDIT_PAIRS > 0)); then
  echo "audit pairs, prepared -c 16, on/off: ${PAIR_RATIOS[*]}; mean $(printf '%s\n' "${PAIR_RATIOS[@]}" | awk '{s += $1} END {printf "%.3f", s / NR}')"
fi
# The audit trail's target: plain `pgbench -S` (simple protocol, one client)
# with statement events at 0.9x or better of without.
TARGET_RATIO=$(ratio "${TPS[pgward,simple 1]}" "${TPS[audit_off,simple 1]}")
if awk -v r="$TARGET_RATIO" 'BEGIN {exit !(r >= 0.9)}'; then verdict=met; else verdict="NOT met"; fi
echo "audit target, pgbench -S (simple, one client) on/off: $TARGET_RATIO (>= 0.90: $verdict)"
echo "idle client memory (pgward): $PER_SESSION KiB per session ($IDLE_N sessions; pgward RSS $RSS_BEFORE -> $RSS_AFTER KiB, $RSS_CLOSED KiB after they closed)"
