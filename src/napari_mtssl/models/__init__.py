"""The 2D U-Net (MONAI blocks) with its encoder and decoder reachable by the auxiliary tasks."""

from napari_mtssl.models.unet import NORMS, UNet2D, build_unet, count_parameters, forward_flops

__all__ = ["NORMS", "UNet2D", "build_unet", "count_parameters", "forward_flops"]
