"""What every page of the Streamlit app shares: the sidebar (model, image, label map), the cached
model objects, and the one cached forward pass per (model, image, device).

Every page starts with ``selection = app_sidebar.render()``. Heavy objects live behind
``st.cache_resource`` in this one module, so all pages and sessions share them; per-user state
(points, widget choices, uploads) lives in ``st.session_state``.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import streamlit as st

from danet.checkpoints import DILATIONS
from danet.checkpoints.meta import LoadedModel
from danet.data.images import ImageLoadError, LoadedImage, load_image
from danet.data.palettes import DATASETS
from danet.device import select_device
from danet.inspection import InspectionResult, inspect_image
from danet.loading import load_any
from danet.session import (FORWARDS, LabelMapError, Selection, file_stamp, prepare_label_map,
                           result_key, sha256_bytes)
from danet.viz import legend
from danet.weights import DEFAULT_WEIGHTS

ROOT = Path(__file__).resolve().parent
SAMPLES = ROOT / "assets" / "samples"
SAMPLE_DATASET = "camvid"          # the samples' label maps use CamVid class ids
IMAGE_TYPES = ["png", "jpg", "jpeg", "webp", "bmp"]
CHECKPOINT_TYPES = ["safetensors", "pth", "pt", "tar", "bin", "ckpt"]
DEFAULT_SOURCE, UPLOAD_SOURCE = "Default (CamVid, MobileNetV2)", "Upload a checkpoint"
SAMPLE_SOURCE, IMAGE_UPLOAD_SOURCE = "Sample", "Upload an image"
DILATION_HELP = {"4-8-16": "multi-grid, official DANet101", "2-4-4": "mmsegmentation, Tramac",
                 "1-2-2": "output stride 16", "2-4-8": "output stride 16, multi-grid",
                 "1-1-1": "output stride 32, no dilation"}
DEVICE = str(select_device("auto"))
PAGES = (("app.py", "Inspector", ":material/ads_click:"),          # own links: the automatic menu
         ("pages/1_Channel_attention.py", "Channel attention", ":material/grid_on:"),  # would say "app"
         ("pages/2_Model_details.py", "Model details", ":material/info:"))


# ---- cached heavy objects (shared by all sessions, keyed by content hashes) ---------------------
@st.cache_resource(max_entries=3, show_spinner=False)
def load_default_model(stamp: str, device: str) -> LoadedModel:
    """The embedded default; ``stamp`` (size + mtime) makes a retrained file a new cache entry."""
    return load_any(None, device=device)


@st.cache_resource(max_entries=3, show_spinner=False)
def load_uploaded_model(digest: str, filename: str, dilation: str | None, dataset: str | None,
                        device: str, _data: bytes) -> LoadedModel:
    """Write the upload to a private temp dir, load it with the package loader, delete the copy."""
    suffix = "".join(Path(filename).suffixes)[-24:] or ".bin"
    with tempfile.TemporaryDirectory(prefix="danet-upload-") as folder:
        path = Path(folder) / f"checkpoint{suffix}"
        path.write_bytes(_data)
        return load_any(path, device=device, dilation=dilation, dataset=dataset, name=filename)


@st.cache_resource(max_entries=16, show_spinner=False)
def decode_image(digest: str, max_pixels: int, _data: bytes) -> LoadedImage:
    return load_image(_data, max_pixels=max_pixels)


@st.cache_resource(max_entries=8, show_spinner=False)
def run_forward(key: str, _loaded: LoadedModel, _image: np.ndarray) -> InspectionResult:
    """The only place the network runs: once per ``result_key`` (model id, image hash, device)."""
    result = inspect_image(_loaded.model, _image, _loaded.meta.mean, _loaded.meta.std)
    FORWARDS.record(result.seconds)
    return result


# ---- per-session memory -------------------------------------------------------------------------
def sticky(widget, label: str, *args, key: str, default, **kwargs):
    """Draw ``widget`` so its value survives page changes.

    Streamlit resets a widget that the previous page did not draw, so every page would reset
    the sidebar; the last value is kept in ``session_state["kept_widgets"]`` and passed back as
    the widget's initial value (``index`` for choice widgets, ``value`` for the others).
    """
    kept = st.session_state.setdefault("kept_widgets", {})
    value = kept.get(key, default)
    options = args[0] if args and isinstance(args[0], (list, tuple)) else None
    if options is not None:
        kwargs["index"] = list(options).index(value if value in options else default)
    else:
        kwargs["value"] = value
    value = widget(label, *args, key=key, **kwargs)
    kept[key] = value
    return value


def _upload_changed(key: str) -> None:
    """file_uploader on_change: keep the bytes so other pages (which draw a fresh uploader) see them."""
    kept = st.session_state.setdefault("kept_uploads", {})
    upload = st.session_state.get(key)
    if upload is None:
        kept.pop(key, None)            # the user removed the file
    else:
        kept[key] = (upload.name, upload.getvalue())


def uploaded(label: str, key: str, types: list[str], **kwargs) -> tuple[str, bytes] | None:
    """A file uploader whose file survives page changes: (name, bytes) or None."""
    st.sidebar.file_uploader(label, type=types, key=key, on_change=_upload_changed, args=(key,), **kwargs)
    kept = st.session_state.get("kept_uploads", {}).get(key)
    current = st.session_state.get(key)
    if current is not None and (kept is None or kept[0] != current.name):
        kept = (current.name, current.getvalue())          # e.g. set without a change event
        st.session_state.setdefault("kept_uploads", {})[key] = kept
    if kept is not None and current is None:
        st.sidebar.caption(f"Using `{kept[0]}`, uploaded earlier. Upload another file to replace it.")
    return kept


def remembered_failure(key: str) -> str | None:
    """Bad uploads are parsed once: their error is kept, not re-raised on every rerun."""
    return st.session_state.setdefault("failures", {}).get(key)


def remember_failure(key: str, message: str) -> None:
    st.session_state.setdefault("failures", {})[key] = message


def describe_error(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    if isinstance(error, KeyError) and text.startswith(("'", '"')):
        text = text[1:-1]
    return text if isinstance(error, (ValueError, KeyError, OSError)) else f"{type(error).__name__}: {text}"


# ---- sidebar: model ---------------------------------------------------------------------------
def choose_model() -> tuple[LoadedModel | None, str]:
    st.sidebar.header("Model")
    source = sticky(st.sidebar.radio, "Weights", [DEFAULT_SOURCE, UPLOAD_SOURCE], key="model_source",
                    default=DEFAULT_SOURCE, label_visibility="collapsed")
    if source == DEFAULT_SOURCE:
        return _default_model()
    upload = uploaded("Checkpoint (.safetensors, .pth, .pth.tar, .pt)", "checkpoint_upload", CHECKPOINT_TYPES,
                      help="danet-lens .safetensors, the official DANet .pth.tar, mmsegmentation or "
                           "Tramac state dicts. Pickles are opened with weights_only=True.")
    with st.sidebar.expander("What the file cannot tell", expanded=True):
        dilation = sticky(st.selectbox, "Backbone dilation (ResNet layer4)", [None] + list(DILATIONS),
                          key="dilation", default=None,
                          format_func=lambda d: "layout default" if d is None else f"{d} ({DILATION_HELP.get(d, '')})",
                          help="Weights have the same shapes for every dilation; only the forward changes. "
                               "The official DANet101 uses multi-grid 4-8-16, mmseg and Tramac 2-4-4.")
        dataset = sticky(st.selectbox, "Dataset (class names and colours)", [None] + sorted(DATASETS),
                         key="dataset_choice", default=None,
                         format_func=lambda d: "detect from the file" if d is None else d)
    if upload is None:
        st.sidebar.info("Upload a checkpoint to inspect it.")
        return None, ""
    name, data = upload
    digest = sha256_bytes(data)
    model_id = f"upload:{digest[:16]}:{dilation}:{dataset}"
    failure = remembered_failure(model_id)
    if failure is None:
        try:
            with st.spinner(f"Loading {name}..."):
                return load_uploaded_model(digest, name, dilation, dataset, DEVICE, data), model_id
        except Exception as error:  # noqa: BLE001 - a bad file must not crash the app
            failure = describe_error(error)
            remember_failure(model_id, failure)
    st.sidebar.error(f"Could not load `{name}`: {failure}")
    return None, ""


def _default_model() -> tuple[LoadedModel | None, str]:
    if not DEFAULT_WEIGHTS.exists():
        st.sidebar.error("The default weights are not there yet "
                         f"(`{DEFAULT_WEIGHTS.relative_to(ROOT)}`). Upload a checkpoint instead.")
        return None, ""
    stamp = file_stamp(DEFAULT_WEIGHTS)
    # A session keeps the weights it started with (training may rewrite the file meanwhile).
    pinned = st.session_state.setdefault("default_stamp", stamp)
    if pinned != stamp:
        st.sidebar.info("Newer default weights were saved since this session loaded them.")
        if st.sidebar.button("Use the newer default weights", key="reload_default"):
            st.session_state["default_stamp"] = pinned = stamp
    try:
        with st.spinner("Loading the default model..."):
            return load_default_model(pinned, DEVICE), f"default:{pinned}"
    except Exception as error:  # noqa: BLE001 - shown to the user, the app keeps running
        st.sidebar.error(f"Could not load the default weights: {describe_error(error)}")
        return None, ""


def show_model_summary(loaded: LoadedModel) -> None:
    config = loaded.meta.config
    st.sidebar.caption(
        f"**{config.backbone}** (stem {config.stem}, output stride {config.output_stride}"
        f"{', multi-grid' if config.multi_grid else ''}) · layout **{loaded.meta.layout}** · "
        f"{config.num_classes} classes · dataset **{loaded.meta.dataset.name}** · device **{DEVICE}**")
    for warning in loaded.warnings:
        st.sidebar.warning(warning)
    with st.sidebar.expander("Classes and colours"):
        st.image(legend(loaded.meta.classes, loaded.meta.palette), width="content")


# ---- sidebar: image + label map -----------------------------------------------------------------
def sample_files() -> list[Path]:
    return sorted(p for p in SAMPLES.glob("*") if p.suffix.lower().lstrip(".") in IMAGE_TYPES)


def choose_image() -> tuple[LoadedImage | None, str, str, bytes | None]:
    """(image, display name, sha256 of the file bytes, label-map bytes or None)."""
    st.sidebar.header("Image")
    samples = sample_files()
    options = ([SAMPLE_SOURCE] if samples else []) + [IMAGE_UPLOAD_SOURCE]
    source = sticky(st.sidebar.radio, "Image source", options, key="image_source", default=options[0],
                    label_visibility="collapsed")
    label_bytes = None
    if source == SAMPLE_SOURCE:
        names = [p.name for p in samples]
        name = sticky(st.sidebar.selectbox, "Sample (CamVid val)", names, key="sample", default=names[0])
        data = (SAMPLES / name).read_bytes()
        label_path = SAMPLES / "labels" / f"{Path(name).stem}_labels.png"
        if label_path.exists() and sticky(st.sidebar.checkbox, "Score against its ground truth",
                                          key="use_sample_labels", default=True):
            label_bytes = label_path.read_bytes()
    else:
        upload = uploaded("Image (PNG, JPEG, WebP, BMP)", "image_upload", IMAGE_TYPES)
        label_upload = uploaded("Label map (optional, class-id PNG)", "label_upload", ["png", "bmp"])
        if upload is None:
            return None, "", "", None
        name, data = upload
        label_bytes = label_upload[1] if label_upload is not None else None
    with st.sidebar.expander("Input size limit"):
        megapixels = sticky(st.number_input, "Downscale above (megapixels)", 0.1, 4.2, key="max_mp",
                            default=1.0, step=0.1,
                            help="Larger images are downscaled: PAM cost grows with the square of the "
                                 "number of pixels.")
    max_pixels = int(megapixels * 1e6)
    digest = sha256_bytes(data)
    failure = remembered_failure(f"image:{digest}:{max_pixels}")
    if failure is None:
        try:
            image = decode_image(digest, max_pixels, data)
        except ImageLoadError as error:
            failure = str(error)
            remember_failure(f"image:{digest}:{max_pixels}", failure)
        else:
            for notice in image.notices:
                st.sidebar.info(notice)
            return image, name, digest, label_bytes
    st.sidebar.error(f"Could not use `{name}`: {failure}")
    return None, name, "", None


def check_label_map(loaded: LoadedModel, image: LoadedImage, data: bytes | None):
    if data is None:
        return None
    try:
        labels = prepare_label_map(data, image.array.shape[:2], loaded.meta.config.num_classes,
                                   loaded.meta.dataset.ignore_index, loaded.meta.palette)
    except LabelMapError as error:
        st.sidebar.error(f"Label map not used: {error}")
        return None
    for notice in labels.notices:
        st.sidebar.info(notice)
    return labels


# ---- the shared selection -------------------------------------------------------------------------
def build_selection() -> Selection | None:
    st.session_state.setdefault("points", [])
    loaded, model_id = choose_model()
    if loaded is not None:
        show_model_summary(loaded)
    image, name, digest, label_bytes = choose_image()
    if loaded is None or image is None:
        return None
    if (label_bytes is not None and st.session_state.get("image_source") == SAMPLE_SOURCE
            and loaded.meta.dataset.name != SAMPLE_DATASET):
        st.sidebar.info(f"The samples' ground truth uses {SAMPLE_DATASET} classes; this model predicts "
                        f"{loaded.meta.dataset.name} classes, so it is not scored against it.")
        label_bytes = None
    labels = check_label_map(loaded, image, label_bytes)
    if st.session_state.get("points_image") != digest:     # points belong to one image
        st.session_state["points"] = []
        st.session_state["points_image"] = digest
    height, width = image.array.shape[:2]          # the same file at another size limit is another input
    key = result_key(model_id, f"{digest}@{width}x{height}", DEVICE)
    failure = remembered_failure(key)
    result, forwards_before = None, FORWARDS.total
    if failure is None:
        try:
            with st.spinner(f"Running DANet on {name} ({DEVICE})..."):
                result = run_forward(key, loaded, image.array)
        except Exception as error:  # noqa: BLE001 - e.g. out of memory on a huge input
            failure = describe_error(error)
            remember_failure(key, failure)
    if failure is not None:
        st.error(f"The forward pass failed: {failure}")
        return None
    return Selection(loaded=loaded, model_id=model_id, image=image.array, image_name=name,
                     image_sha256=digest, original_size=image.original_size, result=result,
                     result_key=key, labels=labels, device=DEVICE,
                     computed_now=FORWARDS.total > forwards_before)


def render() -> Selection | None:
    """Draw the sidebar and run (or reuse) the forward pass; None when something is missing or bad."""
    st.set_page_config(page_title="danet-lens", page_icon=":material/visibility:", layout="wide")
    for page, label, icon in PAGES:
        st.sidebar.page_link(page, label=label, icon=icon)
    selection = build_selection()
    st.session_state["selection"] = selection
    return selection


def show_diagnostics() -> None:
    """Sidebar panel the tests read: how many forward passes this server process has run."""
    with st.sidebar.expander("Diagnostics"):
        st.markdown(f"forward passes: **{FORWARDS.total}**",
                    help="Process-wide count of network runs. Clicks, sliders and page changes "
                         "reuse the cached result.")
        selection = st.session_state.get("selection")
        if selection is not None:
            st.caption(f"device {selection.device} · forward {selection.result.seconds:.2f} s · "
                       f"result key `{selection.result_key}`")
        for label, seconds in st.session_state.get("timings", {}).items():
            st.caption(f"{label}: {seconds * 1000:.0f} ms")
