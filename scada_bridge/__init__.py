"""SCADA bridge: OPC UA and Modbus TCP servers fed from MQTT, for legacy SCADA and HMI systems.

Not built yet: it is its own issue ("SCADA bridge: OPC UA and Modbus TCP servers fed from MQTT,
with commands back"). It will subscribe to `predictions/#` and telemetry, which the stream path
already publishes.
"""
