"""`factory bridge`: the SCADA bridge's command (registered in factory_pipelines/cli.py).

Runs the bridge (Modbus TCP and OPC UA fed from MQTT) until Ctrl-C, or prints the Modbus register
map (`--print-register-map`).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from factory_pipelines.model_commands import settings_or_exit
from scada_bridge.dnp3_points import format_dnp3_points
from scada_bridge.modbus_map import AssetSlots, RegisterLayout, default_slots_path, format_register_map
from scada_bridge.points import POINTS

console = Console(stderr=True)


def bridge(
    print_register_map: Annotated[
        bool,
        typer.Option(
            "--print-register-map",
            help="Print the Modbus register map as Markdown (with the asset slots assigned so far) and exit.",
        ),
    ] = False,
    print_dnp3_points: Annotated[
        bool, typer.Option("--print-dnp3-points", help="Print the DNP3 point list (ready for an outstation) and exit.")
    ] = False,
) -> None:
    """Serve the live picture to SCADA and HMI systems over OPC UA and Modbus TCP, fed from MQTT."""
    if print_dnp3_points:
        print(format_dnp3_points(), end="")
        return
    settings = settings_or_exit()
    if not print_register_map:
        from scada_bridge.process import run_bridge

        def ready(endpoints: list[str]) -> None:
            console.print("SCADA bridge serving (Ctrl-C stops it):")
            for endpoint in endpoints:
                console.print(f"  {endpoint}")

        try:
            run_bridge(settings, on_ready=ready)
        except (OSError, ValueError) as exc:  # a port in use, a bad users setting: one line, not a traceback
            console.print(f"[red]bridge: {exc}[/red]")
            raise typer.Exit(1) from exc
        return
    capacity = settings.bridge_max_assets
    try:
        slots = AssetSlots(capacity, default_slots_path(settings.data_path))
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    print(format_register_map(RegisterLayout.of(capacity, POINTS), slots), end="")
