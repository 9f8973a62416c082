#!/usr/bin/env bash
# What users get: build the wheel, install it into a fresh venv outside the checkout, and run it from
# there as an operator would. `--version`, `config example`, `migrate`, `serve` on its embedded defaults
# in front of a tiny upstream (a key made with the CLI, one allowed and one refused request, the health
# path, a clean stop on SIGTERM) and `demo`; then nothing of it may be left running.
# Usage: scripts/smoke-wheel.sh   (needs python3 with venv, curl, and the package index for dependencies)
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d /tmp/signalgate-smoke-XXXXXX)"
chmod 755 "$work"  # the embedded PostgreSQL runs as its own user when we are root
started=()

say() { echo "smoke: $*" >&2; }
fail() {
    say "FAILED: $*"
    for log in "$work"/*.err; do [ -f "$log" ] && { echo "--- $log" >&2; tail -n 30 "$log" >&2; }; done
    exit 1
}
cleanup() {
    for pid in "${started[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${started[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# Waits up to $2 seconds for the regex $1 in file $3; prints the first matching line.
await_line() {
    local pattern=$1 seconds=$2 file=$3 line
    for _ in $(seq $((seconds * 10))); do
        line=$(grep -m1 -E "$pattern" "$file" 2>/dev/null || true)
        [ -n "$line" ] && { echo "$line"; return 0; }
        sleep 0.1
    done
    fail "no line matching '$pattern' in $file within ${seconds}s"
}

# Stops $1 with SIGTERM and requires exit status 0 within 60 s.
stop_cleanly() {
    local pid=$1 what=$2 code=0
    kill -TERM "$pid"
    for _ in $(seq 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && fail "$what did not stop within 60 s of SIGTERM"
    wait "$pid" || code=$?
    [ "$code" = 0 ] || fail "$what exited $code on SIGTERM"
    say "$what stopped cleanly"
}

say "building the wheel"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --upgrade pip
# From a copy of the work tree as git sees it: an in-tree build/ would be left behind, and could carry
# stale files into a later wheel.
mkdir "$work/src"
git -C "$repo" ls-files -z --cached --others --exclude-standard \
    | (cd "$repo" && xargs -0 sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh) \
    | tar -C "$repo" --null -T - -cf - | tar -C "$work/src" -xf -
"$work/venv/bin/pip" wheel -q --no-deps "$work/src" -w "$work/dist"
wheel=$(ls "$work"/dist/signalgate-*.whl)
say "installing $(basename "$wheel") into a fresh venv"
"$work/venv/bin/pip" install -q "$wheel"
bin="$work/venv/bin"
cd "$work"  # far from the checkout: nothing may be found through it

where=$("$bin/python" -c 'import proxy; print(proxy.__file__)')
case "$where" in "$work"/venv/*) ;; *) fail "proxy imported from $where, not from the venv" ;; esac
version=$("$bin/signalgate" --version)
[ "$version" = "signalgate $("$bin/python" -c 'from importlib.metadata import version; print(version("signalgate"))')" ] \
    || fail "--version said '$version'"
say "$version"
"$bin/signalgate" config example > example.toml
grep -q '^health_path = ' example.toml || fail "config example lacks health_path"

# A tiny upstream.
mkdir -p www && echo "hello from upstream" > www/hello.txt
python3 -u -m http.server 0 --bind 127.0.0.1 --directory www > upstream.out 2> upstream.err &
started+=($!)
up_port=$(await_line 'port [0-9]+' 10 upstream.out | sed -E 's/.*port ([0-9]+).*/\1/')

# serve, from the example configuration, on the embedded defaults.
export SIGNALGATE_CONFIG="$work/example.toml"
export SIGNALGATE_DATA_DIR="$work/state"
export SIGNALGATE_UPSTREAM="http://127.0.0.1:$up_port"
export SIGNALGATE_LISTEN=127.0.0.1:0 SIGNALGATE_ADMIN_LISTEN=127.0.0.1:0 SIGNALGATE_WORKERS=2
"$bin/signalgate" migrate > migrate.out 2> migrate.err || fail "migrate failed"
grep -q '^applied: 001_init' migrate.out || fail "migrate applied nothing: $(cat migrate.out)"
"$bin/signalgate" serve > decisions.log 2> serve.err &
serve_pid=$!
started+=("$serve_pid")
urls=$(await_line '^signalgate: proxy on ' 120 serve.err)
proxy=$(echo "$urls" | sed -E 's/^signalgate: proxy on ([^,]+), admin API on (.*)$/\1/')
admin=$(echo "$urls" | sed -E 's/^signalgate: proxy on ([^,]+), admin API on (.*)$/\2/')
say "serve: proxy $proxy, admin API $admin"
for _ in $(seq 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$proxy/.signalgate/ready")" = 200 ] && break
    sleep 0.1
done
[ "$(curl -s -o /dev/null -w '%{http_code}' "$proxy/.signalgate/ready")" = 200 ] || fail "never ready"
[ -f state/admin-token ] || fail "no admin token file in the data dir"
[ "$(stat -c %a state/admin-token)" = 600 ] || fail "admin token file is not mode 0600"

export SIGNALGATE_ADMIN_URL="$admin" SIGNALGATE_ADMIN_TOKEN="$(cat state/admin-token)"
"$bin/signalgate" keys create --name smoke --owner ci --json \
    --policy '{"routes": [{"methods": ["GET"], "path": "/hello.txt"}]}' > key.json 2> keys.err \
    || fail "keys create failed: $(cat keys.err)"
key=$("$bin/python" -c 'import json,sys; print(json.load(open("key.json"))["key"])')
allowed=$(curl -s -o allowed.body -w '%{http_code}' -H "X-API-Key: $key" "$proxy/hello.txt")
[ "$allowed" = 200 ] && grep -q 'hello from upstream' allowed.body || fail "allowed request got $allowed"
refused=$(curl -s -o /dev/null -w '%{http_code}' -X DELETE -H "X-API-Key: $key" "$proxy/hello.txt")
[ "$refused" = 403 ] || fail "refused request got $refused"
say "one request allowed (200), one refused (403)"
"$bin/signalgate" migrate > migrate2.out 2> migrate2.err || fail "migrate beside serve failed"
grep -q '^nothing to apply' migrate2.out || fail "second migrate: $(cat migrate2.out)"

stop_cleanly "$serve_pid" "serve"
grep -E ' (WARNING|ERROR|CRITICAL) ' serve.err && fail "serve logged above INFO"
"$bin/python" - decisions.log <<'EOF' || fail "stdout held more than decision lines"
import json, sys
lines = open(sys.argv[1]).read().splitlines()
statuses = sorted(json.loads(line)["status"] for line in lines)
assert statuses == [200, 403], statuses
EOF

# demo, on a data dir of its own.
unset SIGNALGATE_CONFIG SIGNALGATE_UPSTREAM SIGNALGATE_WORKERS SIGNALGATE_ADMIN_URL SIGNALGATE_ADMIN_TOKEN
SIGNALGATE_DATA_DIR="$work/demo" "$bin/signalgate" demo > demo.out 2> demo.err &
demo_pid=$!
started+=("$demo_pid")
await_line '^signalgate: proxy on ' 120 demo.err > /dev/null
line=$(grep -m1 -E "curl -i -H 'X-API-Key: " demo.err | sed -E 's/^ *curl -i //')
eval "set -- $line"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$@")" = 200 ] || fail "the demo's allowed curl line failed"
say "demo: its allowed curl line answers 200"
stop_cleanly "$demo_pid" "demo"

kill -TERM "${started[0]}" && wait "${started[0]}" 2>/dev/null || true  # the upstream
left=$(pgrep -af -- "$work" || true)
[ -z "$left" ] || fail "processes left running: $left"
for dir in state demo; do [ ! -e "$dir/pg/postmaster.pid" ] || fail "PostgreSQL in $dir still running"; done
say "OK: nothing left running"
