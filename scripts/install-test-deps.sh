#!/usr/bin/env bash
# Installs the MQTT clients the tests use, when they are missing: Debian's mosquitto-clients
# and openssl, and Python's paho-mqtt, pytest, pytest-timeout, PyYAML, argon2-cffi and bcrypt
# (the access suite makes password hashes and certificates of its own). For the CoAP suite:
# Debian's libcoap3-bin (coap-client-notls, coap-client-openssl) and Python's aiocoap. For
# the Kafka dispatch tests: Python's confluent-kafka (its wheel bundles librdkafka) and
# nats-py (NATS sink checks). For the operator e2e: Python's cryptography (opens the
# pre-shared keys the operator seals). And, when Debian has it,
# kcat (a manual check tool; a failure to install it only warns).
set -euo pipefail

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

need_apt=()
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
{ command -v coap-client-notls && command -v coap-client-openssl; } >/dev/null 2>&1 ||
  need_apt+=(libcoap3-bin)
if [ "${#need_apt[@]}" -gt 0 ]; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! command -v kcat >/dev/null 2>&1; then
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      $sudo apt-get install -y -qq kcat >/dev/null; } ||
    echo "warning: could not install kcat (optional; the Kafka tests use confluent-kafka)" >&2
fi

if ! python3 - <<'PY' 2>/dev/null
import importlib.metadata as m, sys
import pytest, pytest_timeout, yaml, argon2, bcrypt, confluent_kafka, nats, aiocoap, cryptography  # noqa: E401,F401
sys.exit(0 if int(m.version("paho-mqtt").split(".")[0]) >= 2 else 1)
PY
then
  python3 -m pip install -q "paho-mqtt>=2,<3" pytest pytest-timeout PyYAML argon2-cffi bcrypt \
    "confluent-kafka>=2.6,<3" "nats-py>=2.9,<3" "aiocoap>=0.4.17,<0.5" cryptography
fi
echo "test clients: $(mosquitto_pub --help 2>&1 | head -1); paho-mqtt $(python3 -c 'import importlib.metadata as m; print(m.version("paho-mqtt"))'); $(coap-client-notls -h 2>&1 | sed -n 2p | cut -d' ' -f1-2); aiocoap $(python3 -c 'import importlib.metadata as m; print(m.version("aiocoap"))')"
