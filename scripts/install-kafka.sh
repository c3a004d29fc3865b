#!/usr/bin/env bash
# Installs Apache Kafka (a KRaft broker+controller for the dispatch tests, no Docker) when
# missing, into a cache outside the repo:
#   ${CMQ_CACHE_DIR:-$HOME/.cache/cmq}/kafka-<version>/lib/*.jar      the runtime classpath
#   ${CMQ_CACHE_DIR:-$HOME/.cache/cmq}/kafka-<version>/config/log4j2.properties
# The jars come from Maven Central: a throw-away pom depending on org.apache.kafka:kafka_2.13
# (plus log4j-slf4j-impl, so the broker's SLF4J logging reaches log4j2) is resolved with
# `mvn dependency:copy-dependencies`; Maven's own repository stays in ~/.m2. A stamp file makes
# a warm run instant. Prints the install directory on the LAST line of stdout, everything else
# goes to stderr:
#   KAFKA_HOME=$(scripts/install-kafka.sh | tail -n1)
# Start it with: java -cp "$KAFKA_HOME/lib/*" -Dlog4j2.configurationFile=$KAFKA_HOME/config/
# log4j2.properties kafka.Kafka server.properties (dataplane/tests/support/kafka.py does this).
#
# Needs Java >= 17 (Kafka 4 brokers) and, only when installing, Maven (`mvn`).
# Environment: CMQ_KAFKA_VERSION (default below), CMQ_CACHE_DIR (default ~/.cache/cmq).
set -euo pipefail

KAFKA_VERSION="${CMQ_KAFKA_VERSION:-4.4.0}"
LOG4J_VERSION=2.25.5 # the log4j2 that kafka_2.13 4.4.0 depends on
RECIPE=2             # bump when the layout below changes, so caches are rebuilt

cache="${CMQ_CACHE_DIR:-$HOME/.cache/cmq}"
target="$cache/kafka-$KAFKA_VERSION"
stamp="$target/.installed"
want_stamp="kafka $KAFKA_VERSION log4j $LOG4J_VERSION recipe $RECIPE"

log() { printf 'install-kafka: %s\n' "$*" >&2; }

installed() {
  [ -f "$stamp" ] && [ "$(<"$stamp")" = "$want_stamp" ]
}

done_with() {
  log "Kafka $KAFKA_VERSION at $target"
  printf '%s\n' "$target"
  exit 0
}

installed && done_with

java_bin="${JAVA_HOME:+$JAVA_HOME/bin/}java"
command -v "$java_bin" >/dev/null 2>&1 || { log "java not found (Kafka $KAFKA_VERSION needs Java >= 17)"; exit 1; }
command -v mvn >/dev/null 2>&1 || { log "mvn not found (needed to fetch Kafka from Maven Central)"; exit 1; }

mkdir -p "$cache"
# one installer at a time (parallel test runners may all call this script)
exec 9>"$cache/install-kafka.lock"
if command -v flock >/dev/null 2>&1; then flock 9; fi
installed && done_with # another process may have installed it while we waited

# build next to the target, then rename: a reader never sees a half-filled lib/
tmp="$(mktemp -d "$cache/.kafka-$KAFKA_VERSION.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

cat >"$tmp/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>cmq.local</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>0</version>
  <packaging>pom</packaging>
  <dependencyManagement>
    <dependencies>
      <dependency>
        <groupId>org.apache.logging.log4j</groupId>
        <artifactId>log4j-bom</artifactId>
        <version>$LOG4J_VERSION</version>
        <type>pom</type>
        <scope>import</scope>
      </dependency>
    </dependencies>
  </dependencyManagement>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
    </dependency>
  </dependencies>
</project>
EOF

log "resolving org.apache.kafka:kafka_2.13:$KAFKA_VERSION and its runtime dependencies with Maven"
mkdir -p "$tmp/kafka/lib" "$tmp/kafka/config"
if ! (cd "$tmp" && mvn -q -B -Dstyle.color=never dependency:copy-dependencies \
  -DincludeScope=runtime -DoutputDirectory="$tmp/kafka/lib") >"$tmp/mvn.log" 2>&1; then
  cat "$tmp/mvn.log" >&2
  log "mvn dependency:copy-dependencies failed (output above)"
  exit 1
fi

# Without a config log4j2 prints only errors; this one logs lifecycle lines at INFO but not the
# hundreds of lines of configuration dumps, which keeps a test's broker log readable.
cat >"$tmp/kafka/config/log4j2.properties" <<'EOF'
status = warn
# Kafka's own shutdown hook logs after log4j's would have stopped
shutdownHook = disable
appender.out.type = Console
appender.out.name = out
appender.out.target = SYSTEM_OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d{HH:mm:ss,SSS}] %p %m (%c{1})%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
logger.appinfo.name = org.apache.kafka.common.utils.AppInfoParser
logger.appinfo.level = WARN
EOF

# smoke test: the classpath holds the broker and says which version it is
got="$("$java_bin" -cp "$tmp/kafka/lib/*" kafka.Kafka --version 2>/dev/null | tail -n1)" || true
if [ "$got" != "$KAFKA_VERSION" ]; then
  log "kafka.Kafka --version printed '$got', expected $KAFKA_VERSION (is Java >= 17?)"
  exit 1
fi

printf '%s\n' "$want_stamp" >"$tmp/kafka/.installed"
rm -rf "$target"
mv "$tmp/kafka" "$target"
log "installed $(ls "$target/lib" | wc -l) jars"
done_with
