"""`onnx-attr`: a thin command line over the Python API.

Only argparse and the error classes are imported up front; torch, onnx and the package's heavy
modules are imported inside the commands, so `--help`, `--version` and usage errors answer at
once (`python benchmarks/startup.py` measures it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import warnings
from typing import Any, Callable, Optional, Sequence

from onnx_attr import __version__
from onnx_attr.app.allocator import keep_freed_memory
from onnx_attr.errors import OUT_OF_MEMORY_ADVICE, InputError, OnnxAttrError, is_out_of_memory
from onnx_attr.methods.registry import cli_methods, dataset_methods

EXIT_OK, EXIT_VERIFY_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_SOME_FAILED = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a tool whose reader went away

EXIT_CODES = """exit codes:
  0    success
  1    verification against onnxruntime failed (for attribute: on the output explained, or onnxruntime could not
       run the file: the attributions are written, report.json's verify says why), or attributions came
       out not finite (written all the same, with the node where a NaN or infinity first appears); with
       --strict, also a convergence delta above tolerance
  2    bad input or usage (the message on stderr says what to fix)
  3    internal error in onnx-attr (rerun with --debug for the traceback, and please report it)
  4    a folder run finished, but some inputs failed (each listed with its error in index.json)
  130  interrupted
  141  stdout closed before the output was written (piped into head, say)"""

METHOD_CHOICES = cli_methods()
DATASET_METHOD_CHOICES = dataset_methods()
#: `--lrp-rule` / `--lrp-composite` choices (onnx_attr.deeplift.rules.lrp's RULE_NAMES / COMPOSITES; kept here
#: so that usage errors answer without importing torch; a test checks they agree)
LRP_RULES = ("epsilon", "zero", "gamma", "alpha1beta0", "alpha2beta1", "z_plus", "z_B", "flat", "identity")
LRP_COMPOSITES = ("epsilon", "epsilon_gamma_box", "epsilon_plus", "epsilon_plus_flat", "epsilon_alpha2_beta1",
                  "epsilon_alpha2_beta1_flat")


# -- argument types: each refuses a bad value at parse time, naming the option --------------------------------------

def _number(text: str, kind: type, valid, requirement: str):
    """`text` as a `kind`, or an argparse error that says what the option takes."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if (kind is float and not math.isfinite(value)) or not valid(value):
        raise argparse.ArgumentTypeError(f"{text!r}: {requirement}")
    return value


def _non_negative_float(text: str) -> float:
    return _number(text, float, lambda v: v >= 0, "a tolerance must be a finite number >= 0")


def _positive_float(text: str) -> float:
    return _number(text, float, lambda v: v > 0, "give a finite number > 0")


def _non_negative_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def _positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "give an integer >= 1")


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated list of names (ONNX input names)."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("give one or more input names, separated by commas")
    return names


def _device(text: str) -> str:
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"{text!r}: use cpu, cuda or cuda:N")
    return text


# -- the parser ------------------------------------------------------------------------------------------------------

def _common() -> argparse.ArgumentParser:
    """Options every subcommand takes, before or after the subcommand's name."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks of internal errors")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars (they show only on a terminal anyway)")
    return common


def _model_options(p: argparse.ArgumentParser, final_activation: str = "strip") -> None:
    p.add_argument("model", help="path to the .onnx file")
    if final_activation == "strip":
        p.add_argument("--keep-final-activation", action="store_true",
                       help="keep a final Softmax/LogSoftmax/Sigmoid (default: strip it and use logits)")
    else:
        p.add_argument("--strip-final-activation", action="store_true",
                       help="strip a final Softmax/LogSoftmax/Sigmoid, so the program returns logits "
                            "(default: keep it; the program computes what the .onnx file computes)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--budget", action="append", default=[], metavar="NAME=N",
                   help="raise (or lower) a resource limit, e.g. max_elements=1073741824; repeatable; "
                        "see onnx_attr.Budget for the names and defaults")


def _input_option(p: argparse.ArgumentParser, required: bool, text: str) -> None:
    p.add_argument("-i", "--input", required=required, help=text)


def _input_format_options(p: argparse.ArgumentParser) -> None:
    """How tables, images and text become model inputs (`attribute` and `dataset` alike)."""
    p.add_argument("--columns", help="CSV/Parquet: comma-separated feature columns of a one-input model (default: "
                                     "columns named after the inputs, else one per input in order, else every column)")
    images = p.add_argument_group("image files (PNG/JPEG; defaults from the model's input shape where it is static)")
    images.add_argument("--preprocessing", metavar="FILE", help="a JSON object of the settings below (size, resize, "
                        "layout, channels, scale, mean, std, dtype, resample); options given here override it")
    images.add_argument("--image-size", metavar="HxW", help="height x width fed to the model (one number: a square; default: the model's, and where it fixes one side only, that side with the aspect kept)")
    images.add_argument("--resize", type=_positive_int, metavar="N",
                        help="resize the shorter side to N, then centre-crop to --image-size (default: resize straight "
                             "to --image-size)")
    images.add_argument("--layout", choices=("NCHW", "NHWC", "NHW"),
                        help="the input's layout (default: from its shape)")
    images.add_argument("--channels", choices=("RGB", "BGR", "L"), help="channel order, or L for grey (default: RGB, "
                                                                        "or L for one channel)")
    images.add_argument("--scale", metavar="S", help="multiply pixels by S first, e.g. 1/255 (default 1)")
    images.add_argument("--mean", metavar="M[,M,M]", help="subtract per channel after --scale, e.g. 0.485,0.456,0.406")
    images.add_argument("--std", metavar="S[,S,S]", help="then divide per channel, e.g. 0.229,0.224,0.225")
    images.add_argument("--resample", choices=("bilinear", "bicubic", "nearest", "lanczos"),
                        help="resize filter (default bilinear, as torchvision's Resize)")
    images.add_argument("--image-input", metavar="NAME", help="the model input images feed (default: its one input of "
                                                              "rank 3 or 4)")
    audio = p.add_argument_group("audio files (.wav of integer PCM; FLAC, Ogg, float WAV and others with pip install "
                                 "'onnx-attr[audio]'): one example per file, samples in [-1, 1], channels mixed to one "
                                 "unless the model takes more; a sample-rate input (sr) gets the file's rate, a state the "
                                 "model feeds back starts at zeros")
    audio.add_argument("--sample-rate", type=_positive_int, metavar="HZ",
                       help="the rate the model takes: a file at another rate is refused (nothing is resampled)")
    audio.add_argument("--audio-scale", metavar="S", help="multiply the samples by S, e.g. 32768 for a model that takes "
                                                          "int16-range values (default 1)")
    audio.add_argument("--audio-input", metavar="NAME", help="the model input audio feeds (default: its one floating "
                                                             "input of rank 1 to 3 that is not a state)")
    text = p.add_argument_group("text files (.txt, one example per line; pip install 'onnx-attr[text]')")
    text.add_argument("--tokenizer", metavar="FILE", help="the model's tokenizer.json (tokenizers library; nothing is "
                                                          "downloaded)")
    text.add_argument("--max-length", type=_positive_int, metavar="N",
                      help="pad and truncate to N tokens (default: the model's fixed length, else the longest line)")


def _input_options(args):
    """The `InputOptions` of the command line, checked before the model loads."""
    from onnx_attr.app.audio_inputs import AudioPreprocessing
    from onnx_attr.app.preprocess import image_preprocessing, parse_numbers, parse_size
    from onnx_attr.app.readers import InputOptions
    from onnx_attr.app.text_inputs import text_preprocessing

    scale = parse_numbers(args.scale, "--scale") if args.scale is not None else None
    if scale is not None and len(scale) != 1:
        raise InputError(f"--scale {args.scale!r}: give one number, e.g. 1/255")
    image = image_preprocessing(
        args.preprocessing, size=parse_size(args.image_size) if args.image_size else None, resize=args.resize,
        layout=args.layout, channels=args.channels, scale=scale[0] if scale else None,
        mean=parse_numbers(args.mean, "--mean") if args.mean else None,
        std=parse_numbers(args.std, "--std") if args.std else None, resample=args.resample)
    audio_scale = parse_numbers(args.audio_scale, "--audio-scale") if args.audio_scale is not None else [1.0]
    if len(audio_scale) != 1:
        raise InputError(f"--audio-scale {args.audio_scale!r}: give one number, e.g. 32768")
    audio = AudioPreprocessing(rate=args.sample_rate, scale=audio_scale[0], input=args.audio_input)
    return InputOptions(columns=tuple(args.columns.split(",")) if args.columns else None, image=image,
                        image_input=args.image_input, text=text_preprocessing(args.tokenizer, args.max_length),
                        audio=audio)


def _picture_options(p: argparse.ArgumentParser) -> None:
    pictures = p.add_mutually_exclusive_group()
    pictures.add_argument("--no-pictures", action="store_true", help="write no pictures, not even image heatmaps")
    pictures.add_argument("--plot", action="store_true",
                          help="pictures for every attributed input: bar charts for tabular features and HTML for "
                               "token ids, besides the image heatmaps written anyway")
    p.add_argument("--clip-percentile", type=float, default=2.0, metavar="P",
                   help="the percent of largest |attributions| drawn at full colour (default 2, as Captum; "
                        "0 scales colours to the largest)")
    p.add_argument("--class-names", metavar="FILE", help="names of the output classes for picture titles: a JSON "
                   "list, a JSON object of index -> name, or one name per line")
    p.add_argument("--feature-names", metavar="FILE", help="names for the bar charts: a JSON list (or an object "
                   "with 'feature_names'), or a text file with one name per line")
    p.add_argument("--vocab", metavar="FILE", help="the tokens of token ids for token pages: a JSON list, a "
                   "vocab.json (token -> id), or one token per line (line i is id i, as vocab.txt)")


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(prog="onnx-attr", description="Explain exported ONNX models.",
                                     epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"onnx-attr {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str, run: Callable) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text, parents=[common], epilog=EXIT_CODES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(run=run)
        return p

    p = command("inspect", "inputs, outputs, opsets, op counts, final activation, nonlinear nodes and the tensor "
                           "names the layer methods take", cmd_inspect)
    _model_options(p)

    p = command("verify", "compare the imported module with onnxruntime", cmd_verify)
    _model_options(p)
    _input_option(p, False, ".npz of inputs keyed by ONNX input name, or one file of the kinds `attribute` reads "
                            "(an image, an audio clip, a CSV/Parquet table, text lines; default: a random sample)")
    _input_format_options(p)
    p.add_argument("--atol", type=_non_negative_float, default=1e-4, help="absolute tolerance (default 1e-4)")
    p.add_argument("--rtol", type=_non_negative_float, default=1e-4, help="relative tolerance (default 1e-4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random sample when no --input is given")

    p = command("convert", "save the imported module as a torch.export program (.pt2) that computes what the "
                           ".onnx file computes", cmd_convert)
    _model_options(p, final_activation="keep")
    p.add_argument("-o", "--out", "--output", dest="out", required=True, help="where to write the .pt2 file")
    _input_option(p, False, ".npz of example inputs to trace with, or one file of the kinds `attribute` reads "
                            "(default: a random sample)")
    _input_format_options(p)

    p = command("attribute", "attribute an output to the input features", cmd_attribute)
    _model_options(p)
    _input_option(p, True, ".npz of inputs keyed by ONNX input name, a CSV/Parquet table (a row per example), "
                           "an image (PNG/JPEG) or a text file (a line per example), or a folder / glob of them "
                           "(one result folder each, named after the input file)")
    p.add_argument("-o", "--out", required=True, help="folder for attributions.npz, report.json and pictures")
    p.add_argument("--resume", action="store_true",
                   help="keep results already finished with the same settings; refuse if results in --out were made "
                        "with other settings (model, method, target, baseline, options, versions)")
    p.add_argument("--target", help="what to explain: top (the predicted class / top pixel), region or region>T "
                                    "(a map's summed score over T), greedy (a sequence's argmax path), anchor (a "
                                    "detector's top anchor), segment or segment=K (class maps [N, C, H, W]: a "
                                    "class's score over its predicted pixels), embedding (an embedding's length along "
                                    "its own direction), an int (negative counts from the end, e.g. --target=-1), "
                                    "one per example (3,1,4), or t,c / a:b for outputs of rank > 2 (default: by the "
                                    "output's layout; report.json says which)")
    p.add_argument("--batch-axis", type=int, metavar="K",
                   help="the explained output's batch axis, e.g. 1 for a time-major [T, N, C] output (default: the "
                        "axis sharing the inputs' batch symbol, else the one with one row per example)")
    p.add_argument("--baseline", help="auto (default: zeros, or each example blurred where the model's output is not "
                                      "finite at zeros), zeros, mean, blur, missing (NaN where the model reads it as a "
                                      "missing value: what knowing each value did), or an .npz of baselines "
                                      "(deepliftshap: required, a distribution of rows, e.g. --baseline bg.npz)")
    p.add_argument("--hold", type=_names, default=(), metavar="NAME[,NAME]",
                   help="inputs fed as given and not attributed, e.g. a recurrent state or a graph's node features "
                        "beside the ones explained (0-d settings and integer inputs that feed no lookup always are; "
                        "so are floating inputs named as masks, e.g. an additive attention_mask, beside others)")
    p.add_argument("--unhold", type=_names, default=(), metavar="NAME[,NAME]",
                   help="floating masks attributed, not held as given (see --hold)")
    p.add_argument("--method", choices=METHOD_CHOICES,
                   help="attribution method (default: deeplift; where DeepLift has no exact rule for the model, "
                        "integer-only quantized ops or steps alone, featureablation over at most 256 blocks "
                        "per input, fewer where their passes would take over a minute, said on stderr and in "
                        "report.json)")
    p.add_argument("--layer", help="layer and neuron methods: the ONNX tensor to attribute at (`inspect --json` lists "
                                   "them); a neuron method explains the element of it that --target picks")
    p.add_argument("--batch-size", type=_positive_int,
                   help="examples per pass (default 16): memory stays flat and progress shows")
    _method_tuning_options(p)
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when an attribution's convergence delta is above tolerance (default: a warning)")
    p.add_argument("--output-name", help="ONNX output name or index to explain (default: the first floating one, "
                                         "but scores before boxes and an output named logits before features)")
    p.add_argument("--device", type=_device, default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--smooth", type=_positive_float, metavar="BETA",
                   help="explain a smoothed twin: every Relu a Softplus(BETA), every MaxPool a log-sum-exp pooling "
                        "(the report gives the change in the outputs; verification is of the original)")
    _input_format_options(p)
    _picture_options(p)
    _dataset_command(command("dataset", "attribute every row of a dataset (.npz / CSV / Parquet / image / text files) "
                                        "into Parquet "
                                        "shards, each row exactly once; --engine local (default) or ray",
                             cmd_dataset))
    p = command("report", "rebuild the HTML report (report.html) of a dataset run from its Parquet shards", cmd_report)
    p.add_argument("results", help="the --out folder of `onnx-attr dataset`")
    _report_options(p)
    return parser


def _report_options(p: argparse.ArgumentParser) -> None:
    """The dataset run report's size: what `dataset` writes at the end and `report` rebuilds."""
    p.add_argument("--gallery-rows", type=_non_negative_int, default=500, metavar="N",
                   help="report.html: rows in the gallery at most (default 500: the largest relative deltas, then "
                        "every k-th row)")
    p.add_argument("--pictures", type=_non_negative_int, default=24, metavar="N",
                   help="report.html: full pictures drawn into report_files/ (default 24)")


def _method_tuning_options(p: argparse.ArgumentParser) -> None:
    """What `attribute` and `dataset` both pass to the method (the registry's CLI_OPTIONS)."""
    p.add_argument("--n-steps", type=_positive_int,
                   help="path methods (integratedgradients, its layer/neuron forms, conductance, internalinfluence): "
                        "integration steps (default 50)")
    p.add_argument("--internal-batch-size", type=_positive_int,
                   help="path methods: rows per forward/backward pass (default: all steps at once)")
    p.add_argument("--features", metavar="N|all",
                   help="featureablation, shapleyvaluesampling, kernelshap, lime, featurepermutation: an input of more "
                        "than N elements per example is cut into at most N contiguous blocks, square patches of an "
                        "image (default 256); all: one feature per element, as Captum (a forward pass or more each)")
    p.add_argument("--gradient-fallback", action="store_true",
                   help="let nonlinear ops without an exact rule use their gradient (warns; breaks completeness)")
    p.add_argument("--lrp-rule", choices=LRP_RULES,
                   help="lrp: the rule of every Conv/Gemm/MatMul (default epsilon; other linear ops take epsilon)")
    p.add_argument("--lrp-composite", choices=LRP_COMPOSITES,
                   help="lrp: rules per layer kind, as zennit's composites (e.g. epsilon_gamma_box: z_B on the first "
                        "layer, gamma on convolutions, epsilon on dense layers)")
    p.add_argument("--lrp-bounds", metavar="LOW,HIGH",
                   help="lrp: the input's bounds for the z_B rule (e.g. 0,255 for raw pixels)")


def _dataset_command(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="path to the .onnx file")
    p.add_argument("--keep-final-activation", action="store_true",
                   help="keep a final Softmax/LogSoftmax/Sigmoid (default: strip it and use logits)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    _input_option(p, True, "an .npz (rows along axis 0), .csv, .parquet or .txt file (a row per line), or a folder "
                           "/ glob of them; image files (PNG/JPEG, also in subfolders) are a row each")
    p.add_argument("-o", "--out", required=True, help="folder for manifest.json, summary.json and the Parquet shards")
    p.add_argument("--method", choices=DATASET_METHOD_CHOICES,
                   help="attribution method (default: deeplift; where DeepLift has no exact rule for the model, "
                        "featureablation over at most 256 blocks per input, without attribute's time budget: "
                        "every shard is cut alike)")
    p.add_argument("--target", help="what to explain in every row, as for `attribute`: top, region, region>T, greedy, "
                                    "anchor, segment, segment=K, an int, or t,c / a:b (default: by the output's layout)")
    p.add_argument("--batch-axis", type=int, metavar="K", help="the explained output's batch axis (as for `attribute`)")
    p.add_argument("--baseline", help="auto (default: zeros, or each row blurred where the model's output is not "
                                      "finite at zeros), zeros, blur, mean (of the whole dataset, from a first pass), "
                                      "missing (as for `attribute`) or an .npz of baseline rows (deepliftshap: "
                                      "required)")
    p.add_argument("--output-name", help="ONNX output name or index to explain (default: the first floating one, "
                                         "but scores before boxes and an output named logits before features)")
    p.add_argument("--resume", action="store_true",
                   help="skip shards already committed with the same settings; refuse if --out holds a run with other "
                        "settings (model, method, target, baseline, preprocessing, sources, versions)")
    p.add_argument("--overwrite", action="store_true", help="recompute into an --out that holds an earlier run")
    p.add_argument("--shard-rows", type=_positive_int, default=1024, help="rows per committed shard (default 1024)")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="rows per attribution pass (default 64)")
    p.add_argument("--attribution-dtype", choices=("float32", "float16"), default="float32",
                   help="dtype of the attributions column (default float32)")
    _method_tuning_options(p)
    p.add_argument("--device", type=_device, default="cpu", help="cpu (default), cuda or cuda:N, on every worker")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local (default): in-process streaming, no cluster; ray: Ray Data workers (pip install "
                        "'onnx-attr[ray]'), embedded unless --address joins a cluster")
    p.add_argument("--address", help="ray: address of a running Ray cluster (e.g. ray://head:10001 or auto)")
    p.add_argument("--workers", type=_positive_int, help="ray: worker actors (default: as many as the resources allow)")
    p.add_argument("--cpus-per-worker", type=_positive_float, default=1.0, help="ray: CPUs per worker (default 1)")
    p.add_argument("--gpus-per-worker", type=_non_negative_float, default=0.0, help="ray: GPUs per worker (default 0)")
    p.add_argument("--no-report", action="store_true", help="write no report.html (build it later with `onnx-attr report`)")
    _report_options(p)
    _input_format_options(p)


# -- the commands ----------------------------------------------------------------------------------------------------

def _load(args, strip: Optional[bool] = None):
    from onnx_attr.importing.budget import Budget
    from onnx_attr.importing.loader import load

    if strip is None:
        strip = not getattr(args, "keep_final_activation", False)
    return load(args.model, strip_final_activation=strip, device=getattr(args, "device", None),
                budget=Budget.parse(getattr(args, "budget", None) or []))


def _inputs(args, model):
    """The inputs of `verify` and `convert`: an .npz as it is, any other file as `attribute` reads it."""
    from onnx_attr.app.readers import read_inputs

    return None if args.input is None else read_inputs(args.input, model, _input_options(args))


def _emit(args, data: dict, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def tensor_table(model) -> list[dict]:
    """Every tensor a node produces: the names `LayerDeepLift`/`tensor_as_output` take, with the
    node, op, DeepLift kind and (inferred) shape."""
    from onnx_attr.deeplift.opkinds import node_kinds
    from onnx_attr.importing import isolated
    from onnx_attr.importing.normalize import _dims_only
    from onnx_attr.importing.read import skeleton

    try:  # on the weights' dims only, in a child process where possible (importing/isolated.py)
        inferred = isolated.infer_shapes(skeleton(model.onnx_model, _dims_only)[0])
    except Exception:  # shape inference is a courtesy here: without it, shapes are unknown
        inferred = model.onnx_model
    shapes: dict[str, list] = {}
    for info in [*inferred.graph.value_info, *inferred.graph.output]:
        tensor = info.type.tensor_type
        if tensor.HasField("shape"):
            shapes[info.name] = [d.dim_param or (d.dim_value if d.HasField("dim_value") else None)
                                 for d in tensor.shape.dim]
    return [{"tensor": name, "node": node.name or f"{node.op_type}#{i}", "op": node.op_type, "kind": kind,
             "shape": shapes.get(name)}
            for i, (node, kind) in enumerate(node_kinds(model.onnx_model)) for name in node.output if name]


def cmd_inspect(args) -> int:
    from onnx_attr.deeplift.opkinds import nonlinear_nodes

    model = _load(args)
    info = {**model.summary(), "nonlinear_nodes": nonlinear_nodes(model.onnx_model)}
    tensors = tensor_table(model)
    produced = {}
    for row in tensors:
        produced.setdefault(row["node"], []).append(row["tensor"])
    for entry in info["nonlinear_nodes"]:
        entry["tensors"] = produced.get(entry["node"], [])
    info["tensors"] = tensors
    lines = [f"model: {args.model}", f"producer: {info['producer'] or '?'}; IR {info['ir_version']}; opsets: "
             + ", ".join(f"{d} {v}" + (f" (the file's {info['file_opsets'][d]})" if info["file_opsets"].get(d, v) != v
                                        else "") for d, v in info["opsets"].items())]
    lines.append("inputs:")
    from onnx_attr.deeplift.layers import embedding_lookups

    looked_up = embedding_lookups(model)
    lines += [f"  {s.describe()}  ({_batch_text(d['batch_axis'])})" + (
        "" if s.differentiable else f"  ({_tapped_as(model, looked_up[s.name])} {', '.join(looked_up[s.name])})"
        if s.name in looked_up else "  (not differentiable)") + (
        "  (NaN read as a missing value: rows with gaps are explained)" if d["reads_nan_as_missing"] else "") + (
        "  (" + ", ".join(f"axis {k} must be {v}" for k, v in d["fixed_by_weights"].items())
        + ": the weight that reads it fixes it)" if d.get("fixed_by_weights") else "")
        for s, d in zip(model.inputs, info["inputs"])]
    lines.append("outputs:")
    for s, d in zip(model.outputs, info["outputs"]):
        batch = "0-d: one example's value" if s.shape == () or s.shape == [] else \
            "no batch axis: one example's" if d["batch_axis"] is None else _batch_text(d["batch_axis"])
        lines.append(f"  {s.describe()}  ({batch}, as declared)")
        lines.append(f"    final activation: {s.final_activation.describe() if s.final_activation else 'none found'}")
        if getattr(s, "role", None):
            lines.append(f"    role: {s.role}")
    lines.append("ops: " + ", ".join(f"{op} x{n}" for op, n in info["op_counts"].items()))
    nonlinear = info["nonlinear_nodes"]
    lines.append(f"nonlinear nodes ({len(nonlinear)}), with the tensor each produces:")
    lines += [f"  {n['node']} ({n['op']}, {n['kind']}) -> {', '.join(n['tensors'])}" for n in nonlinear[:50]]
    if len(nonlinear) > 50:
        lines.append(f"  ... and {len(nonlinear) - 50} more (see --json)")
    lines.append(f"tensors: {len(tensors)} (names, nodes, shapes and kinds in --json)")
    lines += [f"note: {n}" for n in model.notes]
    _emit(args, info, "\n".join(lines))
    return EXIT_OK


def _batch_text(axis) -> str:
    return "no batch: held at its value" if axis is None else f"batch on axis {axis}"


def cmd_verify(args) -> int:
    model = _load(args)
    report = model.verify(_inputs(args, model), atol=args.atol, rtol=args.rtol, seed=args.seed)
    report.notes.extend(model.notes)
    _emit(args, report.to_dict(), report.format())
    return EXIT_OK if report.passed else EXIT_VERIFY_FAILED


def _same_file(a: str, b: str) -> bool:
    import os

    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def cmd_convert(args) -> int:
    from onnx_attr.app.export import save_program

    if _same_file(args.model, args.out):
        raise InputError(f"-o {args.out!r} is the model itself; convert writes a .pt2 program and never replaces "
                         "its input: give another path, e.g. model.pt2")
    model = _load(args, strip=args.strip_final_activation)
    notes = save_program(model, args.out, _inputs(args, model), final_activation="as-loaded")
    notes += [f"output {s.name!r}: final {s.final_activation.op_type} kept, so the program computes what the .onnx "
              "file computes (--strip-final-activation exports logits)"
              for s in model.outputs if s.final_activation is not None and not s.final_activation.stripped]
    text = "\n".join([f"wrote {args.out}; load it with torch.export.load({args.out!r}).module()",
                      *(f"note: {n}" for n in (*model.notes, *notes))])
    _emit(args, {"output": args.out, "notes": [*model.notes, *notes]}, text)
    return EXIT_OK


def _lrp_options(args) -> dict:
    """The --lrp-* options given (None where not)."""
    return {"rule": args.lrp_rule, "composite": args.lrp_composite, "bounds": args.lrp_bounds}


def cmd_attribute(args) -> int:
    from onnx_attr.app.attribute_job import method_options, resolve_baseline_spec, run_attribute
    from onnx_attr.app.target_forms import parse_form
    from onnx_attr.app.names import read_feature_names, read_names
    from onnx_attr.app.visualize import PictureOptions, check_clip_percentile

    # no --method: DeepLift, or where it refuses the model, the fallback (attribute_job.AUTO_FALLBACK)
    auto = args.method is None
    args.method = args.method or "deeplift"
    # checked before the model loads, so that a usage error answers at once
    resolve_baseline_spec(args.baseline, args.method)
    method_options(args.method, args.n_steps, args.internal_batch_size, _lrp_options(args), args.features)
    inputs = _input_options(args)
    if args.target is not None:
        parse_form(args.target)
    pictures = PictureOptions(enabled=not args.no_pictures, all_kinds=args.plot,
                              clip_percentile=check_clip_percentile(args.clip_percentile),
                              class_names=read_names(args.class_names, "--class-names", "class_names"),
                              vocab=read_names(args.vocab, "--vocab", "vocab"),
                              feature_names=read_feature_names(args.feature_names))
    model = _load(args)
    if pictures.class_names is None:  # names the exporter wrote into the output's name (openWakeWord's)
        from dataclasses import replace

        from onnx_attr.app.names import names_in_graph, names_in_output_name
        from onnx_attr.methods.base import output_index

        try:
            named = names_in_output_name(model.outputs[output_index(model, args.output_name)].name)
        except (OnnxAttrError, IndexError, ValueError):  # an unknown --output-name: the job says so
            named = None
        named = named or names_in_graph(model.onnx_model)  # a scikit-learn classifier's own labels
        pictures = replace(pictures, class_names=named) if named else pictures
    options: dict[str, Any] = {}
    if args.smooth is not None:
        from onnx_attr.deeplift.smooth import smooth

        model = smooth(model, relu_beta=args.smooth, maxpool_beta=args.smooth, measure=False)  # on each input (the job)
        options["smooth_beta"] = args.smooth
        left = model.smoothing.get("not_smoothed")
        if left:  # a ReLU6 is a Clip: said, as the run explains a twin smooth only where it replaced something
            print(f"onnx-attr: --smooth replaced {len(model.smoothing['replaced'])} node(s); these keep their kinks: "
                  + ", ".join(f"{n} {op}" for op, n in left.items()), file=sys.stderr)
    report = run_attribute(model, input_path=args.input, target=args.target, baseline=args.baseline,
                           method=args.method, output_name=args.output_name, out=args.out,
                           gradient_fallback=args.gradient_fallback, resume=args.resume, pictures=pictures,
                           batch_size=args.batch_size, n_steps=args.n_steps,
                           internal_batch_size=args.internal_batch_size, options=options, inputs=inputs,
                           quiet=getattr(args, "quiet", False), lrp=_lrp_options(args), layer=args.layer,
                           batch_axis=args.batch_axis, auto_fallback=auto, hold=args.hold, features=args.features,
                           unhold=args.unhold)
    import numpy as np

    delta = np.abs(np.asarray(report.pop("_delta"), dtype=np.float64))
    worst = float(delta.max(initial=0.0))
    if report.get("many"):
        text = (f"{report['method']}: {len(report['computed'])} input(s) attributed, "
                f"{len(report['skipped_as_finished'])} finished earlier, {len(report['failed'])} failed; "
                f"largest |delta| {worst:.3e}, largest relative {report.get('max_relative_delta', 0.0):.3e}; results in "
                f"{args.out}/<input file>/, summary in {args.out}/index.json")
        lines = [text] + [f"failed: {name}: {report['results'][name]['error'].splitlines()[0]}"
                          for name in report["failed"][:5]]
        if len(report["failed"]) > 5:
            lines.append(f"... and {len(report['failed']) - 5} more failed (see index.json)")
        _emit(args, report, "\n".join(lines))
        if report["failed"]:
            return EXIT_SOME_FAILED
        if report["non_finite"]:
            return EXIT_VERIFY_FAILED
        return EXIT_VERIFY_FAILED if args.strict and report["with_warnings"] else EXIT_OK
    _emit(args, report, _attribution_summary(report, args.out, worst))
    if report.get("non_finite") or (args.strict and report.get("warnings")):
        return EXIT_VERIFY_FAILED
    return EXIT_OK if _explained_output_verified(report) else EXIT_VERIFY_FAILED


def _explained_output_verified(report: dict) -> bool:
    """Whether verification passed on the output explained. Other outputs failing (a detector's boxes
    that a TopK picks among near-equal scores, while the scores it explains pass) are said on stderr
    and in report.json, and do not fail the run."""
    checks = report["verify"].get("outputs", [])
    own = [c for c in checks if c.get("name") == report.get("output")]
    if not own:
        return bool(report["verify"]["passed"])
    others = [c["name"] for c in checks if not c.get("passed") and c not in own]
    if others and own[0].get("passed"):
        print(f"onnx-attr: verification failed on output(s) {others}, not the one explained "
              f"({report.get('output')!r}, which passed): see report.json", file=sys.stderr)
    return bool(own[0].get("passed"))


def cmd_dataset(args) -> int:
    from onnx_attr.app.dataset_job import attribute_dataset

    ray_options = {"address": args.address, "workers": args.workers, "cpus_per_worker": args.cpus_per_worker,
                   "gpus_per_worker": args.gpus_per_worker}
    summary = attribute_dataset(
        args.model, args.input, args.out, method=args.method or "deeplift", target=args.target, baseline=args.baseline,
        output_name=args.output_name, inputs=_input_options(args),
        shard_rows=args.shard_rows, batch_size=args.batch_size, attribution_dtype=args.attribution_dtype,
        engine=args.engine, resume=args.resume, overwrite=args.overwrite, gradient_fallback=args.gradient_fallback,
        n_steps=args.n_steps, internal_batch_size=args.internal_batch_size, lrp=_lrp_options(args),
        features=args.features, strip_final_activation=not args.keep_final_activation, device=args.device,
        ray_options=ray_options if args.engine == "ray" else None, quiet=getattr(args, "quiet", False),
        report=None if args.no_report else _report_settings(args), batch_axis=args.batch_axis,
        auto_fallback=args.method is None)
    rate = summary["rows_per_second"]
    text = (f"{summary['rows']} rows in {summary['shards']} shards: {summary['rows_computed']} computed "
            f"({summary['error_rows_computed']} error rows) in {summary['seconds']:.1f} s"
            + (f" ({rate:.1f} rows/s)" if rate else "")
            + f", {summary['shards_kept']} shards kept from earlier; "
            + (f"{summary['rows_above_delta_tolerance']} rows above relative delta {summary['delta_tolerance']:g}; "
               if summary["rows_above_delta_tolerance"] else "")
            + f"results in {args.out}" + (f"; report {summary['report']}" if summary.get("report") else ""))
    _emit(args, summary, text)
    if summary.get("report_error"):
        print(f"onnx-attr: {summary['report_error']}", file=sys.stderr)
    return EXIT_SOME_FAILED if summary["error_rows_computed"] or summary.get("report_error") else EXIT_OK


def _report_settings(args):
    from onnx_attr.app.report_html import ReportOptions

    return ReportOptions(gallery_rows=args.gallery_rows, pictures=args.pictures)


def cmd_report(args) -> int:
    from onnx_attr.app.report_html import write_report

    print(f"wrote {write_report(args.results, _report_settings(args))}")
    return EXIT_OK


def _tapped_as(model, tensors) -> str:
    """How `inspect` names where an integer input is attributed (deeplift.taps.embedding_taps)."""
    from onnx_attr.deeplift.layers import tensor_node

    if all(tensor_node(model.module, t).meta.get("measured_tap") for t in tensors):
        return "measured values: attributed at their cast to float"
    return "ids: attributed at their lookup"


def _attribution_summary(report: dict, out: str, worst: float) -> str:
    """A few short lines; the full lists (targets, files, deltas) are in report.json."""
    from onnx_attr.app.attribute_job import short_list
    from onnx_attr.importing.specs import attributed_after

    target = report["target"]
    shown = "none needed" if target is None else (
        f"[{short_list(target)}]" if isinstance(target, list) else str(target))
    final = report["final_activation"]
    pictures = [f for f in report["files"] if f not in ("attributions.npz", "report.json")]
    lines = [f"{report['method']} on output {report['output']!r}, target {shown} ({report['target_source']}), "
             f"baseline {report.get('baseline_used', report['baseline'])}",
             *(f"note: {report[k]}" for k in ("baseline_note", "ids_note") if report.get(k)),
             "final activation: " + (
                 "none found" if final is None else
                 f"{final['op_type']} node {final['node']!r} " + (f"stripped: {attributed_after(final['op_type'])} "
                                                                  "attributed" if final["stripped"] else "kept")),
             "convergence delta: none (the method has no completeness identity)"
             if report["max_relative_delta"] is None else f"convergence delta per example: max |delta| {worst:.3e}, "
                                                         f"max relative {report['max_relative_delta']:.3e}",
             *([f"note: that delta is {report['delta_meaning']}"]
               if not report.get("delta_meaning", "exact").startswith("exact") else []),
             *([f"note: {blocks_note(report['blocks_per_input'])}"] if report.get("blocks_per_input") else []),
             "verify against onnxruntime: " + ('PASSED' if report['verify']['passed'] else
                                               f"NOT RUN ({report['verify']['not_run']})" if report['verify'].get('not_run')
                                               else 'FAILED'),
             "wrote attributions.npz, report.json" + (f" and {len(pictures)} picture(s)" if pictures else "")
             + f" to {out}" + (" (finished earlier: kept)" if report.get("resumed") else "")]
    lines += [f"warning: {w}" for w in report.get("warnings", [])]
    lines += [f"warning: {w}" for w in report.get("input_warnings", [])]
    if report.get("non_finite"):
        lines.append(f"warning: non-finite attributions; {report['non_finite']}")
    return "\n".join(lines)


def blocks_note(blocks: dict) -> str:
    """What a perturbation method's attributions over the CLI's blocks hold (Captum's feature_mask):
    summed over the elements, each block's value counts as many times as it has elements."""
    cut = ", ".join(f"{name!r} into {count}" for name, count in blocks.items())
    return (f"features are blocks of contiguous elements ({cut}; --features N sets how many): every element "
            "holds its whole block's attribution, so a block's value is any one of its elements', not their sum")


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    keep_freed_memory()  # a process of ours: big feature maps reused, not page-faulted anew (allocator.py)
    command: Callable = args.run
    formatwarning = warnings.formatwarning
    warnings.formatwarning = _format_warning  # one line per warning, no source excerpt
    try:
        return command(args)
    except OnnxAttrError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout closed early (`onnx-attr inspect m.onnx | head`): stop quietly, as
        # a shell tool killed by SIGPIPE does; stdout goes to /dev/null so the exit's flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as err:  # a bug in onnx-attr: say so plainly, trace only when asked
        if getattr(args, "debug", False):
            import traceback

            traceback.print_exc()
        if is_out_of_memory(err):  # not a bug: the machine's limit
            print(f"error: {OUT_OF_MEMORY_ADVICE} ({err})", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"internal error ({type(err).__name__}: {err}); please report it with the model, "
              "and rerun with --debug for the traceback", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        warnings.formatwarning = formatwarning


if __name__ == "__main__":
    sys.exit(main())
