#!/usr/bin/env bash
# Apicurio Registry, the Schema Registry of the tests, the demo and the
# benchmarks, from Maven Central: no Docker, no download outside Maven. It
# serves the Confluent-compatible API at http://127.0.0.1:PORT/apis/ccompat/v7.
# Its storage is an H2 database file in DIR, so a registry killed and started
# again on the same DIR keeps its schemas and ids.
#
#   registry.sh install              resolve Apicurio Registry $REGISTRY_VERSION into the cache, once
#   registry.sh start DIR [PORT]     one registry on 127.0.0.1:PORT (default: a free port) in the
#                                    background; waits until it answers and prints
#                                    "pid=... url=... dir=..." (url: the ccompat API)
#   registry.sh stop DIR             SIGTERM it, kill -9 after 20 s
#   registry.sh kill DIR             kill -9 it
#   registry.sh java                 the Java 21+ binary it runs on
#
# For the Rust test harness (tests/src/registry.rs), which picks the port:
#   registry.sh run DIR PORT         the registry in the foreground; prints
#                                    "ready pid=... url=..." once it answers and kills it
#                                    when its standard input closes
#
# Apicurio 3 needs Java 21 or newer. REGISTRY_JAVA picks the binary;
# otherwise `java` is used when it is new enough, else the newest JDK under
# /usr/lib/jvm. REGISTRY_HEAP (default 512m) sizes its heap.
source "$(dirname "$0")/env.sh"
REGISTRY_HEAP="${REGISTRY_HEAP:-512m}"

die() { echo "registry.sh: $*" >&2; exit 1; }

java_version() {
  "$1" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1
}

# The Java binary to run Apicurio with: 21 or newer.
find_java() {
  local j v
  if [[ -n "${REGISTRY_JAVA:-}" ]]; then
    v="$(java_version "$REGISTRY_JAVA")"
    [[ -n "$v" && "$v" -ge 21 ]] ||
      die "REGISTRY_JAVA=$REGISTRY_JAVA is Java ${v:-of unknown version}; Apicurio Registry $REGISTRY_VERSION needs Java 21 or newer"
    echo "$REGISTRY_JAVA"; return
  fi
  for j in "$(command -v java || true)" $(ls -d /usr/lib/jvm/*/bin/java 2>/dev/null | sort -rV); do
    [[ -x "$j" ]] || continue
    v="$(java_version "$j")"
    if [[ -n "$v" && "$v" -ge 21 ]]; then echo "$j"; return; fi
  done
  die "Apicurio Registry $REGISTRY_VERSION needs Java 21 or newer, and none was found (java on PATH and /usr/lib/jvm/*: $(
    for j in "$(command -v java || true)" /usr/lib/jvm/*/bin/java; do [[ -x "$j" ]] && printf '%s=%s ' "$j" "$(java_version "$j")"; done
  )). Install one (e.g. apt-get install openjdk-21-jre-headless) or set REGISTRY_JAVA"
}

install() {
  find_java >/dev/null
  [[ -f "$REGISTRY_HOME/.complete" ]] && return
  command -v mvn >/dev/null ||
    die "Maven (mvn) is needed once to fetch Apicurio Registry $REGISTRY_VERSION from Maven Central and was not found (apt-get install maven)"
  step "resolving Apicurio Registry $REGISTRY_VERSION from Maven Central into $REGISTRY_HOME (once)"
  local log="$PIPELINE_CACHE/registry-install.log" tmp="$REGISTRY_HOME.download"
  rm -rf "$REGISTRY_HOME" "$tmp"
  mkdir -p "$tmp"
  if ! mvn -q -B dependency:copy \
      -Dartifact="io.apicurio:apicurio-registry-app:$REGISTRY_VERSION:tar.gz:all" \
      -Dmaven.repo.local="$PIPELINE_CACHE/m2" -DoutputDirectory="$tmp" >"$log" 2>&1; then
    die "could not resolve io.apicurio:apicurio-registry-app:$REGISTRY_VERSION:tar.gz:all from Maven Central (is https://repo.maven.apache.org reachable?); full log: $log"
  fi
  mkdir -p "$REGISTRY_HOME"
  tar -xzf "$tmp"/apicurio-registry-app-*.tar.gz -C "$REGISTRY_HOME" ||
    die "could not unpack the Apicurio Registry archive in $tmp"
  rm -rf "$tmp"
  [[ -f "$REGISTRY_HOME/quarkus-run.jar" ]] || die "the Apicurio Registry archive has no quarkus-run.jar (see $REGISTRY_HOME)"
  touch "$REGISTRY_HOME/.complete"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# run DIR PORT: the registry in the foreground, killed when stdin closes.
run() {
  local dir="$1" port="$2" java
  java="$(find_java)"
  mkdir -p "$dir"
  echo "$port" >"$dir/port"
  : >"$dir/registry.log"
  # H2 in a file: the schemas and their ids outlive a kill.
  QUARKUS_HTTP_HOST=127.0.0.1 QUARKUS_HTTP_PORT="$port" \
    QUARKUS_MANAGEMENT_HOST=127.0.0.1 QUARKUS_MANAGEMENT_PORT=0 \
    APICURIO_STORAGE_KIND=sql APICURIO_STORAGE_SQL_KIND=h2 \
    APICURIO_DATASOURCE_URL="jdbc:h2:file:$dir/db;DB_CLOSE_ON_EXIT=FALSE" \
    APICURIO_DATASOURCE_USERNAME=sa APICURIO_DATASOURCE_PASSWORD=sa \
    "$java" -Xms"$REGISTRY_HEAP" -Xmx"$REGISTRY_HEAP" -XX:TieredStopAtLevel=1 \
    -jar "$REGISTRY_HOME/quarkus-run.jar" </dev/null >>"$dir/registry.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$dir/pid"
  local url="http://127.0.0.1:$port/apis/ccompat/v7"
  supervise "$pid" "${REGISTRY_DETACHED:-}" "pid=$pid url=$url dir=$dir" \
    wait_ready "$dir" "$pid" "$url"
}

# wait_ready DIR PID URL: until the ccompat API answers.
wait_ready() {
  local dir="$1" pid="$2" url="$3"
  for _ in $(seq 1 1200); do
    curl -sf -o /dev/null "$url/subjects" 2>/dev/null && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "registry.sh: the registry in $dir exited before it was ready:" >&2
      grep -E 'ERROR|Exception' "$dir/registry.log" 2>/dev/null | head -5 >&2
      return 1
    fi
    sleep 0.1
  done
  echo "registry.sh: the registry in $dir did not answer within 120 s; log: $dir/registry.log" >&2
  return 1
}

start() {
  local dir="${1:-$PIPELINE_CACHE/registry-node}" port="${2:-}"
  install
  [[ -n "$port" ]] || port="$(free_port)"
  mkdir -p "$dir"
  rm -f "$dir/ready"
  REGISTRY_DETACHED=1 setsid bash "$0" run "$dir" "$port" </dev/null >"$dir/ready" 2>>"$dir/registry.log" &
  for _ in $(seq 1 1300); do
    if grep -q '^ready' "$dir/ready" 2>/dev/null; then sed -n 's/^ready //p' "$dir/ready"; return 0; fi
    sleep 0.1
  done
  die "the registry in $dir did not start; see $dir/registry.log"
}

stop() {
  local dir="$1" pid
  [[ -f "$dir/pid" ]] || return 0
  pid="$(cat "$dir/pid")"
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 200); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
}

cmd="${1:-}"; shift || true
case "$cmd" in
  install) install ;;
  start) start "$@" ;;
  stop) stop "$@" ;;
  kill) [[ -f "$1/pid" ]] && kill -9 "$(cat "$1/pid")" 2>/dev/null || true ;;
  run) run "$@" ;;
  java) find_java ;;
  *) sed -n '2,/^$/s/^# \{0,1\}//p' "$0" >&2; exit 2 ;;
esac
