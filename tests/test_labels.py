"""danet.data.labels: label maps become (H, W) class ids, or one clear LabelMapError."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from danet.data.images import ImageLoadError
from danet.data.labels import LabelMapError, load_label_map
from danet.data.palettes import CAMVID

K, IGNORE = CAMVID.num_classes, CAMVID.ignore_index      # 11 classes, ignore id 11


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def ids_map(height: int = 36, width: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, K, (height, width)).astype(np.uint8)


def test_greyscale_ids_load_unchanged(tmp_path):
    ids = ids_map()
    path = tmp_path / "frame_L.png"
    path.write_bytes(encode(Image.fromarray(ids)))
    labels, notices = load_label_map(path, (48, 36), K, IGNORE)
    assert labels.dtype == np.int64 and labels.shape == (36, 48)
    assert (labels == ids).all() and notices == []


def test_palette_png_indices_are_the_ids():
    ids = ids_map()
    image = Image.frombytes("P", (48, 36), ids.tobytes())
    image.putpalette(CAMVID.palette_array().ravel().tolist())
    labels, notices = load_label_map(encode(image), (48, 36), K, IGNORE)
    assert (labels == ids).all() and notices == []


def test_sixteen_bit_ids_are_not_rescaled():
    ids = np.arange(48 * 36, dtype=np.uint16).reshape(36, 48) % 300
    labels, notices = load_label_map(encode(Image.fromarray(ids)), (48, 36), 300, 65535)
    assert (labels == ids).all() and notices == []


def test_ids_out_of_range_become_ignore_with_a_count():
    ids = ids_map()
    ids[0, :3] = [12, 200, IGNORE]
    labels, notices = load_label_map(encode(Image.fromarray(ids)), (48, 36), K, IGNORE)
    assert labels[0, :3].tolist() == [IGNORE, IGNORE, IGNORE]
    assert (labels[1:] == ids[1:]).all()
    assert notices == ["2 pixels (0.1%) had ids outside 0..10 (found 12, 200): treated as ignore (11)"]


def test_ids_out_of_range_without_an_ignore_id_are_an_error():
    ids = ids_map()
    ids[5, 5] = 40
    with pytest.raises(LabelMapError, match=r"1 pixel with ids outside 0..10 \(found 40\) and this dataset has no ignore id"):
        load_label_map(encode(Image.fromarray(ids)), (48, 36), K, None)


def test_wrong_shape_is_refused_with_both_sizes():
    with pytest.raises(LabelMapError, match=r"the label map is 48x36 pixels but the image is 48x48"):
        load_label_map(encode(Image.fromarray(ids_map())), (48, 48), K, IGNORE)


def test_two_pixels_wider_is_still_a_different_picture():
    with pytest.raises(LabelMapError, match="is 50x36 pixels but the image is 48x36"):
        load_label_map(encode(Image.fromarray(ids_map(36, 50))), (48, 36), K, IGNORE)


def test_same_shape_at_another_scale_is_resized_nearest():
    blocks = np.kron(np.arange(12, dtype=np.uint8).reshape(3, 4) % K, np.ones((12, 12), np.uint8))  # 36x48
    labels, notices = load_label_map(encode(Image.fromarray(blocks)), (24, 18), K, IGNORE)
    assert labels.shape == (18, 24)
    assert set(np.unique(labels)) <= set(np.unique(blocks))          # nearest: no blended ids
    assert (labels[::6, ::6] == (np.arange(12).reshape(3, 4) % K)).all()
    assert notices == ["the label map resized from 48x36 to 24x18 (nearest neighbour) to match the image"]


def test_colour_coded_label_without_palette_is_refused():
    rgb = CAMVID.palette_array()[ids_map()]
    with pytest.raises(LabelMapError, match=r"is a colour \(RGB\) image: a label map needs one class id per pixel"):
        load_label_map(encode(Image.fromarray(rgb)), (48, 36), K, IGNORE)


def test_colour_coded_label_maps_through_an_exact_palette():
    ids = ids_map()
    rgb = CAMVID.palette_array()[ids]
    rgb[0, 0] = (0, 0, 0)                                           # CamVid's void colour
    labels, notices = load_label_map(encode(Image.fromarray(rgb)), (48, 36), K, IGNORE,
                                     palette=CAMVID.palette_array())
    assert labels[0, 0] == IGNORE
    assert (labels.ravel()[1:] == ids.ravel()[1:]).all()
    assert notices == ["the label map is colour-coded: colours mapped to class ids via the palette",
                       "1 black pixel match no class: treated as ignore (11)"]


def test_colours_outside_the_palette_are_listed():
    rgb = CAMVID.palette_array()[ids_map()]
    rgb[3, 3] = (1, 2, 3)
    rgb[4, 4] = (250, 250, 250)
    with pytest.raises(LabelMapError, match=r"2 pixels have colours that are not in the class palette: \(1, 2, 3\), \(250, 250, 250\)"):
        load_label_map(encode(Image.fromarray(rgb)), (48, 36), K, IGNORE, palette=CAMVID.palette_array())


def test_rgb_with_equal_channels_is_read_as_grey():
    ids = ids_map()
    labels, notices = load_label_map(encode(Image.fromarray(np.stack([ids] * 3, -1))), (48, 36), K, IGNORE)
    assert (labels == ids).all()
    assert notices == ["the label map is stored as RGB with equal channels: read as greyscale ids"]


def test_jpeg_label_gets_a_lossy_warning():
    _, notices = load_label_map(encode(Image.fromarray(ids_map() * 20), "JPEG"), (48, 36), 256, 255)
    assert notices[0].startswith("the label map is a JPEG: lossy compression changes ids")


def test_animated_label_uses_first_frame():
    frames = [Image.fromarray(np.full((36, 48), v, np.uint8)).convert("P") for v in (3, 5)]
    labels, notices = load_label_map(encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
                                     (48, 36), K, IGNORE)
    assert notices == ["the file has 2 frames (animated or multi-page): using the first as the label map"]
    assert labels.shape == (36, 48) and len(np.unique(labels)) == 1


@pytest.mark.parametrize("data, message", [(b"", "is empty"), (b"GIF89a-no", "starts like a GIF file but is damaged or cut short"),
                                           (b"plain text", "not an image")])
def test_unreadable_files_raise_label_map_error_only(data, message):
    with pytest.raises(LabelMapError, match=message) as caught:
        load_label_map(data, (48, 36), K, IGNORE)
    assert not isinstance(caught.value, ImageLoadError)


def test_expected_size_none_keeps_the_map():
    labels, _ = load_label_map(encode(Image.fromarray(ids_map(20, 30))), None, K, IGNORE)
    assert labels.shape == (20, 30)
