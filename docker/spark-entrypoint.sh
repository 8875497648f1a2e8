#!/usr/bin/env bash
# ENTRYPOINT of the gdmix spark image (under tini), written for the contract of Spark's Kubernetes
# backend (spark-kubernetes_2.13, "Running on Kubernetes"): in cluster mode the spark operator runs
# spark-submit, which creates the driver pod from this image with container args only; the driver
# then creates the executor pods, also with args only. So:
#
#   driver ARGS...   (DriverCommandFeatureStep: `driver --properties-file /opt/spark/conf/spark.properties
#                    --class org.apache.spark.deploy.PythonRunner local:///…/main.py APP_ARGS…`;
#                    env SPARK_DRIVER_BIND_ADDRESS = the pod IP, SPARK_CONF_DIR, PYSPARK_PYTHON …)
#                    -> spark-submit --deploy-mode client
#                       --conf spark.driver.bindAddress=$SPARK_DRIVER_BIND_ADDRESS ARGS...
#   executor         (BasicExecutorFeatureStep: env SPARK_DRIVER_URL, SPARK_EXECUTOR_ID,
#                    SPARK_EXECUTOR_CORES, SPARK_EXECUTOR_MEMORY, SPARK_APPLICATION_ID,
#                    SPARK_EXECUTOR_POD_IP, SPARK_EXECUTOR_POD_NAME, SPARK_RESOURCE_PROFILE_ID,
#                    SPARK_CLASSPATH, SPARK_JAVA_OPT_0..N, SPARK_EXECUTOR_LIBRARY_PATH …)
#                    -> java SPARK_JAVA_OPT_* -Xms/-Xmx -cp … KubernetesExecutorBackend --driver-url …
#   anything else    runs as given (exec "$@"): `docker run IMAGE gdmix prep …`, kfp.local's
#                    DockerRunner (which passes a step's command as the container's arguments).
#                    On Kubernetes a container's `command` replaces this ENTRYPOINT altogether (a KFP
#                    step), so those never come here.
#
# SPARK_HOME is the pyspark package (bin/spark-submit, jars/), JAVA_HOME and PYSPARK_PYTHON come from
# the image. Runs as the image's uid 1000: nothing here needs root (PSA "restricted").
#
# GDMIX_SPARK_ENTRYPOINT_DRY_RUN=1: print the command, one argument per line, instead of running it.
set -euo pipefail

say() { echo "spark-entrypoint: $*" >&2; }
die() { say "ERROR: $*"; exit 64; }

# The Spark of this image: pyspark's package folder (no separate distribution).
spark_home() {
    if [[ -n ${SPARK_HOME:-} && -x ${SPARK_HOME}/bin/spark-submit ]]; then
        echo "$SPARK_HOME"
        return
    fi
    python3 -c 'import os, pyspark; print(os.path.dirname(os.path.abspath(pyspark.__file__)))' \
        || die "pyspark is not importable with $(command -v python3)"
}

run() {
    if [[ ${GDMIX_SPARK_ENTRYPOINT_DRY_RUN:-0} == 1 ]]; then
        printf '%s\n' "$@"
        exit 0
    fi
    exec "$@"
}

# The executor JVM's classpath: Spark's conf folder (log4j2.properties, … mounted by the driver),
# Hadoop's conf, spark.executor.extraClassPath (SPARK_CLASSPATH), Spark's jars, SPARK_DIST_CLASSPATH.
executor_classpath() {
    local cp=()
    if [[ -n ${SPARK_CONF_DIR:-} ]]; then cp+=("$SPARK_CONF_DIR"); else cp+=("$SPARK_HOME/conf"); fi
    [[ -z ${HADOOP_CONF_DIR:-} ]] || cp+=("$HADOOP_CONF_DIR")
    [[ -z ${SPARK_CLASSPATH:-} ]] || cp+=("$SPARK_CLASSPATH")
    cp+=("$SPARK_HOME/jars/*")
    [[ -z ${SPARK_DIST_CLASSPATH:-} ]] || cp+=("$SPARK_DIST_CLASSPATH")
    local IFS=:
    echo "${cp[*]}"
}

# SPARK_JAVA_OPT_<n>=<one JVM option> (spark.executor.defaultJavaOptions + extraJavaOptions, already
# split by Spark, and the -Dspark.* executor start-up confs), in the order of <n>.
java_opts_from_env() {
    local name
    while IFS= read -r name; do
        JAVA_OPTS+=("${!name}")
    done < <(compgen -e | sed -n 's/^SPARK_JAVA_OPT_\([0-9][0-9]*\)$/\1 &/p' | sort -n | cut -d' ' -f2)
}

require() {
    local name
    for name in "$@"; do
        [[ -n ${!name:-} ]] || die "executor: $name is not set (Spark's Kubernetes backend sets it on executor pods)"
    done
}

export SPARK_HOME
SPARK_HOME="$(spark_home)"
export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$(command -v python3)}"
export JAVA_HOME="${JAVA_HOME:-$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")}"

case "${1:-}" in
driver)
    shift
    bind=()
    if [[ -n ${SPARK_DRIVER_BIND_ADDRESS:-} ]]; then
        bind=(--conf "spark.driver.bindAddress=$SPARK_DRIVER_BIND_ADDRESS")
    else
        say "driver: SPARK_DRIVER_BIND_ADDRESS is not set (on Kubernetes it is the pod IP); Spark chooses"
    fi
    run "$SPARK_HOME/bin/spark-submit" --deploy-mode client "${bind[@]}" "$@"
    ;;
executor)
    shift
    [[ $# == 0 ]] || say "executor: ignoring arguments: $*"
    require SPARK_DRIVER_URL SPARK_EXECUTOR_ID SPARK_EXECUTOR_CORES SPARK_APPLICATION_ID SPARK_EXECUTOR_POD_IP
    if [[ -n ${SPARK_EXECUTOR_LIBRARY_PATH:-} ]]; then # spark.executor.extraLibraryPath
        export LD_LIBRARY_PATH="$SPARK_EXECUTOR_LIBRARY_PATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
    JAVA_OPTS=()
    java_opts_from_env
    if [[ -n ${SPARK_EXECUTOR_MEMORY:-} ]]; then
        JAVA_OPTS+=("-Xms$SPARK_EXECUTOR_MEMORY" "-Xmx$SPARK_EXECUTOR_MEMORY")
    fi
    args=(--driver-url "$SPARK_DRIVER_URL" --executor-id "$SPARK_EXECUTOR_ID"
        --cores "$SPARK_EXECUTOR_CORES" --app-id "$SPARK_APPLICATION_ID"
        --hostname "$SPARK_EXECUTOR_POD_IP" --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID:-0}")
    [[ -z ${SPARK_EXECUTOR_POD_NAME:-} ]] || args+=(--podName "$SPARK_EXECUTOR_POD_NAME")
    run "$JAVA_HOME/bin/java" "${JAVA_OPTS[@]}" -cp "$(executor_classpath)" \
        org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend "${args[@]}"
    ;;
"")
    die "no command (driver | executor | any command)"
    ;;
*)
    run "$@"
    ;;
esac
