"""Dagster sensors and the MQTT window collector they watch."""
