"""Publishes one message with Eclipse Paho (paho-mqtt 2.x) over WebSocket,
as browser-side and Python fleets do, and exits 0 once it is acknowledged.

usage: paho_ws.py HOST PORT PATH VERSION QOS TOPIC MESSAGE [CAFILE]
VERSION is 3.1.1 or 5; with CAFILE the connection is WebSocket over TLS.
Exits 1 with a reason on stderr when refused or not acknowledged in 20 s.
"""

import sys
import threading

import paho.mqtt.client as mqtt


def main() -> int:
    host, port, path, version, qos, topic, message = sys.argv[1:8]
    cafile = sys.argv[8] if len(sys.argv) > 8 else None
    protocol = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"paho-ws-{version}",
        protocol=protocol,
        transport="websockets",
    )
    client.ws_set_options(path=path)
    if cafile:
        client.tls_set(ca_certs=cafile)
    connected = threading.Event()
    acknowledged = threading.Event()
    failure = []

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            failure.append(f"CONNACK {reason_code}")
        connected.set()

    def on_publish(client, userdata, mid, reason_code, properties):
        if reason_code.is_failure:
            failure.append(f"PUBACK {reason_code}")
        acknowledged.set()

    client.on_connect = on_connect
    client.on_publish = on_publish
    client.connect(host, int(port), keepalive=30)
    client.loop_start()
    try:
        if not connected.wait(20) or failure:
            print(f"not connected: {failure}", file=sys.stderr)
            return 1
        client.publish(topic, message, qos=int(qos))
        if not acknowledged.wait(20) or failure:
            print(f"not acknowledged: {failure}", file=sys.stderr)
            return 1
        client.disconnect()
        return 0
    finally:
        client.loop_stop()


if __name__ == "__main__":
    sys.exit(main())
