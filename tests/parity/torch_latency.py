"""PyTorch CPU reference for `cargo bench -p qa-model --bench inference`: a question-answering
model (MiniLM-L6 with a span head, or any family AutoModelForQuestionAnswering loads), forward
pass, 2 threads, same shapes and token ids as the Rust benchmark (token types only where the
model has two).

    python tests/parity/torch_latency.py ../shared/models/all-MiniLM-L6-v2

Needs torch and transformers (CPU is enough). Prints the mean of 20 timed runs after 3 warm-ups,
then one JSON line {"torch": version, "bs1-seq128": ms, ...} for `cargo xtask bench`.

With onnxruntime (and onnx) installed, the same model also runs as ONNX in ONNX Runtime with all
graph optimisations, fp32 and after `quantize_dynamic` (int8 weights per channel, activations
quantized at run time): the line then has "ort": version, "ort-fp32" and "ort-int8" maps of the
same shapes, and "onnx-fp32-mb" / "onnx-int8-mb" file sizes.
"""

import json
import os
import sys
import tempfile
import time

import torch
from transformers import AutoConfig, AutoModelForQuestionAnswering


SHAPES = [(1, 128), (1, 384), (8, 384)]


def inputs_for(batch: int, seq: int, two_types: bool) -> dict:
    n = batch * seq
    ids = torch.tensor([1000 + (i * 7919 % 20000) for i in range(n)]).view(batch, seq)
    types = torch.tensor([int(i % seq >= seq // 4) for i in range(n)]).view(batch, seq)
    inputs = {"input_ids": ids, "attention_mask": torch.ones(batch, seq, dtype=torch.long)}
    if two_types:
        inputs["token_type_ids"] = types
    return inputs


def mean_ms(run) -> float:
    for _ in range(3):
        run()
    runs = 20
    start = time.perf_counter()
    for _ in range(runs):
        run()
    return (time.perf_counter() - start) / runs * 1000


def onnx_runtime(model, two_types: bool, results: dict) -> None:
    """ONNX Runtime fp32 and dynamic int8 on the exported model, 2 threads."""
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        print("onnxruntime is not installed: no ONNX Runtime figures", file=sys.stderr)
        return
    tmp = tempfile.mkdtemp()
    fp32, int8 = os.path.join(tmp, "model.onnx"), os.path.join(tmp, "model-int8.onnx")
    sample = inputs_for(1, 128, two_types)
    names = list(sample)
    torch.onnx.export(
        model, tuple(sample[k] for k in names), fp32, input_names=names,
        output_names=["start_logits", "end_logits"],
        dynamic_axes={k: {0: "batch", 1: "seq"} for k in names}, opset_version=17, dynamo=False,
    )
    quantize_dynamic(fp32, int8, per_channel=True, weight_type=QuantType.QInt8)
    results["ort"] = ort.__version__
    for name, path in [("ort-fp32", fp32), ("ort-int8", int8)]:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        results[name] = {}
        for batch, seq in SHAPES:
            feed = {k: v.numpy() for k, v in inputs_for(batch, seq, two_types).items()}
            ms = mean_ms(lambda: session.run(None, feed))
            print(f"{name} bs{batch}-seq{seq}: {ms:.1f} ms", file=sys.stderr)
            results[name][f"bs{batch}-seq{seq}"] = ms
        results[f"onnx-{name[4:]}-mb"] = os.path.getsize(path) / 2**20


def main(model_dir: str) -> None:
    torch.set_num_threads(2)
    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForQuestionAnswering.from_pretrained(model_dir, dtype=torch.float32).eval()
    two_types = getattr(config, "type_vocab_size", 0) > 1
    results = {"torch": torch.__version__}
    for batch, seq in SHAPES:
        inputs = inputs_for(batch, seq, two_types)
        with torch.inference_mode():
            ms = mean_ms(lambda: model(**inputs))
        print(f"bs{batch}-seq{seq}: {ms:.1f} ms", file=sys.stderr)
        results[f"bs{batch}-seq{seq}"] = ms
    onnx_runtime(model, two_types, results)
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
