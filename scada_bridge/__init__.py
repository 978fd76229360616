"""SCADA bridge: the live picture of the plant for legacy SCADA and HMI systems, fed from MQTT.

- `points`: the point list, derived from the telemetry contract: the one source of truth for the
  Modbus map, the OPC UA address space and a DNP3 point list.
- `state`: `BridgeState`, the latest value of every point per asset with source time and quality.
- `feed`: `BridgeFeed`, which keeps the state current from MQTT and the serving store.
- `commands`: `CommandSender`, commands from SCADA to assets, recorded and published as the API does.
- `modbus_map`, `compat`, `modbus_server`: the Modbus TCP register map (with the earlier bridge's
  compatibility block) and its pymodbus server.
- `cli`: `factory bridge`.

The OPC UA server and the `factory bridge` process are built on these (SCADA bridge issue, part 2).
"""
