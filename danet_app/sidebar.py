"""What every page of the app shares: the sidebar (model, image, label map), the cached model
objects, and the one cached forward pass per (model, image, device).

``app.py`` calls ``render()`` once per run, before the chosen page runs; pages read the result
with ``current()``. Because the entrypoint draws the sidebar on every page, its widgets keep
their values across page changes by themselves. Heavy objects live behind
``st.cache_resource`` here, keyed by content hashes, so all pages and sessions share them;
per-user state (points, widget choices) lives in ``st.session_state``. Uploaded models, decoded
images and forward results live in byte-bounded caches (``danet_app.budget``), and uploaded
images and label maps are decoded in a limited child process (``danet.data.isolated``).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import streamlit as st

import danet
from danet.checkpoints import DILATIONS
from danet.checkpoints.meta import LoadedModel
from danet.data.images import IMAGE_SUFFIXES, LoadedImage, load_image
from danet.data.isolated import load_image_isolated, load_label_map_isolated
from danet.data.palettes import DATASETS
from danet.errors import CheckpointError, DanetError
from danet.inspection import InspectionResult, inspect_image
from danet.loader import DEFAULT_SOURCE as DEFAULT_NAME
from danet.render.overlays import legend
from danet.weights import default_weights_path
from danet_app import budget
from danet_app.budget import ByteBudgetCache
from danet_app.literal import code, md, visible
from danet_app.timeline import mark
from danet_app.state import (FORWARDS, LabelMap, Selection, dataset_guess, file_sha256, model_id, prepare_label_map,
                             result_key, sha256_bytes, switch_image_points)

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "assets" / "samples"       # a source checkout has them; an installed app offers uploads only
SAMPLE_DATASET = "camvid"                   # the samples' label maps use CamVid class ids
IMAGE_TYPES = [suffix.lstrip(".") for suffix in IMAGE_SUFFIXES]   # every format the decoder reads (its message
IMAGE_LABEL = "Image (PNG, JPEG, GIF, WebP, BMP, TIFF)"              # lists them: the two must agree)
CHECKPOINT_TYPES = ["safetensors", "pth", "pt", "tar", "bin", "ckpt"]
DEFAULT_SOURCE, UPLOAD_SOURCE = "Default (CamVid, MobileNetV2)", "Upload a checkpoint"
SAMPLE_SOURCE, IMAGE_UPLOAD_SOURCE = "Sample", "Upload an image"
DILATION_HELP = {"4-8-16": "multi-grid, official DANet101", "2-4-4": "mmsegmentation, Tramac",
                 "1-2-2": "output stride 16", "2-4-8": "output stride 16, multi-grid",
                 "1-1-1": "output stride 32, no dilation"}
DEVICE = str(danet.select_device("auto"))
MIN_MEGAPIXELS = 0.01           # the size limit's lowest setting (about 115 x 87 pixels)
DEFAULT_MEGAPIXELS = 1.0        # the size limit's default: uploads above 1 MP are downscaled
LEGEND_ROWS = 30                # classes the sidebar legend draws at once (3,000 classes: 100 pages)
LEGEND_NAME_CHARS = 40          # longer class names are cut in the legend (the loader allows 200)


# ---- cached heavy objects (shared by all sessions, keyed by content hashes) ---------------------
@st.cache_resource(max_entries=3, show_spinner=False)
def load_default_model(digest: str, device: str) -> LoadedModel:
    """The shipped weights whose bytes hash to ``digest``, through ``danet.load`` like any upload.

    The bytes that are hashed are the bytes that are loaded; if the file was rewritten since
    ``digest`` was taken (a training run's ``--export``), the old weights are gone and this says so.
    """
    data = default_weights_path().read_bytes()
    if sha256_bytes(data) != digest:
        raise CheckpointError("the default weights changed on disk since this session loaded them")
    return danet.load(data, device=device, name=DEFAULT_NAME)


@st.cache_resource(show_spinner=False)
def app_caches() -> dict[str, ByteBudgetCache]:
    """The byte-bounded caches every session shares (``danet_app.budget``), one per kind.

    Held by ``st.cache_resource`` so that ``st.cache_resource.clear()`` empties them too; the
    budgets are read when they are made (``DANET_APP_*_CACHE_MB``).
    """
    return {"model": ByteBudgetCache(budget.MODEL_BUDGET, "uploaded model"),
            "result": ByteBudgetCache(budget.RESULT_BUDGET, "forward result"),
            "image": ByteBudgetCache(budget.IMAGE_BUDGET, "decoded image")}


def load_uploaded_model(digest: str, filename: str, dilation: str | None, dataset: str | None,
                        device: str, data: bytes) -> LoadedModel:
    """An upload, read from memory by ``danet.load`` (pickles in its limited child process;
    nothing is written to disk), kept while it fits the models' byte budget."""
    return app_caches()["model"].get(
        ("model", digest, filename, dilation, dataset, device),
        lambda: danet.load(data, device=device, dilation=dilation, dataset=dataset, name=filename),
        budget.model_bytes, detail=f"{filename} (in memory)")


def decode_image(digest: str, max_pixels: int, data: bytes) -> LoadedImage:
    """An uploaded image, decoded in a limited child process (``danet.data.isolated``): a slow or
    hostile file costs that child, never the server's memory, lock or other sessions."""
    return app_caches()["image"].get(("image", digest, max_pixels),
                                     lambda: load_image_isolated(data, max_pixels),
                                     lambda image: image.array.nbytes)


def decode_sample(path: Path, digest: str, max_pixels: int) -> LoadedImage:
    """A shipped sample (trusted, in the package): decoded in-process, once per size limit."""
    return app_caches()["image"].get(("sample", digest, max_pixels), lambda: load_image(path, max_pixels),
                                     lambda image: image.array.nbytes)


def cached_label_map(data: bytes, image_size: tuple[int, int], loaded: LoadedModel, trusted: bool) -> LabelMap:
    """A checked label map, decoded once per (file, image size, classes): the landing page's sample
    ground truth is never decoded again on a rerun; uploads are decoded in a limited child."""
    meta = loaded.meta
    palette = np.asarray(meta.palette, dtype=np.uint8)
    key = ("labels", sha256_bytes(data), tuple(image_size), meta.config.num_classes, meta.dataset.ignore_index,
           sha256_bytes(palette.tobytes()))
    reader = None if trusted else load_label_map_isolated
    return app_caches()["image"].get(
        key, lambda: prepare_label_map(data, image_size, meta.config.num_classes, meta.dataset.ignore_index,
                                       palette, reader=reader),
        lambda labels: labels.labels.nbytes)


def run_forward(key: str, loaded: LoadedModel, image: np.ndarray) -> InspectionResult:
    """The only place the network runs: once per ``result_key`` (model id, image hash, device).

    A result whose class scores alone would exceed the results' byte budget is refused before
    the forward, saying how small an image this model can take; ``inspect_image`` itself refuses
    a forward that will not fit in free memory (``danet.inspection.memory.check_inspection_fits``).
    """
    height, width = image.shape[:2]
    classes = loaded.meta.config.num_classes
    cache = app_caches()["result"]
    largest = budget.max_megapixels(classes, cache.budget)
    advice = (f"lower \"Downscale above (megapixels)\" to {largest:.2g} or less" if largest >= MIN_MEGAPIXELS
              else f"this model has too many classes for the app at any image size (at most {largest:.3f} MP)")

    def compute() -> InspectionResult:
        result = inspect_image(loaded.model, image, loaded.meta.mean, loaded.meta.std)
        FORWARDS.record(result.seconds)
        return result

    return cache.get(key, compute, budget.result_bytes,
                     expected_bytes=budget.result_bytes_estimate(classes, height, width),
                     detail=f"the result for a {width}x{height} image with {classes:,} classes", advice=advice)


# ---- messages for the main area -------------------------------------------------------------------
MESSAGES = "main_messages"


def tell(kind: str, text: str) -> None:
    """Keep a refusal or notice (``kind``: error, warning, info; ``text``: markdown, outside text
    escaped) for the main area: the sidebar's bottom is below the fold, so the page shows them
    next to what they affect (``show_messages``)."""
    st.session_state.setdefault(MESSAGES, []).append((kind, text))


def messages(kind: str | None = None) -> list[tuple[str, str]]:
    """This run's messages (of one kind)."""
    return [m for m in st.session_state.get(MESSAGES, []) if kind is None or m[0] == kind]


def show_messages() -> None:
    """The sidebar's refusals and notices of this run, in the main area where this is called."""
    for kind, text in messages():
        getattr(st, kind)(text)


# ---- per-session memory of failures -------------------------------------------------------------
def remembered_failure(key: str) -> str | None:
    """Bad uploads are parsed once: their error is kept, not re-raised on every rerun."""
    return st.session_state.setdefault("failures", {}).get(key)


def remember_failure(key: str, message: str) -> None:
    st.session_state.setdefault("failures", {})[key] = message


def describe_error(error: Exception) -> str:
    """Our own errors are one-line messages for the user; anything else also names its type."""
    text = str(error).strip() or type(error).__name__
    if isinstance(error, KeyError) and not isinstance(error, DanetError) and text.startswith(("'", '"')):
        text = text[1:-1]
    return text if isinstance(error, (ValueError, KeyError, OSError)) else f"{type(error).__name__}: {text}"


# ---- sidebar: model ---------------------------------------------------------------------------
def choose_model() -> tuple[LoadedModel | None, str, str]:
    """(loaded model or None, its model id, the sha256 of its weights file)."""
    st.sidebar.header("Model")
    source = st.sidebar.radio("Weights", [DEFAULT_SOURCE, UPLOAD_SOURCE], key="model_source",
                              label_visibility="collapsed")
    if source == DEFAULT_SOURCE:
        return _default_model()
    upload = st.sidebar.file_uploader(
        "Checkpoint (.safetensors, .pth, .pth.tar, .pt)", type=CHECKPOINT_TYPES, key="checkpoint_upload",
        help="danet-lens .safetensors, the official DANet .pth.tar, mmsegmentation or Tramac state dicts. "
             "Pickles are opened with weights_only=True.")
    with st.sidebar.expander("What the file cannot tell", expanded=True):
        dilation = st.selectbox(
            "Backbone dilation (ResNet layer4)", [None] + list(DILATIONS), key="dilation",
            persist_state="session",      # drawn only for uploads: kept across a visit to the default
            format_func=lambda d: "layout default" if d is None else f"{d} ({DILATION_HELP.get(d, '')})",
            help="Weights have the same shapes for every dilation; only the forward changes. "
                 "The official DANet101 uses multi-grid 4-8-16, mmseg and Tramac 2-4-4.")
        dataset = st.selectbox("Dataset (class names and colours)", [None] + sorted(DATASETS),
                               key="dataset_choice", persist_state="session",
                               format_func=lambda d: "detect from the file" if d is None else d)
    if upload is None:
        st.sidebar.info("Upload a checkpoint to inspect it.")
        return None, "", ""
    name, data = upload.name, upload.getvalue()
    digest = sha256_bytes(data)
    identity = model_id(digest, dilation, dataset)
    failure = remembered_failure(identity)
    if failure is None:
        try:
            with st.spinner(f"Loading {code(name)}..."):
                return load_uploaded_model(digest, name, dilation, dataset, DEVICE, data), identity, digest
        except Exception as error:  # noqa: BLE001 - a bad file must not crash the app
            failure = describe_error(error)
            remember_failure(identity, failure)
    tell("error", f"Could not load {code(name)}: {md(failure)}")
    return None, "", ""


def _default_model() -> tuple[LoadedModel | None, str, str]:
    path = default_weights_path()
    if not path.is_file():
        tell("error", f"The default weights are missing from the installed package ({code(path)}). "
                         "Upload a checkpoint instead.")
        return None, "", ""
    digest = file_sha256(path)
    # A session keeps the weights it started with (a training run may rewrite the file meanwhile).
    pinned = st.session_state.setdefault("default_sha256", digest)
    if pinned != digest:
        st.sidebar.info("Newer default weights were saved since this session loaded them.")
        if st.sidebar.button("Use the newer default weights", key="reload_default"):
            st.session_state["default_sha256"] = pinned = digest
    try:
        with st.spinner("Loading the default model..."):
            return load_default_model(pinned, DEVICE), model_id(pinned), pinned
    except Exception as error:  # noqa: BLE001 - shown to the user, the app keeps running
        tell("error", f"Could not load the default weights: {md(describe_error(error))}")
        return None, "", ""


def model_caption(loaded: LoadedModel, device: str) -> str:
    """One line about the model; the stem is named only for ResNets (timm backbones have none)."""
    config = loaded.meta.config
    details = [f"stem {config.stem}"] if config.stem is not None else []
    details.append(f"output stride {config.output_stride}" + (", multi-grid" if config.multi_grid else ""))
    return (f"**{md(config.backbone)}** ({md(', '.join(details))}) · layout **{md(loaded.meta.layout)}** · "
            f"{config.num_classes} classes · dataset **{md(loaded.meta.dataset.name)}**"
            + (f" ({md(guess)})" if (guess := dataset_guess(loaded.meta.extra)) else "")
            + f" · device **{md(device)}**")


def show_model_summary(loaded: LoadedModel) -> None:
    st.sidebar.caption(model_caption(loaded, DEVICE))
    for warning in loaded.warnings:
        tell("warning", f"The model: {md(warning)}")
    with st.sidebar.expander("Classes and colours"):
        show_legend(loaded.meta.classes, loaded.meta.palette)


def short_name(name: str, limit: int = LEGEND_NAME_CHARS) -> str:
    """A class name cut to ``limit`` characters (with an ellipsis) for the legend."""
    name = visible(" ".join(str(name).split()))       # a right-to-left override shows as \u202e
    return name if len(name) <= limit else name[:limit - 1] + "…"


def matching_classes(classes: tuple[str, ...], query: str) -> list[int]:
    """Ids of the classes whose name contains ``query`` (any case), or whose id it is."""
    query = query.strip().lower()
    if not query:
        return list(range(len(classes)))
    return [i for i, name in enumerate(classes) if query in name.lower() or query == str(i)]


def show_legend(classes: tuple[str, ...], palette: np.ndarray, key: str = "legend") -> None:
    """The class legend, bounded whatever the model: at most ``LEGEND_ROWS`` classes are drawn
    (a search box and pages beyond that; 3,000 classes in one image were 72,006 px high), and
    names are cut to ``LEGEND_NAME_CHARS`` characters."""
    ids = list(range(len(classes)))
    if len(classes) > LEGEND_ROWS:
        query = st.text_input("Find a class", key=f"{key}_query", placeholder="name or id",
                              max_chars=LEGEND_NAME_CHARS)
        ids = matching_classes(classes, query)
        pages = max(1, -(-len(ids) // LEGEND_ROWS))
        page = 1
        if pages > 1:      # keyed by what it pages through: a new search starts on page 1
            page = int(st.number_input(f"Page (of {pages})", 1, pages, 1, key=f"{key}_page:{len(classes)}:{query}"))
        ids = ids[(page - 1) * LEGEND_ROWS: page * LEGEND_ROWS]
        st.caption(f"{len(classes):,} classes" + (f" · {len(ids)} shown" if ids else " · no class matches"))
    if ids:
        names = [f"{i} {short_name(name)}" for i, name in enumerate(classes)] if len(classes) > LEGEND_ROWS \
            else [short_name(name) for name in classes]
        st.image(legend(names, palette, present=ids), width="content")


# ---- sidebar: image + label map -----------------------------------------------------------------
def sample_files() -> list[Path]:
    return sorted(p for p in SAMPLES.glob("*") if p.suffix.lower().lstrip(".") in IMAGE_TYPES)


def choose_image() -> tuple[LoadedImage | None, str, str, bytes | None]:
    """(image, display name, sha256 of the file bytes, label-map bytes or None)."""
    st.sidebar.header("Image")
    samples = sample_files()
    options = ([SAMPLE_SOURCE] if samples else []) + [IMAGE_UPLOAD_SOURCE]
    source = st.sidebar.radio("Image source", options, key="image_source", label_visibility="collapsed")
    name, data, label_bytes = "", None, None
    if source == SAMPLE_SOURCE:
        name = st.sidebar.selectbox("Sample (CamVid val)", [p.name for p in samples], key="sample",
                                    persist_state="session")
        data = SAMPLES / name              # trusted: decoded in-process, once (``decode_sample``)
        label_path = SAMPLES / "labels" / f"{Path(name).stem}_labels.png"
        if label_path.exists() and st.sidebar.checkbox("Score against its ground truth", value=True,
                                                       key="use_sample_labels", persist_state="session"):
            label_bytes = label_path.read_bytes()
    else:
        upload = st.sidebar.file_uploader(IMAGE_LABEL, type=IMAGE_TYPES, key="image_upload")
        label_upload = st.sidebar.file_uploader("Label map (optional, class-id PNG)", type=["png", "bmp"],
                                                key="label_upload")
        if upload is not None:
            name, data = upload.name, upload.getvalue()
        label_bytes = label_upload.getvalue() if label_upload is not None else None
    with st.sidebar.expander("Input size limit"):
        megapixels = st.number_input("Downscale above (megapixels)", MIN_MEGAPIXELS, 4.2, value=DEFAULT_MEGAPIXELS, step=0.1,
                                     key="max_mp",
                                     help="Larger images are downscaled: PAM cost grows with the square of "
                                          "the number of pixels.")
    if data is None:
        return None, "", "", None
    max_pixels = int(megapixels * 1e6)
    digest = file_sha256(data) if isinstance(data, Path) else sha256_bytes(data)
    failure = remembered_failure(f"image:{digest}:{max_pixels}")
    if failure is None:
        try:
            image = (decode_sample(data, digest, max_pixels) if isinstance(data, Path)
                     else decode_image(digest, max_pixels, data))
        except DanetError as error:
            failure = str(error)
            remember_failure(f"image:{digest}:{max_pixels}", failure)
        else:
            for notice in image.notices:
                tell("info", f"The image: {md(notice)}")
            return image, name, digest, label_bytes
    tell("error", f"Could not use {code(name)}: {md(failure)}")
    return None, name, "", None


def check_label_map(loaded: LoadedModel, image: LoadedImage, data: bytes | None,
                    trusted: bool = False) -> LabelMap | None:
    """The label map checked against the model and image (cached; uploads decoded in a child)."""
    if data is None:
        return None
    try:
        labels = cached_label_map(data, image.array.shape[:2], loaded, trusted)
    except DanetError as error:
        tell("error", f"Label map not used: {md(error)}")
        return None
    for notice in labels.notices:
        tell("info", f"The label map: {md(notice)}")
    return labels


# ---- the shared selection -------------------------------------------------------------------------
def build_selection() -> Selection | None:
    st.session_state.setdefault("points", [])
    loaded, identity, weights_sha256 = choose_model()
    mark("model ready")
    if loaded is not None:
        show_model_summary(loaded)
    image, name, digest, label_bytes = choose_image()
    mark("image decoded")
    if loaded is None or image is None:
        return None
    if (label_bytes is not None and st.session_state.get("image_source") == SAMPLE_SOURCE
            and loaded.meta.dataset.name != SAMPLE_DATASET):
        tell("info", f"The samples' ground truth uses {SAMPLE_DATASET} classes; this model predicts "
                        f"{md(loaded.meta.dataset.name)} classes, so it is not scored against it.")
        label_bytes = None
    labels = check_label_map(loaded, image, label_bytes,
                             trusted=st.session_state.get("image_source") == SAMPLE_SOURCE)
    switch_image_points(st.session_state, f"{digest}@{image.array.shape[1]}x{image.array.shape[0]}")
    height, width = image.array.shape[:2]          # the same file at another size limit is another input
    key = result_key(identity, f"{digest}@{width}x{height}", DEVICE)
    failure = remembered_failure(key)
    result, forwards_before = None, FORWARDS.total
    if failure is None:
        try:
            with st.spinner(f"Running DANet on {code(name)} ({DEVICE})..."):
                result = run_forward(key, loaded, image.array)
        except DanetError as error:          # refused before running: too big for memory or the cache
            failure = f"Not run: {md(error)}"
            remember_failure(key, failure)
        except Exception as error:  # noqa: BLE001 - e.g. out of memory on a huge input
            failure = f"The forward pass failed: {md(describe_error(error))}"
            remember_failure(key, failure)
    mark("forward done")
    if failure is not None:
        tell("error", failure)
        return None
    return Selection(loaded=loaded, model_id=identity, model_sha256=weights_sha256,
                     is_default=st.session_state.get("model_source") == DEFAULT_SOURCE,
                     image=image.array, image_name=name, image_sha256=digest,
                     original_size=image.original_size, result=result, result_key=key, labels=labels,
                     device=DEVICE, computed_now=FORWARDS.total > forwards_before)


def render() -> Selection | None:
    """Draw the sidebar and run (or reuse) the forward pass; None when something is missing or bad.
    Refusals and notices are kept for the main area (``show_messages``)."""
    st.session_state[MESSAGES] = []
    selection = build_selection()
    st.session_state["selection"] = selection
    return selection


def current() -> Selection:
    """The selection ``render()`` made this run; pages run only when there is one."""
    return st.session_state["selection"]


def show_diagnostics() -> None:
    """Sidebar panel the tests read: how many forward passes this server process has run."""
    with st.sidebar.expander("Diagnostics"):
        st.markdown(f"forward passes: **{FORWARDS.total}**",
                    help="Process-wide count of network runs. Clicks, sliders and page changes "
                         "reuse the cached result.")
        selection = st.session_state.get("selection")
        if selection is not None:
            key = re.sub(r"[0-9a-f]{64}", lambda digest: digest.group()[:12] + "…", selection.result_key)
            st.caption(f"device {selection.device} · forward {selection.result.seconds:.2f} s · "
                       f"result key {code(key, 400)}")
        for label, seconds in st.session_state.get("timings", {}).items():
            st.caption(f"{label}: {seconds * 1000:.0f} ms")
