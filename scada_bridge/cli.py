"""`factory bridge`: the SCADA bridge's command (registered in factory_pipelines/cli.py).

For now it prints the Modbus register map (`--print-register-map`); serving OPC UA and Modbus TCP
from this command comes with the bridge process (part 2 of the SCADA bridge issue).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from factory_pipelines.model_commands import settings_or_exit
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
) -> None:
    """Serve the live picture to SCADA and HMI systems over OPC UA and Modbus TCP, fed from MQTT."""
    settings = settings_or_exit()
    if not print_register_map:
        console.print(
            "[yellow]The bridge's servers are not wired into this command yet (SCADA bridge, part 2);[/yellow] "
            "`factory bridge --print-register-map` prints the Modbus register map."
        )
        raise typer.Exit(1)
    capacity = settings.bridge_max_assets
    try:
        slots = AssetSlots(capacity, default_slots_path(settings.data_path))
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    print(format_register_map(RegisterLayout.of(capacity, POINTS), slots), end="")
