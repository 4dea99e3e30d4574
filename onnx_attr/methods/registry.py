"""Every attribution method, one line each: its name, class, family, what it takes and what the
CLI may pass it. The CLI's `--method` choices, the attribute and dataset jobs, the README's method
table (`python -m onnx_attr.methods`) and the contract tests all read this list, so
adding a method is one class plus one `register(...)` line.

Classes are named as "module:Class" below `onnx_attr.methods` and imported on first use, so the
CLI's `--help` does not pay for torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Optional

#: The families, in the order the README lists them.
FAMILIES = ("gradient", "path", "rule", "perturbation", "layer", "neuron")
#: CLI options a method may take (the argparse dests shared by `attribute` and `dataset`).
CLI_OPTIONS = ("n_steps", "internal_batch_size", "gradient_fallback", "lrp_rule", "lrp_composite", "lrp_bounds",
               "features")
#: Of those, the ones that go to the constructor (named without their `lrp_` prefix there).
CONSTRUCTOR_OPTIONS = ("lrp_rule", "lrp_composite", "lrp_bounds")


@dataclass(frozen=True)
class MethodEntry:
    """One registered method.

    `baselines`: it takes baselines; `distribution`: they are a distribution of rows it draws from
    or averages over (so the CLI needs `--baseline bg.npz`); `delta`: it returns a convergence
    delta; `options`: the CLI options it takes (of CLI_OPTIONS); `init`: constructor arguments
    that make this entry (DeepLift with the RevealCancel rule); `cli`: `onnx-attr attribute`
    can run it (layer and neuron methods need `--layer`); `required`: arguments it takes
    without a default, which the CLI cannot give."""

    name: str
    path: str
    family: str
    baselines: bool = False
    distribution: bool = False
    delta: bool = False
    options: tuple[str, ...] = ()
    init: dict = field(default_factory=dict)
    title: str = ""
    cli: bool = True
    required: tuple[str, ...] = ()  # arguments without a default (the contract test makes them)
    draws: bool = False  # draws at random: the same under the same numpy and torch seeds
    takes_layer: bool = False  # an input method that reads a layer too (GuidedGradCam)
    min_examples: int = 1  # examples one call needs (FeaturePermutation shuffles across the batch)

    @property
    def class_name(self) -> str:
        return self.path.rpartition(":")[2]

    @property
    def cls(self) -> type:
        module, _, name = self.path.rpartition(":")
        return getattr(importlib.import_module(module if "." in module else f"onnx_attr.methods.{module}"), name)

    @property
    def delta_meaning(self) -> Optional[str]:
        """What this method's convergence delta measures, for the reports (None: it has none). Only
        the DeepLift family's should be ~0: a path integral's is its quadrature error, and a drawn
        path point's (GradientShap) meets f(x) − f(x0) only on average over draws."""
        if not self.delta:
            return None
        if self.draws:
            return ("sampled: each draw is one random point of one random baseline's path, so a draw's delta "
                    "is large by design; Σ attributions meets f(x) − E[f(baseline)] only on average over draws")
        if self.path.startswith("lrp:"):
            return ("conservation: target output − Σ relevance, 0 up to rounding for conserving rules on a model "
                    "without biases; biases and ε absorb their share otherwise")
        if "n_steps" in self.options:
            return ("approximate: the path integral's quadrature error, which shrinks as --n-steps grows where the "
                    "output is continuous along the path; a jump on it (a choice the model makes and reads back, "
                    "an ArgMax's token fed to a lookup) has no gradient, and no step count recovers it")
        return "exact: Σ attributions = f(x) − f(baseline) up to float rounding"

    @property
    def needs_layer(self) -> bool:
        return self.takes_layer or self.family in ("layer", "neuron")

    @property
    def fits_dataset(self) -> bool:
        """The dataset job stores one attribution per input column: input methods only."""
        return self.cli and not self.needs_layer

    def make(self, model, *, layer: Optional[str] = None, gradient_fallback: bool = False,
             options: Optional[dict] = None) -> Any:
        """The explainer for a model (at `layer` for layer and neuron methods); of the checked CLI
        `options`, those in CONSTRUCTOR_OPTIONS go to the class (LRP's rule, composite, bounds)."""
        from onnx_attr.errors import InputError

        kwargs = dict(self.init)
        kwargs.update({k.removeprefix("lrp_"): v for k, v in (options or {}).items()
                       if k in CONSTRUCTOR_OPTIONS and k in self.options and v is not None})
        if "gradient_fallback" in self.options:
            kwargs["gradient_fallback"] = gradient_fallback
        elif gradient_fallback:
            raise InputError(f"--gradient-fallback applies to the DeepLift family, not to {self.name}")
        if self.needs_layer:
            if not layer:
                raise InputError(f"--method {self.name} attributes at a hidden tensor: give its ONNX name with "
                                 "--layer (`onnx-attr inspect --json` lists them)")
            return self.cls(model, layer, **kwargs)
        if layer:
            raise InputError(f"--layer applies to layer and neuron methods, not to {self.name}")
        return self.cls(model, **kwargs)

    def run(self, explainer: Any, inputs: Any, baselines: Any, *, target: Any, additional_forward_args: Any,
            output: Any, options: dict) -> tuple[Any, Any]:
        """One call in the form every method takes here: (attributions, delta or None). A neuron
        method reads `target` as its neuron selector; it explains the layer, so takes no output."""
        kwargs: dict = {"additional_forward_args": additional_forward_args,
                        **{k: v for k, v in options.items() if k not in CONSTRUCTOR_OPTIONS and k != "features"}}
        blocks = feature_blocks(explainer, inputs, options.get("features"))
        if blocks:
            kwargs["feature_mask"] = {name: mask for name, (mask, _) in blocks.items()}
        if self.baselines:
            kwargs["baselines"] = baselines
        if self.family == "neuron":
            kwargs["neuron_selector"] = target
        else:
            kwargs.update(target=target, output=output)
        kwargs = _accepted(explainer.attribute, kwargs)  # LayerActivation takes no target, say
        if self.delta:
            result, delta = explainer.attribute(inputs, return_convergence_delta=True, **kwargs)
        else:
            result, delta = explainer.attribute(inputs, **kwargs), None
        report = getattr(explainer, "last_report", None)
        if isinstance(report, dict) and "final_activation" not in report:  # a method that writes no report
            from onnx_attr.methods.base import output_index, output_report

            index = 0 if self.family == "neuron" else output_index(explainer.model, output)
            explained = explainer.inner.model if self.family == "neuron" else explainer.model  # a neuron's: its layer
            explainer.last_report = {**output_report(explained, self.title or self.class_name, index), **report}
        if blocks and isinstance(getattr(explainer, "last_report", None), dict):
            explainer.last_report["blocks_per_input"] = {name: count for name, (_, count) in blocks.items()}
        return result, delta


def feature_blocks(explainer: Any, inputs: Any, features: Optional[int]) -> dict:
    """The CLI's features for a perturbation method: each named input with more than `features`
    elements per example cut into at most that many contiguous blocks (`perturbation.block_groups`:
    square patches through an image's channels), as {name: (mask, blocks)}. Captum's default, one
    feature per element, costs a forward per element (315 s for FeatureAblation on a 48 x 192 text
    line, and a Lasso over 27,648 columns for Lime); `--features all` (0 here) asks for it. Inputs
    without their batch on axis 0, and an explainer cutting blocks itself (the CLI's fallback), are
    left alone."""
    if not features or not isinstance(inputs, dict) or getattr(explainer, "max_features", None) is not None:
        return {}
    import math

    import torch

    from onnx_attr.importing.batch import batch_axes
    from onnx_attr.methods.perturbation import block_groups

    specs = {s.name: s for s in explainer.model.inputs}
    named = [(k, v) for k, v in inputs.items() if k in specs]
    axes = dict(zip([k for k, _ in named], batch_axes([specs[k] for k, _ in named],
                                                        [torch.as_tensor(v) for _, v in named])))
    out = {}
    for name, value in named:
        shape = tuple(getattr(value, "shape", ()))
        if axes.get(name) != 0 or len(shape) < 2 or math.prod(shape[1:]) <= features:
            continue
        mask = block_groups(shape[1:], features)
        out[name] = (mask.numpy(), int(mask.max()) + 1)
    return out


def _accepted(function: Any, kwargs: dict) -> dict:
    """The keyword arguments `function` takes (all of them when it takes **kwargs)."""
    import inspect

    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in parameters}


REGISTRY: dict[str, MethodEntry] = {}


def register(path: str, family: str, *, name: Optional[str] = None, **facts: Any) -> MethodEntry:
    """Add a method: `path` is "module:Class" below onnx_attr.methods (or a full "pkg.module:Class"),
    `name` its CLI name (default: the class name in lower case)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; use one of {FAMILIES}")
    unknown = set(facts.get("options", ())) - set(CLI_OPTIONS)
    if unknown:
        raise ValueError(f"unknown CLI option(s) {sorted(unknown)}; use some of {CLI_OPTIONS}")
    entry = MethodEntry(name or path.rpartition(":")[2].lower(), path, family, **facts)
    if entry.name in REGISTRY:
        raise ValueError(f"method {entry.name!r} is registered twice")
    REGISTRY[entry.name] = entry
    return entry


def entry(name: str) -> MethodEntry:
    """A method by CLI name; a clear error listing the others otherwise."""
    from onnx_attr.errors import InputError

    found = REGISTRY.get(name)
    if found is None:
        raise InputError(f"unknown method {name!r}; available: {sorted(REGISTRY)}")
    return found


def cli_methods() -> tuple[str, ...]:
    return tuple(n for n, e in REGISTRY.items() if e.cli)


def dataset_methods() -> tuple[str, ...]:
    return tuple(n for n, e in REGISTRY.items() if e.fits_dataset)


def titles() -> dict[str, str]:
    """CLI name -> how reports name the method."""
    return {n: e.title or e.class_name for n, e in REGISTRY.items()}


_PATH = ("n_steps", "internal_batch_size")
_DL = ("gradient_fallback",)
#: perturbation methods the CLI runs over features of contiguous elements (`feature_blocks`)
_FEATURES = ("features",)

# --- the methods -----------------------------------------------------------------------------------
register("deeplift:DeepLift", "rule", baselines=True, delta=True, options=_DL)
register("deeplift:DeepLift", "rule", name="revealcancel", baselines=True, delta=True, options=_DL,
         init={"rule": "revealcancel"}, title="DeepLift (RevealCancel rule)")
register("deeplift:DeepLiftShap", "rule", baselines=True, distribution=True, delta=True, options=_DL)
register("gradient:IntegratedGradients", "path", baselines=True, delta=True, options=_PATH)
register("gradient:Saliency", "gradient")
register("gradient:InputXGradient", "gradient")
register("gradient:GradientShap", "path", baselines=True, distribution=True, delta=True, draws=True)
register("perturbation:FeatureAblation", "perturbation", baselines=True, options=_FEATURES)
register("perturbation:Occlusion", "perturbation", baselines=True, cli=False, required=("sliding_window_shapes",))
register("deeplift:LayerDeepLift", "layer", baselines=True, delta=True, options=_DL)
register("layer:LayerIntegratedGradients", "layer", baselines=True, delta=True, options=_PATH)
register("layer:NeuronDeepLift", "neuron", baselines=True, delta=True)
register("layer:NeuronIntegratedGradients", "neuron", baselines=True, delta=True, options=_PATH)
register("guided:GuidedBackprop", "gradient")
register("guided:Deconvolution", "gradient")
register("guided:GuidedGradCam", "gradient", takes_layer=True)
register("layer:LayerActivation", "layer")
register("layer:LayerGradientXActivation", "layer")
register("layer:LayerGradCam", "layer")
register("layer:InternalInfluence", "layer", baselines=True, options=_PATH)
register("layer:LayerConductance", "layer", baselines=True, delta=True, options=_PATH)
register("layer:LayerGradientShap", "layer", baselines=True, distribution=True, delta=True, draws=True)
register("layer:LayerDeepLiftShap", "layer", baselines=True, distribution=True, delta=True, options=_DL)
register("layer:NeuronGradient", "neuron")
register("guided:NeuronGuidedBackprop", "neuron")
register("guided:NeuronDeconvolution", "neuron")
register("layer:NeuronGradientShap", "neuron", baselines=True, distribution=True, delta=True, draws=True)
register("layer:NeuronDeepLiftShap", "neuron", baselines=True, distribution=True, delta=True)
register("shapley:ShapleyValueSampling", "perturbation", baselines=True, draws=True, options=_FEATURES)
register("lime:KernelShap", "perturbation", baselines=True, draws=True, options=_FEATURES)
register("lime:Lime", "perturbation", baselines=True, draws=True, options=_FEATURES)
register("ig_variants:SplitIntegratedGradients", "path", baselines=True, delta=True, options=_PATH)
register("shapley:ShapleyValues", "perturbation", baselines=True, cli=False,
         required=("feature_mask",))  # 2**F coalitions: elements grouped; the CLI takes no mask
register("perturbation:FeaturePermutation", "perturbation", draws=True, min_examples=2, options=_FEATURES)
register("perturbation_layers:LayerFeatureAblation", "layer", baselines=True)
register("perturbation_layers:LayerFeaturePermutation", "layer", draws=True, min_examples=2)
register("perturbation_layers:NeuronFeatureAblation", "neuron", baselines=True, options=_FEATURES)
register("ig_variants:AdaptiveIntegratedGradients", "path", baselines=True, delta=True, options=_PATH)
register("lrp:LRP", "rule", delta=True, options=("lrp_rule", "lrp_composite", "lrp_bounds"))
register("lrp:LayerLRP", "layer", delta=True)
register("layer:NeuronConductance", "neuron", baselines=True, options=_PATH, cli=False,
         required=("target",))  # a neuron and an output target: the CLI's --target is only one of them


def methods_markdown() -> str:
    """The README's method table, generated from the registry."""
    lines = ["| method | `--method` | family | baselines | convergence delta | CLI options |",
             "| --- | --- | --- | --- | --- | --- |"]
    for family in FAMILIES:
        for e in (e for e in REGISTRY.values() if e.family == family):
            baselines = "distribution" if e.distribution else "yes" if e.baselines else "no"
            options = ", ".join(f"`--{o.replace('_', '-')}`" for o in e.options)
            if e.needs_layer:
                options = ", ".join(filter(None, ["`--layer`", "`--target` (the neuron)" if e.family == "neuron"
                                                  else "", options]))
            options = options or "none"
            lines.append(f"| {e.title or e.class_name} | {'`' + e.name + '`' if e.cli else 'API only'} | {family} | "
                         f"{baselines} | {(e.delta_meaning or 'no').partition(':')[0]} | {options} |")
    return "\n".join(lines) + "\n"


#: Where the table stands in README.md.
README_MARKERS = ("<!-- methods table: python -m onnx_attr.methods -->", "<!-- end of methods table -->")
