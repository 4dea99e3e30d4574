"""Attribution methods, one file each, sharing Captum's `attribute()` contract."""

from .deeplift import DeepLift, DeepLiftShap, LayerDeepLift
from .gradient import InputXGradient, IntegratedGradients, Saliency

__all__ = ["DeepLift", "DeepLiftShap", "LayerDeepLift", "InputXGradient", "IntegratedGradients", "Saliency"]
