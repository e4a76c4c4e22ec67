"""Multimodal input (images, audio) through llama.cpp's libmtmd."""

from .context import MEDIA_MARKER, MtmdBitmap, MtmdChunks, MtmdContext, check_projector
from .multimodal import LlavaImageEmbed, Mmproj, load_mmproj, process_image

__all__ = ["MtmdContext", "MtmdBitmap", "MtmdChunks", "MEDIA_MARKER", "check_projector", "Mmproj",
           "LlavaImageEmbed", "load_mmproj", "process_image"]
