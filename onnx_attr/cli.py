"""`onnx-attr`: a thin command line over the Python API.

Exit codes: 0 ok, 1 verification failed, 2 bad input (any `OnnxAttrError`), 3 internal error.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from typing import Callable, Optional, Sequence

from . import __version__
from .errors import OnnxAttrError

EXIT_OK, EXIT_VERIFY_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="path to the .onnx file")
    p.add_argument("--keep-final-activation", action="store_true",
                   help="keep a final Softmax/LogSoftmax/Sigmoid (default: strip it and use logits)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--budget", action="append", default=[], metavar="NAME=N",
                   help="raise (or lower) a resource limit, e.g. max_elements=1073741824; repeatable; "
                        "see onnx_attr.Budget for the names and defaults")


def _tolerance_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance (default 1e-4)")
    p.add_argument("--rtol", type=float, default=1e-4, help="relative tolerance (default 1e-4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random sample when no --input is given")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onnx-attr", description="Explain exported ONNX models.")
    parser.add_argument("--version", action="version", version=f"onnx-attr {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", help="inputs, outputs, opsets, op counts, final activation, nonlinear nodes")
    _model_options(p)
    p.set_defaults(run=cmd_inspect)

    p = sub.add_parser("verify", help="compare the imported module with onnxruntime")
    _model_options(p)
    _tolerance_options(p)
    p.add_argument("--input", help=".npz of inputs keyed by ONNX input name (default: a random sample)")
    p.set_defaults(run=cmd_verify)

    p = sub.add_parser("convert", help="save the imported module as a torch.export program (.pt2)")
    _model_options(p)
    p.add_argument("-o", "--output", required=True, help="where to write the .pt2 file")
    p.add_argument("--input", help=".npz of example inputs to trace with (default: a random sample)")
    p.set_defaults(run=cmd_convert)

    p = sub.add_parser("attribute", help="attribute an output to the input features")
    _model_options(p)
    p.add_argument("--input", required=True,
                   help=".npz of inputs keyed by ONNX input name, or a folder / glob of them (one result each)")
    p.add_argument("--resume", action="store_true",
                   help="with several inputs: skip those whose results are already complete")
    p.add_argument("--target", help="output index to explain: an int, one per example (3,1,4), or a:b for "
                                    "outputs of rank > 2 (default: the predicted class)")
    p.add_argument("--baseline", default="zeros", help="zeros (default), mean, or an .npz of baselines "
                                                       "(several rows for deepliftshap)")
    p.add_argument("--method", default="deeplift",
                   choices=["deeplift", "deepliftshap", "integratedgradients", "revealcancel"],
                   help="attribution method (default: deeplift)")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when an attribution's convergence delta is above tolerance (default: a warning)")
    p.add_argument("--gradient-fallback", action="store_true",
                   help="let nonlinear ops without an exact rule use their gradient (warns; breaks completeness)")
    p.add_argument("--output-name", help="ONNX output name or index to explain (default: the first)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--smooth", type=float, metavar="BETA",
                   help="explain a smoothed twin: every Relu a Softplus(BETA), every MaxPool a log-sum-exp pooling "
                        "(the report gives the change in the outputs; verification is of the original)")
    p.add_argument("--plot", action="store_true",
                   help="pictures for every attributed input: bar charts for tabular features and HTML for token "
                        "ids, besides the image heatmaps written anyway")
    p.add_argument("--feature-names", help="names for the bar charts: a JSON list (or an object with "
                                           "'feature_names'), or a text file with one name per line")
    p.add_argument("--out", required=True, help="folder for attributions.npz, report.json and pictures")
    p.set_defaults(run=cmd_attribute)
    return parser


def _load(args):
    from .budget import Budget
    from .loader import load

    return load(args.model, strip_final_activation=not args.keep_final_activation,
                device=getattr(args, "device", None), budget=Budget.parse(getattr(args, "budget", [])))


def _inputs(args, model):
    from .inputs import read_npz

    return None if args.input is None else read_npz(args.input, model.inputs)


def _emit(args, data: dict, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def cmd_inspect(args) -> int:
    model = _load(args)
    info = model.summary()
    lines = [f"model: {args.model}", f"producer: {info['producer'] or '?'}; IR {info['ir_version']}; opsets: "
             + ", ".join(f"{d} {v}" for d, v in info["opsets"].items())]
    lines.append("inputs:")
    lines += [f"  {s.describe()}" + ("" if s.differentiable else "  (not differentiable)") for s in model.inputs]
    lines.append("outputs:")
    for s in model.outputs:
        lines.append(f"  {s.describe()}")
        lines.append(f"    final activation: {s.final_activation.describe() if s.final_activation else 'none found'}")
    lines.append("ops: " + ", ".join(f"{op} x{n}" for op, n in info["op_counts"].items()))
    nonlinear = info["nonlinear_nodes"]
    lines.append(f"nonlinear nodes ({len(nonlinear)}):")
    lines += [f"  {n['node']} ({n['op']}, {n['kind']})" for n in nonlinear[:50]]
    if len(nonlinear) > 50:
        lines.append(f"  ... and {len(nonlinear) - 50} more (see --json)")
    lines += [f"note: {n}" for n in model.notes]
    _emit(args, info, "\n".join(lines))
    return EXIT_OK


def cmd_verify(args) -> int:
    model = _load(args)
    report = model.verify(_inputs(args, model), atol=args.atol, rtol=args.rtol, seed=args.seed)
    report.notes.extend(model.notes)
    _emit(args, report.to_dict(), report.format())
    return EXIT_OK if report.passed else EXIT_VERIFY_FAILED


def cmd_convert(args) -> int:
    from .export import save_program

    model = _load(args)
    notes = save_program(model, args.output, _inputs(args, model))
    text = "\n".join([f"wrote {args.output}; load it with torch.export.load({args.output!r}).module()",
                      *(f"note: {n}" for n in (*model.notes, *notes))])
    _emit(args, {"output": args.output, "notes": [*model.notes, *notes]}, text)
    return EXIT_OK


def cmd_attribute(args) -> int:
    from .attribute_job import read_feature_names, run_attribute

    model = _load(args)
    if args.smooth is not None:
        from .smooth import smooth

        model = smooth(model, relu_beta=args.smooth, maxpool_beta=args.smooth)
    report = run_attribute(model, input_path=args.input, target=args.target, baseline=args.baseline,
                           method=args.method, output_name=args.output_name, out=args.out,
                           gradient_fallback=args.gradient_fallback, resume=args.resume, plot_all=args.plot,
                           feature_names=read_feature_names(args.feature_names))
    delta = report.pop("_delta")
    if report.get("many"):
        text = (f"{len(report['computed'])} input(s) attributed, {len(report['skipped_as_finished'])} already "
                f"finished; largest |delta| {float(delta.max()):.3e}; results in {args.out}/<input name>/, "
                f"summary in {args.out}/index.json")
        _emit(args, report, text)
        return EXIT_VERIFY_FAILED if args.strict and report["with_warnings"] else EXIT_OK
    final = report["final_activation"]
    lines = [f"{report['method']} on output {report['output']!r}, target {report['target']} "
             f"({report['target_source']}), baseline {args.baseline}",
             "final activation: " + (
                 "none found" if final is None else
                 f"{final['op_type']} node {final['node']!r} " + ("stripped: logits attributed" if final["stripped"]
                                                                  else "kept")),
             f"convergence delta per example: max |delta| {float(delta.abs().max()):.3e}, "
             f"max relative {report['max_relative_delta']:.3e}",
             f"verify against onnxruntime: {'PASSED' if report['verify']['passed'] else 'FAILED'}",
             f"wrote {', '.join(report['files'])} to {args.out}"]
    lines += [f"warning: {w}" for w in report.get("warnings", [])]
    if report.get("non_finite"):
        lines.append(f"warning: non-finite attributions; {report['non_finite']}")
    _emit(args, report, "\n".join(lines))
    if args.strict and report.get("warnings"):
        return EXIT_VERIFY_FAILED
    return EXIT_OK if report["verify"]["passed"] else EXIT_VERIFY_FAILED


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Callable = args.run
    try:
        return command(args)
    except OnnxAttrError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug in onnx-attr: say so plainly, trace only when asked
        if args.debug:
            traceback.print_exc()
        print(f"internal error ({type(err).__name__}: {err}); please report it with the model, "
              "and rerun with --debug for the traceback", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
