"""Attribution methods, one file each, sharing Captum's `attribute()` contract."""

from .deeplift import DeepLift, DeepLiftShap, LayerDeepLift
from .gradient import GradientShap, InputXGradient, IntegratedGradients, Saliency
from .noise_tunnel import NoiseTunnel

__all__ = ["DeepLift", "DeepLiftShap", "GradientShap", "LayerDeepLift", "InputXGradient", "IntegratedGradients", "NoiseTunnel", "Saliency"]
