"""Attribution methods, one file each, sharing Captum's `attribute()` contract."""

from .deeplift import DeepLift, DeepLiftShap

__all__ = ["DeepLift", "DeepLiftShap"]
