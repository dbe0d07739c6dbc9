#!/usr/bin/env bash
# The local stack reach runs on: Apache Kafka 4 (single-node KRaft, jars from
# Maven Central), MariaDB and Redis (Debian packages).
#
#   deploy/stack.sh install   install what is missing (idempotent)
#   deploy/stack.sh up        install, then start each service that is not
#                             already answering on its port (idempotent)
#   deploy/stack.sh start kafka|mariadb|redis ...
#                             start only these (the crash harness's throwaway
#                             instances, with their own REACH_STACK_DIR and ports)
#   deploy/stack.sh down      stop the services this script started
#   deploy/stack.sh status    one line per service
#   deploy/stack.sh wrk       install the wrk load generator (make bench-api)
#   deploy/stack.sh observe   start Prometheus and Alertmanager (Debian packages) on the
#                             local pipeline's ports, with reach's rules (make observe)
#   deploy/stack.sh observe-down
#                             stop them
#
# State (data, logs, pid files) lives under $REACH_STACK_DIR (default
# ./.stack). Ports: REACH_KAFKA_PORT (9092), REACH_KAFKA_CONTROLLER_PORT
# (9093), REACH_MYSQL_PORT (3306), REACH_REDIS_PORT (6379). REACH_KAFKA_LIB
# points at already-resolved broker jars (default $REACH_STACK_DIR/kafka/lib).
# REACH_PROMETHEUS_PORT (9090), REACH_ALERTMANAGER_PORT (9094: Kafka's controller
# has 9093).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
stack=${REACH_STACK_DIR:-$root/.stack}
kafka_port=${REACH_KAFKA_PORT:-9092}
controller_port=${REACH_KAFKA_CONTROLLER_PORT:-9093}
mysql_port=${REACH_MYSQL_PORT:-3306}
redis_port=${REACH_REDIS_PORT:-6379}
prometheus_port=${REACH_PROMETHEUS_PORT:-9090}
alertmanager_port=${REACH_ALERTMANAGER_PORT:-9094}
mysql_user=${REACH_MYSQL_USER:-reach}
mysql_password=${REACH_MYSQL_PASSWORD:-reach}
kafka_lib=${REACH_KAFKA_LIB:-$stack/kafka/lib}  # throwaway stacks share the jars

log() { printf '[stack] %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port, name, seconds, log file
  local i
  for ((i = 0; i < $3 * 5; i++)); do
    port_open "$1" && return 0
    sleep 0.2
  done
  log "$2 did not open port $1 within $3 s; last lines of $4:"
  tail -n 30 "$4" >&2 || true
  return 1
}

install_debian() {
  local missing=()
  command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server mariadb-client)
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  # openssl makes the self-signed certificates of the TLS test servers (SMTP, APNs).
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  # promtool and amtool check the alert rules and the routing in the tests; the servers run
  # the end-to-end alert test and make observe. Debian's packages start nothing here.
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
}

install_wrk() {
  command -v wrk >/dev/null 2>&1 && return 0
  log "installing the Debian package wrk (the HTTP load generator of make bench-api)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q wrk
}

install_kafka() {
  [ -f "$kafka_lib/.complete" ] && return 0
  command -v java >/dev/null || { log "java (17+) is required for the Kafka broker"; exit 1; }
  command -v mvn >/dev/null || { log "maven is required to resolve the Kafka jars"; exit 1; }
  log "resolving Kafka broker jars from Maven Central into $kafka_lib"
  rm -rf "$kafka_lib"
  mkdir -p "$kafka_lib"
  mvn -q -B -f "$here/kafka/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$kafka_lib" -DincludeScope=runtime
  touch "$kafka_lib/.complete"
}

start_kafka() {
  if port_open "$kafka_port"; then log "kafka: reusing the broker on :$kafka_port"; return 0; fi
  install_kafka  # only a broker this script starts needs the jars (a no-op once resolved)
  local dir=$stack/kafka
  mkdir -p "$dir/data" "$dir/logs"
  sed -e "s#@DATA@#$dir/data#" -e "s#@PORT@#$kafka_port#g" -e "s#@CPORT@#$controller_port#g" \
    "$here/kafka/server.properties" >"$dir/server.properties"
  local cp="$kafka_lib/*"
  local jvm=(-Xms512m -Xmx1g -XX:+UseG1GC "-Dlog4j2.configurationFile=$here/kafka/log4j2.xml"
    "-Dkafka.logs.dir=$dir/logs")
  if [ ! -f "$dir/data/meta.properties" ]; then
    log "kafka: formatting storage"
    java -cp "$cp" "${jvm[@]}" kafka.tools.StorageTool format \
      -t "$(cat "$dir/cluster-id" 2>/dev/null || echo MkU3OEVBNTcwNTJENDM2Qk)" \
      -c "$dir/server.properties" >"$dir/logs/format.log" 2>&1
  fi
  log "kafka: starting on :$kafka_port"
  nohup java -cp "$cp" "${jvm[@]}" kafka.Kafka "$dir/server.properties" \
    >"$dir/logs/server.out" 2>&1 &
  echo $! >"$dir/pid"
  wait_port "$kafka_port" kafka 90 "$dir/logs/server.out"
}

start_redis() {
  if port_open "$redis_port"; then log "redis: reusing the server on :$redis_port"; return 0; fi
  local dir=$stack/redis
  mkdir -p "$dir"
  log "redis: starting on :$redis_port"
  # appendonly: throttle windows and deferred messages must survive a restart.
  redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir" --daemonize yes \
    --pidfile "$dir/pid" --logfile "$dir/redis.log" --appendonly yes \
    --appendfsync everysec --save ""
  wait_port "$redis_port" redis 20 "$dir/redis.log"
}

mysql_root() { # runs SQL as root over the socket of whichever server answers
  local sock
  for sock in "$stack/mariadb/mysqld.sock" /run/mysqld/mysqld.sock; do
    if [ -S "$sock" ]; then mariadb --protocol=socket -S "$sock" -uroot "$@"; return; fi
  done
  log "mariadb: no root socket found to create the '$mysql_user' user"
  return 1
}

start_mariadb() {
  local dir=$stack/mariadb
  if port_open "$mysql_port"; then
    log "mariadb: reusing the server on :$mysql_port"
  else
    mkdir -p "$dir"
    if [ ! -d "$dir/data/mysql" ]; then
      log "mariadb: initialising $dir/data"
      mariadb-install-db --user=root --datadir="$dir/data" --auth-root-authentication-method=socket \
        >"$dir/install.log" 2>&1
    fi
    log "mariadb: starting on :$mysql_port"
    nohup mariadbd --no-defaults --user=root --datadir="$dir/data" --port="$mysql_port" \
      --bind-address=127.0.0.1 --socket="$dir/mysqld.sock" --pid-file="$dir/pid" \
      --log-error="$dir/error.log" --innodb-buffer-pool-size=512M \
      --innodb-flush-log-at-trx-commit=2 --max-connections=500 \
      --character-set-server=utf8mb4 --collation-server=utf8mb4_bin \
      >"$dir/server.out" 2>&1 &
    wait_port "$mysql_port" mariadb 60 "$dir/error.log"
  fi
  # A reused server (another checkout's, or a system one) may have the user already.
  if mariadb --protocol=tcp -h127.0.0.1 -P"$mysql_port" -u"$mysql_user" -p"$mysql_password" \
    -e 'SELECT 1' >/dev/null 2>&1; then
    return 0
  fi
  mysql_root <<SQL
CREATE USER IF NOT EXISTS '$mysql_user'@'127.0.0.1' IDENTIFIED BY '$mysql_password';
CREATE USER IF NOT EXISTS '$mysql_user'@'localhost' IDENTIFIED BY '$mysql_password';
GRANT ALL PRIVILEGES ON *.* TO '$mysql_user'@'127.0.0.1';
GRANT ALL PRIVILEGES ON *.* TO '$mysql_user'@'localhost';
SQL
}

start_alertmanager() {
  if port_open "$alertmanager_port"; then log "alertmanager: reusing :$alertmanager_port"; return 0; fi
  local dir=$stack/alertmanager
  mkdir -p "$dir/data"
  log "alertmanager: starting on :$alertmanager_port"
  # No cluster listener: one local instance, and its default port 9094 is ours.
  nohup prometheus-alertmanager --config.file="$here/alertmanager/alertmanager.yml" \
    --storage.path="$dir/data" --web.listen-address="127.0.0.1:$alertmanager_port" \
    --cluster.listen-address= >"$dir/server.out" 2>&1 &
  echo $! >"$dir/pid"
  wait_port "$alertmanager_port" alertmanager 30 "$dir/server.out"
}

start_prometheus() {
  if port_open "$prometheus_port"; then log "prometheus: reusing :$prometheus_port"; return 0; fi
  local dir=$stack/prometheus
  mkdir -p "$dir/data"
  sed -e "s#@RULES@#$here/prometheus/rules#" -e "s#@ALERTMANAGER@#127.0.0.1:$alertmanager_port#" \
    "$here/prometheus/prometheus.local.yml" >"$dir/prometheus.yml"
  log "prometheus: starting on :$prometheus_port"
  nohup prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
    --web.listen-address="127.0.0.1:$prometheus_port" >"$dir/server.out" 2>&1 &
  echo $! >"$dir/pid"
  wait_port "$prometheus_port" prometheus 30 "$dir/server.out"
}

stop_pidfile() { # name, pid file
  [ -f "$2" ] || return 0
  local pid
  pid=$(cat "$2")
  if kill -0 "$pid" 2>/dev/null; then
    log "$1: stopping (pid $pid)"
    kill "$pid"
    local i
    for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$2"
}

status_line() { if port_open "$2"; then echo "$1 up :$2"; else echo "$1 down :$2"; fi; }

case "${1:-up}" in
  install) install_debian; install_kafka ;;
  wrk) install_wrk ;;
  observe)
    install_debian
    start_alertmanager
    start_prometheus
    log "prometheus http://127.0.0.1:$prometheus_port/alerts, alertmanager http://127.0.0.1:$alertmanager_port"
    ;;
  observe-down)
    stop_pidfile prometheus "$stack/prometheus/pid"
    stop_pidfile alertmanager "$stack/alertmanager/pid"
    ;;
  up)
    install_debian
    start_redis
    start_mariadb
    start_kafka
    log "stack is up: kafka 127.0.0.1:$kafka_port, mariadb 127.0.0.1:$mysql_port, redis 127.0.0.1:$redis_port"
    ;;
  start) # start the named services only (throwaway instances for fault tests)
    shift
    for service in "$@"; do "start_$service"; done
    ;;
  down)
    stop_pidfile kafka "$stack/kafka/pid"
    stop_pidfile mariadb "$stack/mariadb/pid"
    stop_pidfile redis "$stack/redis/pid"
    ;;
  status)
    status_line kafka "$kafka_port"
    status_line mariadb "$mysql_port"
    status_line redis "$redis_port"
    status_line prometheus "$prometheus_port"
    status_line alertmanager "$alertmanager_port"
    ;;
  *) echo "usage: $0 install|up|start SERVICE...|down|status|wrk|observe|observe-down" >&2; exit 2 ;;
esac
