"""`onnx-attr`: a thin command line over the Python API.

Only argparse and the error classes are imported up front; torch, onnx and the package's heavy
modules are imported inside the commands, so `--help`, `--version` and usage errors answer at
once (`python benchmarks/startup.py` measures it).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import warnings
from typing import Any, Callable, Optional, Sequence

from . import __version__
from .errors import InputError, OnnxAttrError

EXIT_OK, EXIT_VERIFY_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_SOME_FAILED = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130

EXIT_CODES = """exit codes:
  0    success
  1    verification against onnxruntime failed; with --strict, also a convergence delta above tolerance
  2    bad input or usage (the message on stderr says what to fix)
  3    internal error in onnx-attr (rerun with --debug for the traceback, and please report it)
  4    a folder run finished, but some inputs failed (each listed with its error in index.json)
  130  interrupted"""

METHOD_CHOICES = ("deeplift", "deepliftshap", "integratedgradients", "revealcancel")


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


def _positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "give an integer >= 1")


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
    _input_option(p, False, ".npz of inputs keyed by ONNX input name (default: a random sample)")
    p.add_argument("--atol", type=_non_negative_float, default=1e-4, help="absolute tolerance (default 1e-4)")
    p.add_argument("--rtol", type=_non_negative_float, default=1e-4, help="relative tolerance (default 1e-4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random sample when no --input is given")

    p = command("convert", "save the imported module as a torch.export program (.pt2) that computes what the "
                           ".onnx file computes", cmd_convert)
    _model_options(p, final_activation="keep")
    p.add_argument("-o", "--out", "--output", dest="out", required=True, help="where to write the .pt2 file")
    _input_option(p, False, ".npz of example inputs to trace with (default: a random sample)")

    p = command("attribute", "attribute an output to the input features", cmd_attribute)
    _model_options(p)
    _input_option(p, True, ".npz of inputs keyed by ONNX input name, or a folder / glob of them (one result "
                           "folder each, named after the input file)")
    p.add_argument("-o", "--out", required=True, help="folder for attributions.npz, report.json and pictures")
    p.add_argument("--resume", action="store_true",
                   help="keep results already finished with the same settings; refuse if results in --out were made "
                        "with other settings (model, method, target, baseline, options, versions)")
    p.add_argument("--target", help="output index to explain: an int (negative counts from the end, e.g. "
                                    "--target=-1), one per example (3,1,4), or a:b for outputs of rank > 2 "
                                    "(default: the predicted class)")
    p.add_argument("--baseline", help="zeros (default), mean, or an .npz of baselines (deepliftshap: required, "
                                      "a distribution of rows, e.g. --baseline bg.npz)")
    p.add_argument("--method", default="deeplift", choices=METHOD_CHOICES, help="attribution method (default: deeplift)")
    p.add_argument("--batch-size", type=_positive_int,
                   help="examples per pass (default 16): memory stays flat and progress shows")
    _method_tuning_options(p)
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when an attribution's convergence delta is above tolerance (default: a warning)")
    p.add_argument("--output-name", help="ONNX output name or index to explain (default: the first)")
    p.add_argument("--device", type=_device, default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--smooth", type=_positive_float, metavar="BETA",
                   help="explain a smoothed twin: every Relu a Softplus(BETA), every MaxPool a log-sum-exp pooling "
                        "(the report gives the change in the outputs; verification is of the original)")
    _picture_options(p)
    _dataset_command(command("dataset", "attribute every row of a dataset (.npz / CSV / Parquet files) into Parquet "
                                        "shards, each row exactly once; --engine local (default) or ray",
                             cmd_dataset))
    return parser


def _method_tuning_options(p: argparse.ArgumentParser) -> None:
    """What `attribute` and `dataset` both pass to the method."""
    p.add_argument("--n-steps", type=_positive_int, help="integratedgradients: integration steps (default 50)")
    p.add_argument("--internal-batch-size", type=_positive_int,
                   help="integratedgradients: rows per forward/backward pass (default: all steps at once)")
    p.add_argument("--gradient-fallback", action="store_true",
                   help="let nonlinear ops without an exact rule use their gradient (warns; breaks completeness)")


def _dataset_command(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="path to the .onnx file")
    p.add_argument("--keep-final-activation", action="store_true",
                   help="keep a final Softmax/LogSoftmax/Sigmoid (default: strip it and use logits)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    _input_option(p, True, "an .npz (rows along axis 0), .csv or .parquet file, or a folder / glob of them")
    p.add_argument("-o", "--out", required=True, help="folder for manifest.json, summary.json and the Parquet shards")
    p.add_argument("--method", default="deeplift", choices=METHOD_CHOICES, help="attribution method (default: deeplift)")
    p.add_argument("--target", help="output index explained for every row (int, or a:b for outputs of rank > 2; "
                                    "default: each row's predicted class)")
    p.add_argument("--baseline", help="zeros (default) or an .npz of baseline rows (deepliftshap: required)")
    p.add_argument("--output-name", help="ONNX output name or index to explain (default: the first)")
    p.add_argument("--columns", help="CSV/Parquet: comma-separated feature columns of a one-input model (default: "
                                     "columns named after the inputs, else every column)")
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


# -- the commands ----------------------------------------------------------------------------------------------------

def _load(args, strip: Optional[bool] = None):
    from .budget import Budget
    from .loader import load

    if strip is None:
        strip = not getattr(args, "keep_final_activation", False)
    return load(args.model, strip_final_activation=strip, device=getattr(args, "device", None),
                budget=Budget.parse(getattr(args, "budget", None) or []))


def _inputs(args, model):
    from .inputs import read_npz

    return None if args.input is None else read_npz(args.input, model.inputs)


def _emit(args, data: dict, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def tensor_table(model) -> list[dict]:
    """Every tensor a node produces: the names `LayerDeepLift`/`tensor_as_output` take, with the
    node, op, DeepLift kind and (inferred) shape."""
    import onnx

    from .opkinds import node_kinds

    try:
        inferred = onnx.shape_inference.infer_shapes(model.onnx_model)
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
    model = _load(args)
    info = model.summary()
    tensors = tensor_table(model)
    produced = {}
    for row in tensors:
        produced.setdefault(row["node"], []).append(row["tensor"])
    for entry in info["nonlinear_nodes"]:
        entry["tensors"] = produced.get(entry["node"], [])
    info["tensors"] = tensors
    lines = [f"model: {args.model}", f"producer: {info['producer'] or '?'}; IR {info['ir_version']}; opsets: "
             + ", ".join(f"{d} {v}" for d, v in info["opsets"].items())]
    lines.append("inputs:")
    lines += [f"  {s.describe()}  ({_batch_text(d['batch_axis'])})" + ("" if s.differentiable else
                                                                        "  (not differentiable)")
              for s, d in zip(model.inputs, info["inputs"])]
    lines.append("outputs:")
    for s, d in zip(model.outputs, info["outputs"]):
        lines.append(f"  {s.describe()}  ({_batch_text(d['batch_axis'])}, as declared)")
        lines.append(f"    final activation: {s.final_activation.describe() if s.final_activation else 'none found'}")
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
    from .export import save_program

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


def cmd_attribute(args) -> int:
    from .attribute_job import method_options, resolve_baseline_spec, run_attribute
    from .names import read_feature_names, read_names
    from .visualize import PictureOptions, check_clip_percentile

    # checked before the model loads, so that a usage error answers at once
    resolve_baseline_spec(args.baseline, args.method)
    method_options(args.method, args.n_steps, args.internal_batch_size)
    pictures = PictureOptions(enabled=not args.no_pictures, all_kinds=args.plot,
                              clip_percentile=check_clip_percentile(args.clip_percentile),
                              class_names=read_names(args.class_names, "--class-names", "class_names"),
                              vocab=read_names(args.vocab, "--vocab", "vocab"),
                              feature_names=read_feature_names(args.feature_names))
    model = _load(args)
    options: dict[str, Any] = {}
    if args.smooth is not None:
        from .smooth import smooth

        model = smooth(model, relu_beta=args.smooth, maxpool_beta=args.smooth)
        options["smooth_beta"] = args.smooth
    report = run_attribute(model, input_path=args.input, target=args.target, baseline=args.baseline,
                           method=args.method, output_name=args.output_name, out=args.out,
                           gradient_fallback=args.gradient_fallback, resume=args.resume, pictures=pictures,
                           batch_size=args.batch_size, n_steps=args.n_steps,
                           internal_batch_size=args.internal_batch_size, options=options,
                           quiet=getattr(args, "quiet", False))
    import numpy as np

    delta = np.abs(np.asarray(report.pop("_delta"), dtype=np.float64))
    worst = float(delta.max(initial=0.0))
    if report.get("many"):
        text = (f"{report['method']}: {len(report['computed'])} input(s) attributed, "
                f"{len(report['skipped_as_finished'])} finished earlier, {len(report['failed'])} failed; "
                f"largest |delta| {worst:.3e}; results in {args.out}/<input file>/, summary in {args.out}/index.json")
        lines = [text] + [f"failed: {name}: {report['results'][name]['error'].splitlines()[0]}"
                          for name in report["failed"][:5]]
        if len(report["failed"]) > 5:
            lines.append(f"... and {len(report['failed']) - 5} more failed (see index.json)")
        _emit(args, report, "\n".join(lines))
        if report["failed"]:
            return EXIT_SOME_FAILED
        return EXIT_VERIFY_FAILED if args.strict and report["with_warnings"] else EXIT_OK
    _emit(args, report, _attribution_summary(report, args.out, worst))
    if args.strict and report.get("warnings"):
        return EXIT_VERIFY_FAILED
    return EXIT_OK if report["verify"]["passed"] else EXIT_VERIFY_FAILED


def cmd_dataset(args) -> int:
    from .dataset_job import attribute_dataset

    ray_options = {"address": args.address, "workers": args.workers, "cpus_per_worker": args.cpus_per_worker,
                   "gpus_per_worker": args.gpus_per_worker}
    summary = attribute_dataset(
        args.model, args.input, args.out, method=args.method, target=args.target, baseline=args.baseline,
        output_name=args.output_name, columns=args.columns.split(",") if args.columns else None,
        shard_rows=args.shard_rows, batch_size=args.batch_size, attribution_dtype=args.attribution_dtype,
        engine=args.engine, resume=args.resume, overwrite=args.overwrite, gradient_fallback=args.gradient_fallback,
        n_steps=args.n_steps, internal_batch_size=args.internal_batch_size,
        strip_final_activation=not args.keep_final_activation, device=args.device,
        ray_options=ray_options if args.engine == "ray" else None, quiet=getattr(args, "quiet", False))
    rate = summary["rows_per_second"]
    text = (f"{summary['rows']} rows in {summary['shards']} shards: {summary['rows_computed']} computed "
            f"({summary['error_rows_computed']} error rows) in {summary['seconds']:.1f} s"
            + (f" ({rate:.1f} rows/s)" if rate else "")
            + f", {summary['shards_kept']} shards kept from earlier; "
            + (f"{summary['rows_above_delta_tolerance']} rows above relative delta {summary['delta_tolerance']:g}; "
               if summary["rows_above_delta_tolerance"] else "")
            + f"results in {args.out}")
    _emit(args, summary, text)
    return EXIT_SOME_FAILED if summary["error_rows_computed"] else EXIT_OK


def _attribution_summary(report: dict, out: str, worst: float) -> str:
    """A few short lines; the full lists (targets, files, deltas) are in report.json."""
    from .attribute_job import short_list

    target = report["target"]
    shown = "none needed" if target is None else (
        f"[{short_list(target)}]" if isinstance(target, list) else str(target))
    final = report["final_activation"]
    pictures = [f for f in report["files"] if f not in ("attributions.npz", "report.json")]
    lines = [f"{report['method']} on output {report['output']!r}, target {shown} ({report['target_source']}), "
             f"baseline {report['baseline']}",
             "final activation: " + (
                 "none found" if final is None else
                 f"{final['op_type']} node {final['node']!r} " + ("stripped: logits attributed" if final["stripped"]
                                                                  else "kept")),
             f"convergence delta per example: max |delta| {worst:.3e}, "
             f"max relative {report['max_relative_delta']:.3e}",
             f"verify against onnxruntime: {'PASSED' if report['verify']['passed'] else 'FAILED'}",
             "wrote attributions.npz, report.json" + (f" and {len(pictures)} picture(s)" if pictures else "")
             + f" to {out}" + (" (finished earlier: kept)" if report.get("resumed") else "")]
    lines += [f"warning: {w}" for w in report.get("warnings", [])]
    lines += [f"warning: {w}" for w in report.get("input_warnings", [])]
    if report.get("non_finite"):
        lines.append(f"warning: non-finite attributions; {report['non_finite']}")
    return "\n".join(lines)


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
    except Exception as err:  # a bug in onnx-attr: say so plainly, trace only when asked
        if getattr(args, "debug", False):
            import traceback

            traceback.print_exc()
        print(f"internal error ({type(err).__name__}: {err}); please report it with the model, "
              "and rerun with --debug for the traceback", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        warnings.formatwarning = formatwarning


if __name__ == "__main__":
    sys.exit(main())
