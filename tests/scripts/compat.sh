#!/usr/bin/env bash
# The compatibility run: the consumer-group, delivery and exactly-once tests
# on an older Apache Kafka (default 3.9.1, the classic group protocol only,
# what many managed clusters still run), from Maven Central like the main
# broker. CI runs it after the full suite on the default broker. Tests of
# KIP-848's consumer protocol (Kafka 4.0+) are skipped, and the rebalance
# figures are printed on the default broker only; `auto` must choose
# classic here (groups.rs). The exactly-once runs whose subject is not the
# broker (Avro, routes, the at-least-once comparison) run on the default
# broker only, to keep CI's time.
#
#   tests/scripts/compat.sh [VERSION] [extra cargo test args..]
source "$(dirname "$0")/env.sh"
cd "$ROOT"
version="${1:-3.9.1}"
shift || true
export KAFKA_VERSION="$version"
export KAFKA_LIBS="$PIPELINE_CACHE/kafka-$KAFKA_VERSION/libs"
timed "installing Apache Kafka $KAFKA_VERSION" tests/scripts/kafka.sh install
timed "building the plugins" tests/scripts/build-plugins.sh
timed "building pipeline-host" cargo build --quiet --release -p pipeline-host
timed "group, delivery and exactly-once tests on Apache Kafka $KAFKA_VERSION" \
  cargo test --release -p pipeline-tests \
  --test groups --test end_to_end --test transactions --test exactly_once --test inputs "$@" \
  -- --skip consumer_protocol --skip rebalance_figures \
  --skip on_avro --skip with_routes --skip the_same_kills_repeat
