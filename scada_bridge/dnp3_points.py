"""The DNP3 point list an outstation would serve, derived from the bridge's one point list.

No maintained Python DNP3 library installs on Python 3.11 (README, "SCADA bridge"), so the bridge
runs no outstation; this list keeps the mapping ready for one that does. Per asset slot (the Modbus
slot, so both protocols number assets alike): every telemetry and prediction point is an analog
input (group 30, variation 5: 32-bit float with flag) and every alert severity a binary input
(group 1, variation 2: with flags, set while alerts of that severity are open), with quality as the
ONLINE / COMM_LOST flags.
"""

from __future__ import annotations

from dataclasses import dataclass

from scada_bridge.points import POINTS, Point, PointGroup


@dataclass(frozen=True, slots=True)
class Dnp3Point:
    index: int  # the point index within its type, for asset slot 0; slot s adds s * points of that type
    group: int
    variation: int
    point: Point


def dnp3_points(points: tuple[Point, ...] = POINTS) -> list[Dnp3Point]:
    analog = [p for p in points if p.group != PointGroup.ALERTS]
    binary = [p for p in points if p.group == PointGroup.ALERTS]
    return [Dnp3Point(i, 30, 5, p) for i, p in enumerate(analog)] + [
        Dnp3Point(i, 1, 2, p) for i, p in enumerate(binary)
    ]


def format_dnp3_points(points: tuple[Point, ...] = POINTS) -> str:
    listed = dnp3_points(points)
    per_type = {group: sum(1 for d in listed if d.group == group) for group in (30, 1)}
    lines = [
        "# DNP3 point list of the SCADA bridge (ready; no outstation runs: see the README)",
        "",
        f"Asset slot `s` (the Modbus slot) adds `s * {per_type[30]}` to an analog input's index and "
        f"`s * {per_type[1]}` to a binary input's. Quality: ONLINE while values flow, COMM_LOST while the "
        "broker connection is down (the last value kept).",
        "",
        "| type | index | group / variation | point | unit | meaning |",
        "| --- | ---: | --- | --- | --- | --- |",
    ]
    for d in listed:
        kind = "analog input" if d.group == 30 else "binary input (open alerts)"
        point = d.point
        lines.append(
            f"| {kind} | {d.index} | g{d.group}v{d.variation} | `{point.key}` | {point.unit} | {point.description} |"
        )
    return "\n".join(lines) + "\n"
