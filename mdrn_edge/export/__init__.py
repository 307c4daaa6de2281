"""Export: a checkpoint (or an mdrn-edge FP32 ONNX, on a device without PyTorch) to every deployable format, each
checked on real MRI. ``export(source, output_dir, ExportConfig) -> list[Artifact]`` is the one entry point that
the CLI, the benchmarks and the tests call; importing this package needs neither torch nor TensorRT."""

from mdrn_edge.export.artifact import Artifact
from mdrn_edge.export.exporter import FORMATS, ExportConfig, export, summarize

__all__ = ["Artifact", "ExportConfig", "FORMATS", "export", "summarize"]
