"""ONNX Runtime's TensorRT execution provider, emulated over the TensorRT emulator: NOT ONNX Runtime's EP.

Enough of it for the tests to catch what the EP's options decide (#24 items 2 and 3), as read from ONNX Runtime's
``tensorrt_execution_provider.cc`` and ``onnxruntime_inference_collection.py``: an unknown option is refused; the
model is parsed and built by the emulator with ``trt_fp16_enable`` / ``trt_int8_enable`` as builder flags (a Q/DQ
model without INT8 fails to build); ``trt_layer_norm_fp32_fallback`` sets precision and output type of a Pow
layer followed by a Reduce layer and no precision-constraints flag, so the emulator, as TensorRT documents, need
not honour it; node types in ``trt_op_types_to_exclude`` run on the CUDA EP in the file's own types; the FP16 plan
computes in FP16 arithmetic (the emulator's). A failed build is ONNX Runtime's fallback: its four lines printed on
stdout, the session created again on the CPU, ``get_providers()`` saying so.
"""

from __future__ import annotations

import onnxruntime as ort

import trt_emulator as trt

REAL_SESSION = ort.InferenceSession
TRT, CPU = "TensorrtExecutionProvider", "CPUExecutionProvider"
DEFAULT_EXCLUDED = "NonMaxSuppression,NonZero,RoiAlign"
OPTIONS = {  # ONNX Runtime's documented TensorRT EP options
    "device_id", "user_compute_stream", "has_user_compute_stream", "trt_max_workspace_size", "trt_min_subgraph_size",
    "trt_max_partition_iterations", "trt_fp16_enable", "trt_bf16_enable", "trt_int8_enable",
    "trt_int8_calibration_table_name", "trt_int8_use_native_calibration_table", "trt_dla_enable", "trt_dla_core",
    "trt_dump_subgraphs", "trt_engine_cache_enable", "trt_engine_cache_path", "trt_engine_cache_prefix",
    "trt_engine_decryption_enable", "trt_engine_decryption_lib_path", "trt_force_sequential_engine_build",
    "trt_context_memory_sharing_enable", "trt_layer_norm_fp32_fallback", "trt_timing_cache_enable",
    "trt_timing_cache_path", "trt_force_timing_cache", "trt_detailed_build_log", "trt_build_heuristics_enable",
    "trt_sparsity_enable", "trt_builder_optimization_level", "trt_auxiliary_streams", "trt_tactic_sources",
    "trt_extra_plugin_lib_paths", "trt_profile_min_shapes", "trt_profile_max_shapes", "trt_profile_opt_shapes",
    "trt_cuda_graph_enable", "trt_dump_ep_context_model", "trt_ep_context_file_path", "trt_ep_context_embed_mode",
    "trt_weight_stripped_engine_enable", "trt_onnx_model_folder_path", "trt_engine_hw_compatible",
    "trt_op_types_to_exclude",
}


def _on(value) -> bool:
    return str(value).lower() in ("1", "true")


def _shapes(text: str) -> dict[str, tuple[int, ...]]:
    """``lr:1x1x16x16`` (one profile) as ONNX Runtime parses it."""
    name, dims = text.rsplit(":", 1)
    return {name: tuple(int(d) for d in dims.split("x"))}


def _engine_graph(path: str, options: dict) -> bytes:
    """Parse and build as the EP does; the graph the emulated engine (plus the CUDA EP for excluded ops) computes."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(path):
        raise RuntimeError(f"[ONNXRuntimeError] : 1 : FAIL : TensorRT input: {parser.get_error(0).desc()}")
    config = builder.create_builder_config()
    fp16 = _on(options.get("trt_fp16_enable", False))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if _on(options.get("trt_int8_enable", False)):
        config.set_flag(trt.BuilderFlag.INT8)
    layers = network.layers
    if fp16 and _on(options.get("trt_layer_norm_fp32_fallback", False)):
        for layer, after in zip(layers[1:-1], layers[2:]):
            if layer.type == trt.LayerType.ELEMENTWISE and layer._op == "Pow" and after.type == trt.LayerType.REDUCE:
                for pinned in (layer, after):
                    pinned.precision = trt.float32
                    pinned.set_output_type(0, trt.float32)
    if "trt_profile_min_shapes" in options:
        profile = builder.create_optimization_profile()
        ranges = [_shapes(options[f"trt_profile_{k}_shapes"]) for k in ("min", "opt", "max")]
        for name in ranges[0]:
            profile.set_shape(name, *(r[name] for r in ranges))
        config.add_optimization_profile(profile)
    if builder.build_serialized_network(network, config) is None:
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : TensorRT EP failed to create engine from network.")
    if not fp16:
        return network.onnx_bytes
    excluded = set(str(options.get("trt_op_types_to_exclude", DEFAULT_EXCLUDED)).split(","))
    # the fallback's precisions count for nothing: ONNX Runtime sets no OBEY_/PREFER_PRECISION_CONSTRAINTS
    outside = [layer for layer in layers if layer._op in excluded]  # on the CUDA EP: the file's FP32 in and out
    for layer in outside:
        for k in range(layer.num_outputs):
            layer.set_output_type(k, trt.float32)
    return trt._fp16_arithmetic(network, {layer.name for layer in outside})


class InferenceSession:
    """``onnxruntime.InferenceSession`` with the TensorRT EP emulated where it is asked for."""

    def __init__(self, path_or_bytes, sess_options=None, providers=None, provider_options=None, **kwargs) -> None:
        given = [(p, {}) if isinstance(p, str) else tuple(p) for p in providers or [CPU]]
        names = [name for name, _ in given]
        self._providers = [CPU]
        if TRT not in names:
            self._session = REAL_SESSION(path_or_bytes, sess_options, providers=[CPU])
            return
        options = dict(given[names.index(TRT)][1])
        unknown = sorted(set(options) - OPTIONS)
        if unknown:
            raise RuntimeError(f'[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Unknown provider option: "{unknown[0]}".')
        try:
            self._session = REAL_SESSION(_engine_graph(str(path_or_bytes), options), sess_options, providers=[CPU])
            self._providers = [TRT, CPU]
        except RuntimeError as exc:  # as onnxruntime_inference_collection.py: on stdout, then the fallback
            print("*************** EP Error ***************")
            print(f"EP Error {exc} when using {names}")
            print(f"Falling back to {[CPU]} and retrying.")
            print("****************************************")
            self._session = REAL_SESSION(path_or_bytes, sess_options, providers=[CPU])

    def get_providers(self) -> list[str]:
        return list(self._providers)

    def __getattr__(self, name: str):
        return getattr(self._session, name)
