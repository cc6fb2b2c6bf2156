"""MOSAIC model: FLUX backbone flavours, codecs, text encoders and the fused reference branch."""
from .codec import Codec, PixelCodec, VaeCodec, build_codec, pack, unpack
from .flavours import FLAVOURS, Flavour, get_flavour
from .layout import POS_SCHEMES, TokenLayout, position_ids
from .lora import ALLOWED_TARGETS, UPSTREAM_TARGETS, LoraSpec
from .text import HashedWordEncoder, T5ClipEncoder, build_text_encoder
from .transformer import MosaicTransformer, build_model

__all__ = [
    "Codec", "PixelCodec", "VaeCodec", "build_codec", "pack", "unpack", "FLAVOURS", "Flavour", "get_flavour",
    "POS_SCHEMES", "TokenLayout", "position_ids", "ALLOWED_TARGETS", "UPSTREAM_TARGETS", "LoraSpec",
    "HashedWordEncoder", "T5ClipEncoder", "build_text_encoder", "MosaicTransformer", "build_model",
]
