"""Request contexts (MAX-style): token buffers, text / text+vision / pixel contexts, outputs."""
from _fast.tokens import EOSTracker, TokenBuffer

from .outputs import GenerationOutput, ImageContent, LogProbabilities, TextGenerationOutput
from .pixel import PixelContext, VideoPixelContext
from .sampling import SamplingParams
from .status import FUTURE_TOKEN, GenerationStatus
from .text import SpecDecodingState, TextContext
from .vision import ImageMetadata, TextAndVisionContext

__all__ = [
    "TokenBuffer",
    "TextContext",
    "TextAndVisionContext",
    "ImageMetadata",
    "PixelContext",
    "VideoPixelContext",
    "GenerationStatus",
    "EOSTracker",
    "LogProbabilities",
    "TextGenerationOutput",
    "GenerationOutput",
    "ImageContent",
    "SamplingParams",
    "SpecDecodingState",
    "FUTURE_TOKEN",
]
