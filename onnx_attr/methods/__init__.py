"""Attribution methods, one file per family, sharing Captum's `attribute()` contract."""

from .deeplift import DeepLift, DeepLiftShap, LayerDeepLift
from .gradient import GradientShap, InputXGradient, IntegratedGradients, Saliency
from .layer import LayerIntegratedGradients, NeuronDeepLift, NeuronIntegratedGradients
from .lrp import LRP, LayerLRP
from .noise_tunnel import NoiseTunnel
from .perturbation import FeatureAblation, Occlusion

__all__ = ["DeepLift", "DeepLiftShap", "FeatureAblation", "GradientShap", "InputXGradient", "IntegratedGradients",
           "LayerDeepLift", "LayerIntegratedGradients", "LayerLRP", "LRP", "NeuronDeepLift", "NeuronIntegratedGradients", "NoiseTunnel",
           "Occlusion", "Saliency"]
