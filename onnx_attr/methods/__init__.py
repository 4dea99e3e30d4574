"""Attribution methods, one file per family, sharing Captum's `attribute()` contract."""

from .deeplift import DeepLift, DeepLiftShap, LayerDeepLift
from .gradient import GradientShap, InputXGradient, IntegratedGradients, Saliency
from .ig_variants import AdaptiveIntegratedGradients, SplitIntegratedGradients
from .layer import LayerIntegratedGradients, NeuronDeepLift, NeuronIntegratedGradients
from .noise_tunnel import NoiseTunnel
from .lime import KernelShap, Lime
from .perturbation import FeatureAblation, FeaturePermutation, Occlusion
from .perturbation_layers import LayerFeatureAblation, LayerFeaturePermutation, NeuronFeatureAblation
from .shapley import ShapleyValues, ShapleyValueSampling

__all__ = ["DeepLift", "DeepLiftShap", "FeatureAblation", "GradientShap", "InputXGradient", "IntegratedGradients",
           "LayerDeepLift", "LayerIntegratedGradients", "NeuronDeepLift", "NeuronIntegratedGradients", "NoiseTunnel",
           "Occlusion", "Saliency"]
__all__ += ["FeaturePermutation", "KernelShap", "LayerFeatureAblation", "LayerFeaturePermutation", "Lime",
            "NeuronFeatureAblation", "ShapleyValueSampling", "ShapleyValues", "AdaptiveIntegratedGradients",
            "SplitIntegratedGradients"]
