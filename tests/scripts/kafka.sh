#!/usr/bin/env bash
# Apache Kafka itself, from Maven Central, for the tests, the demo and the
# benchmarks: no Docker, no download outside Maven.
#
#   kafka.sh install                  resolve Kafka $KAFKA_VERSION into the cache, once
#   kafka.sh start [DIR] [PORT] [EXTRA]
#                                     one KRaft node (broker + controller) on 127.0.0.1:PORT
#                                     (default: a free port) in the background; waits until it
#                                     is ready and prints "pid=... bootstrap=... dir=...";
#                                     EXTRA is a properties file appended to the node's settings
#   kafka.sh cluster [DIR]            three KRaft nodes (each broker + controller), replication
#                                     factor 3, min.insync.replicas=2; prints one line a node
#   kafka.sh kill DIR [N]             kill -9 node N of the cluster in DIR (all nodes without N)
#   kafka.sh restart DIR N            start node N of DIR again (after kill) and wait for it
#   kafka.sh stop DIR                 SIGTERM every node of DIR, kill -9 after 20 s
#   kafka.sh tool NAME ARGS..         one of Kafka's own command-line tools, e.g.
#                                     kafka.sh tool consumer-groups --bootstrap-server .. --list
#
# For the Rust test harness (tests/src/kafka.rs), which picks ports itself:
#   kafka.sh configure DIR ID PORT CONTROLLER_PORT VOTERS [EXTRA_PROPERTIES_FILE]
#                                     write DIR/server.properties for node ID of the quorum
#                                     VOTERS ("1@127.0.0.1:C1,2@127.0.0.1:C2,...")
#   kafka.sh format DIR CLUSTER_ID [STORAGE_TOOL_ARGS..]
#   kafka.sh run DIR                  run the node of DIR in the foreground; prints
#                                     "ready pid=... bootstrap=..." once it serves clients and
#                                     kills the broker when its standard input closes (so a
#                                     test process that dies takes its brokers with it)
#
# Settings every node shares are in tests/kafka/server.properties, those of
# a single node or of three in single.properties and cluster.properties
# beside it (docker-compose.yml and host/deploy/docker-compose.kafka3.yml
# carry the same values: validate-deploy.sh checks); KAFKA_HEAP
# (default 512m) sizes the JVM heap; KAFKA_JAVA picks the java binary.
source "$(dirname "$0")/env.sh"
KAFKA_POM="$ROOT/tests/kafka/pom.xml"
KAFKA_JAVA="${KAFKA_JAVA:-java}"
KAFKA_HEAP="${KAFKA_HEAP:-512m}"

die() { echo "kafka.sh: $*" >&2; exit 1; }

check_java() {
  command -v "$KAFKA_JAVA" >/dev/null ||
    die "Java 17 or newer is needed to run Apache Kafka and was not found (install openjdk-17-jre-headless, or set KAFKA_JAVA)"
  local v
  v="$("$KAFKA_JAVA" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)"
  [[ -n "$v" && "$v" -ge 17 ]] ||
    die "Apache Kafka $KAFKA_VERSION needs Java 17 or newer; $KAFKA_JAVA is version ${v:-unknown} (set KAFKA_JAVA)"
}

install() {
  check_java
  [[ -f "$KAFKA_LIBS/.complete" ]] && return
  command -v mvn >/dev/null ||
    die "Maven (mvn) is needed once to fetch Apache Kafka $KAFKA_VERSION from Maven Central and was not found (apt-get install maven)"
  step "resolving Apache Kafka $KAFKA_VERSION from Maven Central into $KAFKA_LIBS (once)"
  rm -rf "$KAFKA_LIBS"
  local log="$PIPELINE_CACHE/kafka-install.log"
  if ! mvn -q -B -f "$KAFKA_POM" -Dkafka.version="$KAFKA_VERSION" \
      -Dmaven.repo.local="$PIPELINE_CACHE/m2" \
      dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS" \
      >"$log" 2>&1; then
    die "could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION from Maven Central (is https://repo.maven.apache.org reachable?); full log: $log"
  fi
  [[ -f "$KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar" ]] || die "Maven finished but $KAFKA_LIBS has no kafka_2.13-$KAFKA_VERSION.jar; log: $log"
  touch "$KAFKA_LIBS/.complete"
}

java_cp() {
  "$KAFKA_JAVA" -cp "$KAFKA_LIBS/*" -Dlog4j2.configurationFile="$ROOT/tests/kafka/log4j2.properties" "$@"
}

# free_ports N: N distinct free loopback ports, one per line. The sockets are
# held open together so that the kernel cannot hand out one port twice.
free_ports() {
  python3 -c '
import socket, sys
held = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in held:
    s.bind(("127.0.0.1", 0))
print("\n".join(str(s.getsockname()[1]) for s in held))' "$1"
}

# configure DIR ID PORT CONTROLLER_PORT VOTERS [EXTRA]
configure() {
  local dir="$1" id="$2" port="$3" cport="$4" voters="$5" extra="${6:-}"
  local nodes
  nodes="$(tr ',' '\n' <<<"$voters" | wc -l)"
  mkdir -p "$dir"
  {
    cat "$ROOT/tests/kafka/server.properties"
    echo
    echo "# Node $id of $nodes (written by tests/scripts/kafka.sh)"
    echo "node.id=$id"
    echo "controller.quorum.voters=$voters"
    echo "log.dirs=$dir/data"
    echo "listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport"
    echo "advertised.listeners=PLAINTEXT://127.0.0.1:$port"
    echo "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    if [[ "$nodes" -ge 3 ]]; then
      cat "$ROOT/tests/kafka/cluster.properties"
    else
      cat "$ROOT/tests/kafka/single.properties"
    fi
    if [[ -n "$extra" ]]; then
      # A key given again here wins (Java properties: the last one counts).
      echo "# From $extra"
      cat "$extra"
    fi
  } >"$dir/server.properties"
  echo "$port" >"$dir/port"
}

# format DIR CLUSTER_ID [ARGS..]: once; a formatted node keeps its data.
format() {
  local dir="$1" id="$2"; shift 2
  [[ -f "$dir/data/meta.properties" ]] && return
  java_cp -Dkafka.logs.dir="$dir" kafka.tools.StorageTool format -t "$id" \
    -c "$dir/server.properties" "$@" >"$dir/format.log" 2>&1 ||
    { cat "$dir/format.log" >&2; die "formatting $dir failed"; }
}

# A random cluster id: a UUID in URL-safe base64 without padding, as
# `kafka-storage.sh random-uuid` prints (without starting a JVM for it).
cluster_id() {
  python3 -c 'import base64, uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    if not s.startswith("-"): break
print(s)'
}

# run DIR: the node in the foreground, killed when stdin closes.
run() {
  local dir="$1" port
  port="$(cat "$dir/port")"
  : >"$dir/server.log"
  # shellcheck disable=SC2086
  "$KAFKA_JAVA" -Xms"$KAFKA_HEAP" -Xmx"$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true -Dkafka.logs.dir="$dir" \
    -Dlog4j2.configurationFile="$ROOT/tests/kafka/log4j2.properties" ${KAFKA_OPTS:-} \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$dir/server.properties" </dev/null >>"$dir/stdout.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$dir/pid"
  supervise "$pid" "${KAFKA_DETACHED:-}" "pid=$pid bootstrap=127.0.0.1:$port dir=$dir" \
    wait_ready "$dir" "$pid"
}

# wait_ready DIR PID: until the node logs that it serves clients.
wait_ready() {
  local dir="$1" pid="$2"
  for _ in $(seq 1 1200); do
    grep -q 'Kafka Server started' "$dir/server.log" 2>/dev/null && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "kafka.sh: the broker in $dir exited before it was ready:" >&2
      grep -E 'ERROR|FATAL|Exception' "$dir/server.log" "$dir/stdout.log" 2>/dev/null | head -5 >&2
      return 1
    fi
    sleep 0.1
  done
  echo "kafka.sh: the broker in $dir was not ready within 120 s; log: $dir/server.log" >&2
  return 1
}

# Starts `run DIR` detached (in its own session, not tied to this shell's
# standard input) and waits for its ready line.
detach() {
  local dir="$1"
  rm -f "$dir/ready"
  KAFKA_DETACHED=1 setsid bash "$0" run "$dir" </dev/null >"$dir/ready" 2>>"$dir/stdout.log" &
  for _ in $(seq 1 1300); do
    if grep -q '^ready' "$dir/ready" 2>/dev/null; then sed -n 's/^ready //p' "$dir/ready"; return 0; fi
    sleep 0.1
  done
  die "node in $dir did not start; see $dir/server.log"
}

start() {
  local dir="${1:-$PIPELINE_CACHE/kafka-node}" port="${2:-}" extra="${3:-}"
  install
  local free cport
  mapfile -t free < <(free_ports 2)
  cport="${free[1]}"
  if [[ -z "$port" ]]; then port="${free[0]}"; elif [[ "$port" == "$cport" ]]; then cport="${free[0]}"; fi
  if [[ -f "$dir/data/meta.properties" && "$(cat "$dir/port" 2>/dev/null)" != "$port" ]]; then
    rm -rf "$dir"
  fi
  configure "$dir" 1 "$port" "$cport" "1@127.0.0.1:$cport" "$extra"
  format "$dir" "$(cluster_id)"
  detach "$dir"
}

cluster() {
  local dir="${1:-$PIPELINE_CACHE/kafka-cluster}"
  install
  rm -rf "$dir"
  local free ports=() cports=() voters=""
  mapfile -t free < <(free_ports 6)
  for n in 1 2 3; do
    ports+=("${free[n-1]}"); cports+=("${free[n+2]}")
    voters+="${voters:+,}$n@127.0.0.1:${cports[n-1]}"
  done
  local id
  id="$(cluster_id)"
  for n in 1 2 3; do
    configure "$dir/node$n" "$n" "${ports[n-1]}" "${cports[n-1]}" "$voters"
    format "$dir/node$n" "$id" &
  done
  wait
  # The nodes need each other for a quorum: start all, then wait for each.
  for n in 1 2 3; do
    rm -f "$dir/node$n/ready"
    KAFKA_DETACHED=1 setsid bash "$0" run "$dir/node$n" </dev/null >"$dir/node$n/ready" 2>>"$dir/node$n/stdout.log" &
  done
  for n in 1 2 3; do
    for _ in $(seq 1 1300); do grep -q '^ready' "$dir/node$n/ready" 2>/dev/null && break; sleep 0.1; done
    grep -q '^ready' "$dir/node$n/ready" || die "node $n in $dir did not start; see $dir/node$n/server.log"
    echo "node=$n $(sed -n 's/^ready //p' "$dir/node$n/ready")"
  done
}

nodes_of() {
  local dir="$1" n="${2:-}"
  if [[ -n "$n" ]]; then echo "$dir/node$n"
  elif [[ -f "$dir/server.properties" ]]; then echo "$dir"
  else ls -d "$dir"/node* 2>/dev/null; fi
}

kill_nodes() {
  for d in $(nodes_of "$@"); do
    [[ -f "$d/pid" ]] && kill -9 "$(cat "$d/pid")" 2>/dev/null || true
  done
}

stop() {
  local dir="$1" pids=()
  for d in $(nodes_of "$dir"); do
    [[ -f "$d/pid" ]] && pids+=("$(cat "$d/pid")")
  done
  [[ ${#pids[@]} -eq 0 ]] && return
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 1 200); do
    kill -0 "${pids[@]}" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "${pids[@]}" 2>/dev/null || true
}

restart() {
  local d
  d="$(nodes_of "$1" "$2")"
  [[ -f "$d/server.properties" ]] || die "no node $2 in $1"
  detach "$d"
}

# first_class CLASS..: the first of CLASS.. found in Kafka's jars (tools move
# from the Scala kafka.* packages to org.apache.kafka.tools between releases:
# AclCommand, ConsoleProducer, ConfigCommand, DumpLogSegments are in kafka.*
# in 3.9.1 and in org.apache.kafka.tools in 4.4.0).
first_class() {
  python3 - "$KAFKA_LIBS" "$@" <<'PY'
import glob, sys, zipfile
libs, candidates = sys.argv[1], sys.argv[2:]
names = set()
for jar in glob.glob(f"{libs}/kafka*.jar"):
    try:
        names.update(zipfile.ZipFile(jar).namelist())
    except zipfile.BadZipFile:
        pass
print(next((c for c in candidates if c.replace(".", "/") + ".class" in names), candidates[-1]))
PY
}

# tool NAME ARGS..: Kafka's own tools, by the name of their bin/ script.
tool() {
  install
  local name="$1"; shift
  local class
  case "$name" in
    consumer-groups) class=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
    share-groups) class=org.apache.kafka.tools.consumer.group.ShareGroupCommand ;;
    console-consumer) class=org.apache.kafka.tools.consumer.ConsoleConsumer ;;
    console-producer) class=$(first_class org.apache.kafka.tools.ConsoleProducer kafka.tools.ConsoleProducer) ;;
    topics) class=org.apache.kafka.tools.TopicCommand ;;
    acls) class=$(first_class org.apache.kafka.tools.AclCommand kafka.admin.AclCommand) ;;
    configs) class=$(first_class org.apache.kafka.tools.ConfigCommand kafka.admin.ConfigCommand) ;;
    get-offsets) class=org.apache.kafka.tools.GetOffsetShell ;;
    producer-perf-test) class=org.apache.kafka.tools.ProducerPerformance ;;
    dump-log) class=$(first_class org.apache.kafka.tools.DumpLogSegments kafka.tools.DumpLogSegments) ;;
    transactions) class=org.apache.kafka.tools.TransactionsCommand ;;
    *) die "unknown tool $name (consumer-groups, share-groups, console-consumer, console-producer, topics, acls, configs, get-offsets, producer-perf-test, dump-log, transactions)" ;;
  esac
  "$KAFKA_JAVA" -Xmx256m -XX:TieredStopAtLevel=1 -cp "$KAFKA_LIBS/*" \
    -Dlog4j2.configurationFile="$ROOT/tests/kafka/log4j2-tools.properties" "$class" "$@"
}

cmd="${1:-}"; shift || true
case "$cmd" in
  install) install ;;
  start) start "$@" ;;
  cluster) cluster "$@" ;;
  kill) kill_nodes "$@" ;;
  restart) restart "$@" ;;
  stop) stop "$@" ;;
  tool) tool "$@" ;;
  configure) configure "$@" ;;
  format) format "$@" ;;
  cluster-id) cluster_id ;;
  run) run "$@" ;;
  *) sed -n '2,/^$/s/^# \{0,1\}//p' "$0" >&2; exit 2 ;;
esac
