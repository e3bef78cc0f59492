"""Import a Hugging Face image processor's ``preprocessor_config.json`` as an ``edgekit.preprocess/v1`` spec.

Pure functions, standard library only at import (no numpy, Pillow or transformers). The conversion emulates
what the named processor class does in ``transformers`` (``BaseImageProcessor.preprocess`` on PIL or uint8
input): convert to RGB, resize, center crop, rescale, normalize, each step as that class runs it, with the
class's own defaults for keys the file leaves out (``from_pretrained`` does the same). Keys the class does not
read are ignored, as transformers ignores them, with a note. Anything that would change the pixels and has no
exact or documented-approximate counterpart in the spec is refused with a SpecError naming the key.

Supported classes (also as ``...ImageProcessorFast`` and the legacy ``...FeatureExtractor`` names): ViT,
DeiT, BEiT, CLIP, ConvNext, MobileNetV1, MobileNetV2, EfficientNet, BiT, SigLIP, MobileViT. Many models reuse
these (Swin, DINOv2, ResNet, RegNet, ...); other classes are refused unless ``processor_class`` names the
supported class whose behaviour they share.

Resample codes (PIL): 0 nearest, 2 bilinear, 3 bicubic and 4 box (spec ``area``, Pillow's box filter) map
exactly. 1 lanczos maps to bicubic and 5 hamming to bilinear: an approximation (values differ slightly near
edges), reported in the notes. Any other code is refused.

Other approximations, each reported in the notes: transformers truncates the long edge of a shortest-edge
resize where the spec rounds it (at most one pixel, before the center crop); a shortest-edge resize without a
center crop gives transformers a non-square tensor that follows each image's aspect, where the spec crops the
center square; images with transparency are composited on white by transformers' ``convert_rgb`` where the
spec drops the alpha channel; ``...Fast`` classes resize with torchvision, not Pillow.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from device_runtime._spec import SCHEMA, PreprocessSpec, parse_spec
from device_runtime.errors import SpecError
from signing.errors import FormatError
from signing.strict_json import parse_strict

__all__ = [
    "SUPPORTED_PROCESSORS",
    "labels_from_id2label",
    "parse_hf_json",
    "spec_from_hf_preprocessor",
]

MAX_CONFIG_BYTES = 1024 * 1024  # a preprocessor_config.json is a few hundred bytes

# transformers.image_utils constants.
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# PIL resample code -> (spec interpolation, note when approximate).
_RESAMPLE: dict[int, tuple[str, str | None]] = {
    0: ("nearest", None),
    1: ("bicubic", "resample 1 (lanczos) is not in the spec: mapped to bicubic (values differ slightly)"),
    2: ("bilinear", None),
    3: ("bicubic", None),
    4: ("area", None),  # the spec's area is Pillow's box filter
    5: ("bilinear", "resample 5 (hamming) is not in the spec: mapped to bilinear (values differ slightly)"),
}

# Keys that never change the pixels of an image input (metadata, label maps, tensor framework options).
_HARMLESS = frozenset(
    {
        "processor_class",
        "_processor_class",
        "image_processor_type",
        "feature_extractor_type",
        "auto_map",
        "do_reduce_labels",
        "reduce_labels",
        "ignore_index",
        "model_input_names",
        "return_tensors",
        "input_data_format",
        "device",
        "disable_grouping",
    }
)


@dataclass(frozen=True)
class _Processor:
    """What one transformers image processor class reads, and its defaults."""

    size: Mapping[str, int]
    resample: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    int_size_square: bool  # get_size_dict(int) -> {"height", "width"} (True) or {"shortest_edge"} (False)
    size_modes: tuple[str, ...]  # "hw" (stretch) and/or "shortest_edge"
    crop: tuple[bool, int] | None = None  # (default do_center_crop, default square crop size); None: no crop
    do_normalize: bool = True
    reads_normalize: bool = True  # False: the class never normalizes (do_normalize, image_mean/std unread)
    extras: Mapping[str, Any] = field(default_factory=dict)  # class-specific keys and their defaults


_HW, _SE = ("hw",), ("shortest_edge", "hw")
_PROCESSORS: dict[str, _Processor] = {
    "ViTImageProcessor": _Processor(
        {"height": 224, "width": 224}, 2, IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD, True, _HW
    ),
    "DeiTImageProcessor": _Processor(
        {"height": 256, "width": 256}, 3, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, True, _HW, (True, 224)
    ),
    "BeitImageProcessor": _Processor(
        {"height": 256, "width": 256},
        3,
        IMAGENET_STANDARD_MEAN,
        IMAGENET_STANDARD_STD,
        True,
        _HW,
        (True, 224),
    ),
    "CLIPImageProcessor": _Processor(
        {"shortest_edge": 224}, 3, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, False, _SE, (True, 224)
    ),
    "BitImageProcessor": _Processor(
        {"shortest_edge": 224}, 3, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, False, _SE, (True, 224)
    ),
    "ConvNextImageProcessor": _Processor(
        {"shortest_edge": 384},
        2,
        IMAGENET_DEFAULT_MEAN,
        IMAGENET_DEFAULT_STD,
        False,
        ("convnext",),
        extras={"crop_pct": 224 / 256},
    ),
    "MobileNetV1ImageProcessor": _Processor(
        {"shortest_edge": 256}, 2, IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD, False, _SE, (True, 224)
    ),
    "MobileNetV2ImageProcessor": _Processor(
        {"shortest_edge": 256}, 2, IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD, False, _SE, (True, 224)
    ),
    "EfficientNetImageProcessor": _Processor(
        {"height": 346, "width": 346},
        0,
        IMAGENET_STANDARD_MEAN,
        IMAGENET_STANDARD_STD,
        True,
        _HW,
        (False, 289),
        extras={"rescale_offset": False, "include_top": True},
    ),
    "SiglipImageProcessor": _Processor(
        {"height": 224, "width": 224}, 3, IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD, True, _HW
    ),
    "MobileViTImageProcessor": _Processor(
        {"shortest_edge": 224},
        2,
        (0.0, 0.0, 0.0),
        (1.0, 1.0, 1.0),
        False,
        _SE,
        (True, 256),
        do_normalize=False,
        reads_normalize=False,
        extras={"do_flip_channel_order": True},
    ),
}
SUPPORTED_PROCESSORS: tuple[str, ...] = tuple(sorted(_PROCESSORS))

# Keys every supported class reads (besides its extras and, for classes that crop, the crop keys).
_COMMON = frozenset(
    {
        "do_resize",
        "size",
        "resample",
        "do_rescale",
        "rescale_factor",
        "do_normalize",
        "image_mean",
        "image_std",
        "do_convert_rgb",
    }
)
_NORMALIZE_KEYS = frozenset({"do_normalize", "image_mean", "image_std"})
_CROP_KEYS = frozenset({"do_center_crop", "crop_size"})
# Keys some class reads; in a class that does not read them transformers ignores them (and so do we).
_KNOWN = (
    _COMMON
    | _CROP_KEYS
    | {k for p in _PROCESSORS.values() for k in p.extras}
    | {"do_pad", "pad_size", "size_divisor", "size_divisibility"}
)


def _show(value: object) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = f"a {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."


def _refuse(key: str, value: object, rule: str) -> NoReturn:
    raise SpecError(f"preprocessor config {key!r}: {_show(value)} is not allowed ({rule})")


def _bool(config: Mapping[str, Any], key: str, default: bool) -> bool:
    value = config.get(key)
    if value is None:  # transformers treats a null flag as "use the class default"
        return default
    if not isinstance(value, bool):
        _refuse(key, value, "expected true or false")
    return value


def _number(value: object, key: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _refuse(key, value, "expected a number")
    try:
        x = float(value)
    except OverflowError:
        x = math.inf
    if not math.isfinite(x):
        _refuse(key, value, "expected a finite number")
    if positive and not x > 0:
        _refuse(key, value, "expected a number > 0")
    return x


def _side(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 8192:
        _refuse(key, value, "expected an integer from 1 to 8192")
    return value


def _size_dict(value: object, key: str, *, int_square: bool) -> dict[str, int]:
    """transformers' get_size_dict: an int, a [height, width] list or a dict of positive ints."""
    if isinstance(value, int) and not isinstance(value, bool):
        side = _side(value, key)
        return {"height": side, "width": side} if int_square else {"shortest_edge": side}
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            _refuse(key, value, "a list size must be [height, width]")
        return {"height": _side(value[0], f"{key}[0]"), "width": _side(value[1], f"{key}[1]")}
    if not isinstance(value, Mapping):
        _refuse(key, value, 'expected an integer, [height, width], {"height", "width"} or {"shortest_edge"}')
    out = {str(k): _side(v, f"{key}.{k}") for k, v in value.items() if v is not None}
    if set(out) in ({"height", "width"}, {"shortest_edge"}):
        return out
    if "longest_edge" in out or "max_height" in out or "max_width" in out:
        _refuse(
            key,
            value,
            "a longest-edge limit makes the tensor size depend on each image; the spec needs a fixed "
            'size: use {"height", "width"} or {"shortest_edge"} alone',
        )
    _refuse(key, value, 'expected {"height": H, "width": W} or {"shortest_edge": N}')


def _per_channel(value: object, key: str, *, positive: bool = False) -> tuple[float, ...]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (_number(value, key, positive=positive),) * 3  # transformers broadcasts a single number
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        _refuse(key, value, "expected 3 numbers, one per RGB channel (or a single number)")
    return tuple(_number(v, f"{key}[{i}]", positive=positive) for i, v in enumerate(value))


def _class_name(config: Mapping[str, Any], override: str | None) -> str:
    raw = override
    if raw is None:
        raw = config.get("image_processor_type") or config.get("feature_extractor_type")
    if raw is None:
        raise SpecError(
            "preprocessor config: no 'image_processor_type' (or 'feature_extractor_type') to say which "
            f"processor it is for; add it or name the class (one of {', '.join(SUPPORTED_PROCESSORS)})"
        )
    if not isinstance(raw, str):
        _refuse("image_processor_type", raw, "expected a class name")
    name = raw.removesuffix("Fast")
    if name.endswith("FeatureExtractor"):
        name = name.removesuffix("FeatureExtractor") + "ImageProcessor"
    if name not in _PROCESSORS:
        raise SpecError(
            f"preprocessor config: processor class {raw!r} is not supported (supported: "
            f"{', '.join(SUPPORTED_PROCESSORS)}); if it preprocesses exactly like one, name that class"
        )
    return name


def spec_from_hf_preprocessor(
    config: Mapping[str, Any],
    *,
    input_name: str = "pixel_values",
    layout: str = "NCHW",
    dtype: str = "float32",
    output_name: str | None = None,
    num_labels: int | None = None,
    id2label: Mapping[Any, Any] | None = None,
    processor_class: str | None = None,
) -> tuple[PreprocessSpec, list[str]]:
    """Convert a decoded ``preprocessor_config.json`` into a spec with one image input; returns (spec, notes).

    ``processor_class`` overrides the file's ``image_processor_type``/``feature_extractor_type`` (needed for
    classes that are not supported but behave like a supported one). ``output_name`` adds one classification
    output (softmax, top_k 5 or fewer classes); with ``id2label`` (a model ``config.json``'s map) it also
    names ``labels.txt`` (write it with :func:`labels_from_id2label`). ``notes`` lists every approximation
    and every ignored key, in plain words. Raises SpecError naming the key that cannot be converted.
    """
    if not isinstance(config, Mapping):
        raise SpecError(f"preprocessor config: {_show(config)} is not allowed (expected a JSON object)")
    notes: list[str] = []
    name = _class_name(config, processor_class)
    proc = _PROCESSORS[name]
    raw_class = processor_class or config.get("image_processor_type") or config.get("feature_extractor_type")
    if isinstance(raw_class, str) and raw_class.endswith("Fast"):
        notes.append(
            f"{raw_class} resizes with torchvision; the spec resizes with Pillow like {name} "
            "(values may differ slightly)"
        )

    for key in config:
        if key in _HARMLESS:
            continue
        if key not in _KNOWN:
            raise SpecError(
                f"preprocessor config {key!r}: unknown key is not allowed (it may change the pixels and "
                "edgekit cannot reproduce it); remove it if it does not affect image preprocessing"
            )
    if _bool(config, "do_pad", False):
        _refuse("do_pad", True, "padding makes the tensor size depend on each image; the spec cannot pad")
    used = _COMMON | set(proc.extras) | (_CROP_KEYS if proc.crop is not None else set())
    if not proc.reads_normalize:
        used -= _NORMALIZE_KEYS
    ignored = sorted(k for k in config if k in _KNOWN and k not in used and k != "do_pad")
    ignored = [k for k in ignored if config[k] not in (None, False)]
    if ignored:
        notes.append(f"{name} does not read {', '.join(ignored)}; ignored, as transformers does")

    # Resize.
    if not _bool(config, "do_resize", True):
        _refuse(
            "do_resize",
            False,
            "without a resize the tensor size follows each image; the spec needs a fixed size: "
            "set do_resize to true and give size",
        )
    raw_size = config.get("size")
    size = (
        dict(proc.size) if raw_size is None else _size_dict(raw_size, "size", int_square=proc.int_size_square)
    )
    code = config.get("resample", proc.resample)
    if code is None:
        code = proc.resample
    if isinstance(code, bool) or not isinstance(code, int) or code not in _RESAMPLE:
        _refuse(
            "resample",
            code,
            "expected a PIL code: 0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming",
        )
    interpolation, approx = _RESAMPLE[code]
    if approx:
        notes.append(approx)

    crop: tuple[int, int] | None = None
    if proc.crop is not None and _bool(config, "do_center_crop", proc.crop[0]):
        raw_crop = config.get("crop_size")
        if raw_crop is None:
            crop = (proc.crop[1], proc.crop[1])
        else:
            crop_dict = _size_dict(raw_crop, "crop_size", int_square=True)
            if set(crop_dict) != {"height", "width"}:
                _refuse("crop_size", raw_crop, 'expected an integer or {"height": H, "width": W}')
            crop = (crop_dict["height"], crop_dict["width"])

    shortest = "shortest_edge" in size
    if shortest and "shortest_edge" not in proc.size_modes and "convnext" not in proc.size_modes:
        _refuse("size", raw_size, f'{name} needs {{"height": H, "width": W}}')
    if not shortest and "convnext" in proc.size_modes:
        _refuse("size", raw_size, f'{name} needs {{"shortest_edge": N}}')

    if "convnext" in proc.size_modes:
        edge = size["shortest_edge"]
        crop_pct = config.get("crop_pct")
        pct = proc.extras["crop_pct"] if crop_pct is None else _number(crop_pct, "crop_pct", positive=True)
        if edge < 384:
            # transformers: resize the shortest edge to int(edge / crop_pct), then center crop edge x edge.
            resized = int(edge / pct)
            if resized < edge:
                _refuse("crop_pct", crop_pct, "expected a number from 0 to 1 (the crop keeps that share)")
            resize, spec_size, crop = "shortest_edge", (resized, resized), (edge, edge)
            notes.extend(_shortest_edge_note())
        else:
            # transformers: warp to edge x edge, no crop.
            resize, spec_size, crop = "stretch", (edge, edge), None
    elif shortest:
        edge = size["shortest_edge"]
        resize, spec_size = "shortest_edge", (edge, edge)
        notes.extend(_shortest_edge_note())
        if crop is None:
            notes.append(
                f"shortest-edge resize to {edge} without a center crop: transformers gives a non-square "
                f"tensor that follows each image's aspect; the spec takes the center {edge}x{edge}"
            )
    else:
        resize, spec_size = "stretch", (size["height"], size["width"])
    if crop is not None:
        h, w = spec_size
        if crop[0] > h or crop[1] > w:
            _refuse(
                "crop_size",
                config.get("crop_size"),
                f"a center crop of {crop[0]}x{crop[1]} is larger than the resized {h}x{w} image; "
                "transformers would pad with zeros, the spec cannot",
            )
        if crop == spec_size and resize == "stretch":
            crop = None  # cropping a stretched image to its own size does nothing

    # Rescale, normalize (EfficientNet: rescale_offset subtracts 1 after rescaling; include_top divides by
    # image_std once more). Folded into the spec's x * rescale, (x - mean) / std.
    do_rescale = _bool(config, "do_rescale", True)
    factor = config.get("rescale_factor")
    rescale = (
        (1 / 255 if factor is None else _number(factor, "rescale_factor", positive=True))
        if do_rescale
        else 1.0
    )
    offset = 0.0
    if "rescale_offset" in proc.extras and do_rescale and _bool(config, "rescale_offset", False):
        offset = -1.0
        notes.append("rescale_offset (subtract 1 after rescaling) is folded into mean")
    if proc.reads_normalize and _bool(config, "do_normalize", proc.do_normalize):
        raw_mean, raw_std = config.get("image_mean"), config.get("image_std")
        mean = proc.mean if raw_mean is None else _per_channel(raw_mean, "image_mean")
        std = proc.std if raw_std is None else _per_channel(raw_std, "image_std", positive=True)
        if raw_mean is None or raw_std is None:
            notes.append(f"image_mean/image_std missing: used {name}'s defaults {list(mean)} / {list(std)}")
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if "include_top" in proc.extras and _bool(config, "include_top", proc.extras["include_top"]):
        raw_std = config.get("image_std")
        top_std = proc.std if raw_std is None else _per_channel(raw_std, "image_std", positive=True)
        std = tuple(s * t for s, t in zip(std, top_std, strict=True))
        notes.append("include_top (a second division by image_std) is folded into std")
    mean = tuple(m - offset for m in mean)

    color = "RGB"
    if "do_flip_channel_order" in proc.extras and _bool(
        config, "do_flip_channel_order", proc.extras["do_flip_channel_order"]
    ):
        color = "BGR"
        mean, std = mean[::-1], std[::-1]  # transformers flips after normalizing
    if _bool(config, "do_convert_rgb", False):
        notes.append(
            "do_convert_rgb: transformers composites transparent images on white; the spec drops the alpha"
        )

    image: dict[str, Any] = {
        "name": input_name,
        "kind": "image",
        "size": list(spec_size),
        "dtype": dtype,
        "layout": layout,
        "color": color,
        "resize": resize,
        "interpolation": interpolation,
        "center_crop": None if crop is None else list(crop),
        "rescale": rescale,
        "mean": list(mean),
        "std": list(std),
        "quantization": None,
    }
    if dtype in ("uint8", "int8"):
        notes.append(f"dtype {dtype}: add the model's input quantization (scale, zero_point) to the spec")
    doc: dict[str, Any] = {"schema": SCHEMA, "inputs": [image], "outputs": []}
    if output_name is not None:
        doc["outputs"].append(_output(output_name, num_labels, id2label))
    elif num_labels is not None or id2label is not None:
        raise SpecError("num_labels/id2label describe a classification output: give its output_name too")
    return parse_spec(doc), notes


def _shortest_edge_note() -> list[str]:
    return [
        "shortest-edge resize: transformers truncates the long edge, the spec rounds it (at most one "
        "pixel before the center crop)"
    ]


def _output(name: str, num_labels: int | None, id2label: Mapping[Any, Any] | None) -> dict[str, Any]:
    if num_labels is not None and (isinstance(num_labels, bool) or not isinstance(num_labels, int)):
        _refuse("num_labels", num_labels, "expected a positive integer")
    if num_labels is not None and num_labels < 1:
        _refuse("num_labels", num_labels, "expected a positive integer")
    classes = num_labels
    if id2label is not None:
        count = len(labels_from_id2label(id2label))
        if num_labels is not None and count != num_labels:
            _refuse("num_labels", num_labels, f"id2label names {count} classes")
        classes = count
    output: dict[str, Any] = {"name": name, "kind": "classification", "activation": "softmax", "top_k": 5}
    if classes is not None:
        output["top_k"] = min(5, classes)
    if id2label is not None:
        output["labels"] = "labels.txt"
    return output


def labels_from_id2label(id2label: Mapping[Any, Any]) -> list[str]:
    """Class names in index order from a ``config.json`` ``id2label`` map (keys "0".."n-1" or ints).

    The result is ready for ``labels.txt`` (one per line). Raises SpecError for gaps, duplicate indices,
    non-string names, empty names and names holding a line break.
    """
    if not isinstance(id2label, Mapping) or not id2label:
        _refuse("id2label", id2label, "expected a non-empty object of class index to name")
    by_index: dict[int, str] = {}
    for key, value in id2label.items():
        try:
            index = int(key) if not isinstance(key, bool) else -1
        except (TypeError, ValueError):
            index = -1
        if index < 0 or str(index) != str(key).strip():
            _refuse(f"id2label.{key}", key, "keys must be class indices 0, 1, 2, ...")
        if index in by_index:
            _refuse(f"id2label.{key}", key, "each class index may appear once")
        if not isinstance(value, str) or not value.strip() or "\n" in value or "\r" in value:
            _refuse(f"id2label.{key}", value, "a label must be a non-empty string on one line")
        by_index[index] = value
    if sorted(by_index) != list(range(len(by_index))):
        missing = min(set(range(len(by_index))) - set(by_index))
        _refuse("id2label", id2label, f"class index {missing} is missing; indices must be 0..n-1")
    return [by_index[i] for i in range(len(by_index))]


def parse_hf_json(data: bytes | str) -> dict[str, Any]:
    """Strictly decode a ``preprocessor_config.json``: UTF-8 JSON object, at most 1 MiB, no duplicate keys,
    no NaN/Infinity. Raises SpecError saying what is wrong."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        doc = parse_strict(raw, what="preprocessor config", max_bytes=MAX_CONFIG_BYTES)  # the one parser
    except FormatError as e:
        raise SpecError(f"{e}; fix the file") from e
    if not isinstance(doc, dict):
        raise SpecError(f"{_show(doc)} is not allowed (expected a JSON object)")
    return doc
