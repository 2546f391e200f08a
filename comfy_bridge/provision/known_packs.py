"""Which popular custom node pack provides a node class, when the manifest does not say.

Why: a workflow downloaded from the internet (the evaluation's "Denrisi" workflow is one)
names node classes, not packs. When a class is missing, the fix is a few manifest lines;
this map (hand-written, only classes known to come from each pack) lets check-workflow
and the startup check name the pack and its repository instead of "unknown class".
The manifest's own `provides` lists always win over this map.
"""

from __future__ import annotations

from typing import NamedTuple


class KnownPack(NamedTuple):
    name: str
    repo: str


_PACKS: dict[KnownPack, tuple[str, ...]] = {
    KnownPack("RES4LYF", "https://github.com/ClownsharkBatwing/RES4LYF"): (
        "ClownsharKSampler_Beta", "SharkSampler_Beta", "ClownsharkChainsampler_Beta", "ClownSampler_Beta",
        "ClownSamplerAdvanced_Beta", "SharkOptions_Beta", "ClownModelLoader", "FluxLoader", "SD35Loader",
    ),
    KnownPack("ComfyUI-Impact-Pack", "https://github.com/ltdrdata/ComfyUI-Impact-Pack"): (
        "FaceDetailer", "FaceDetailerPipe", "SAMLoader", "DetailerForEach", "DetailerForEachDebug",
        "BboxDetectorSEGS", "SegmDetectorSEGS", "ImpactWildcardProcessor", "ImpactWildcardEncode",
        "ToBasicPipe", "FromBasicPipe", "ImpactSwitch", "SEGSPreview", "MaskToSEGS",
    ),
    KnownPack("ComfyUI-Impact-Subpack", "https://github.com/ltdrdata/ComfyUI-Impact-Subpack"): (
        "UltralyticsDetectorProvider",
    ),
    KnownPack("rgthree-comfy", "https://github.com/rgthree/rgthree-comfy"): (
        "Power Lora Loader (rgthree)", "Seed (rgthree)", "Context (rgthree)", "Context Big (rgthree)",
        "Image Comparer (rgthree)", "Display Any (rgthree)", "Lora Loader Stack (rgthree)", "Any Switch (rgthree)",
    ),
    KnownPack("ComfyUI_essentials", "https://github.com/cubiq/ComfyUI_essentials"): (
        "ImageResize+", "GetImageSize+", "SimpleMath+", "ImageCrop+", "MaskBlur+", "ImageFlip+",
        "ConsoleDebug+", "ImageCASharpening+",
    ),
    KnownPack("was-node-suite-comfyui", "https://github.com/WASasquatch/was-node-suite-comfyui"): (
        "Image Blend", "Text Concatenate", "Text Multiline", "Image Resize", "Number Counter", "Text String",
        "Image Save", "Upscale Model Loader", "Image Rembg (Remove Background)",
    ),
    KnownPack("ComfyUI-Custom-Scripts", "https://github.com/pythongosssss/ComfyUI-Custom-Scripts"): (
        "ShowText|pysssss", "MathExpression|pysssss", "StringFunction|pysssss", "LoraLoader|pysssss",
        "CheckpointLoader|pysssss", "Repeater|pysssss",
    ),
    KnownPack("ComfyUI-KJNodes", "https://github.com/kijai/ComfyUI-KJNodes"): (
        "GetImageSizeAndCount", "ImageBatchMulti", "ConditioningMultiCombine", "ColorMatch", "GrowMaskWithBlur",
        "ImageConcanate", "ImageResizeKJ", "INTConstant", "FloatConstant", "StringConstant", "WidgetToString",
    ),
    KnownPack("comfyui_controlnet_aux", "https://github.com/Fannovel16/comfyui_controlnet_aux"): (
        "AIO_Preprocessor", "DWPreprocessor", "OpenposePreprocessor", "CannyEdgePreprocessor",
        "DepthAnythingPreprocessor", "LineArtPreprocessor", "HEDPreprocessor", "Zoe-DepthMapPreprocessor",
        "MiDaS-DepthMapPreprocessor",
    ),
    KnownPack("ComfyUI_IPAdapter_plus", "https://github.com/cubiq/ComfyUI_IPAdapter_plus"): (
        "IPAdapterUnifiedLoader", "IPAdapterAdvanced", "IPAdapter", "IPAdapterModelLoader", "IPAdapterFaceID",
        "IPAdapterUnifiedLoaderFaceID", "IPAdapterEncoder", "IPAdapterTiled", "PrepImageForClipVision",
    ),
    KnownPack("efficiency-nodes-comfyui", "https://github.com/jags111/efficiency-nodes-comfyui"): (
        "Efficient Loader", "KSampler (Efficient)", "KSampler Adv. (Efficient)", "Eff. Loader SDXL",
        "KSampler SDXL (Eff.)", "LoRA Stacker",
    ),
    KnownPack("ComfyUI-VideoHelperSuite", "https://github.com/Kosinkadink/ComfyUI-VideoHelperSuite"): (
        "VHS_VideoCombine", "VHS_LoadVideo", "VHS_LoadImages",
    ),
    KnownPack("ComfyUI_UltimateSDUpscale", "https://github.com/ssitu/ComfyUI_UltimateSDUpscale"): (
        "UltimateSDUpscale", "UltimateSDUpscaleNoUpscale",
    ),
    KnownPack("ComfyUI-GGUF", "https://github.com/city96/ComfyUI-GGUF"): (
        "UnetLoaderGGUF", "CLIPLoaderGGUF", "DualCLIPLoaderGGUF",
    ),
}

KNOWN_CLASSES: dict[str, KnownPack] = {cls: pack for pack, classes in _PACKS.items() for cls in classes}
KNOWN_PACKS: dict[str, KnownPack] = {pack.name: pack for pack in _PACKS}

# Class-name conventions some packs follow for every node.
_SUFFIXES: tuple[tuple[str, str], ...] = (
    (" (rgthree)", "rgthree-comfy"),
    ("|pysssss", "ComfyUI-Custom-Scripts"),
    ("+", "ComfyUI_essentials"),
)
_PREFIXES: tuple[tuple[str, str], ...] = (("VHS_", "ComfyUI-VideoHelperSuite"), ("Impact", "ComfyUI-Impact-Pack"))

# Front-end-only nodes: they live in UI-format workflows but never reach the server.
UI_ONLY_TYPES = frozenset({
    "Reroute", "Note", "MarkdownNote", "PrimitiveNode", "SetNode", "GetNode",
    "Fast Groups Bypasser (rgthree)", "Fast Groups Muter (rgthree)", "Fast Bypasser (rgthree)",
    "Fast Muter (rgthree)", "Bookmark (rgthree)", "Label (rgthree)", "Note Plus (mtb)",
})


def guess_pack(class_type: str) -> KnownPack | None:
    """The pack a class most likely comes from, or None."""
    if class_type in KNOWN_CLASSES:
        return KNOWN_CLASSES[class_type]
    for suffix, name in _SUFFIXES:
        if class_type.endswith(suffix):
            return KNOWN_PACKS[name]
    for prefix, name in _PREFIXES:
        if class_type.startswith(prefix):
            return KNOWN_PACKS[name]
    return None
