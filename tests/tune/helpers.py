"""Constants shared by the search tests (imported by name: conftest modules are not)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Tiny trials: 64 px, a thin neck, 8 synthetic images, batch 4 without accumulation.
TINY = {
    "imgsz": 64,
    "neck_channels": 16,
    "synthetic_images": 8,
    "batch": 4,
    "accumulate": 1,
    "warmup_epochs": 1.0,
}


def read_events(folder: Path) -> tuple[dict[str, list[tuple[int, float]]], int]:
    """The TensorBoard event files in ``folder``: ({tag: [(step, value)]}, hparams summaries).

    Read with tensorboardX's protobufs (TensorBoard itself need not be installed): each record
    is a little-endian u64 length, a u32 CRC, the Event bytes and a u32 CRC.
    """
    import struct

    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    hparams = 0
    for path in sorted(folder.glob("events.out.tfevents*")):
        data, i = path.read_bytes(), 0
        while i + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12 : i + 12 + n])
            i += 12 + n + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
                elif value.metadata.plugin_data.plugin_name == "hparams":
                    hparams += 1
    return scalars, hparams
