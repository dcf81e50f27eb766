"""danet.data.images: every awkward upload becomes a usable RGB array or one clear ImageLoadError."""
from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from danet.data.images import MIN_SIDE, ImageLoadError, fit_size, load_image


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_with_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height (8-bit grey) followed by one tiny IDAT.

    Enough for PIL to read the declared size; the pixel data is not there (and never needed).
    """
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# ---- files that are not images ---------------------------------------------------------------
def test_zero_bytes_and_empty_file(tmp_path):
    with pytest.raises(ImageLoadError, match=r"the upload is empty \(0 bytes\)"):
        load_image(b"")
    empty = tmp_path / "holiday.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"holiday\.jpg is empty"):
        load_image(empty)


def test_missing_path_and_folder(tmp_path):
    with pytest.raises(ImageLoadError, match="does not exist"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match="is a folder"):
        load_image(tmp_path)


def test_text_with_an_image_extension_names_the_file_and_its_content(tmp_path):
    fake = tmp_path / "photo.png"
    fake.write_text("hello, I am not a picture")
    with pytest.raises(ImageLoadError, match=r"photo\.png is not an image .*starts with the text 'hello, I am"):
        load_image(fake)


@pytest.mark.parametrize("data, what", [(b"%PDF-1.7\n%...", "a PDF document"),
                                        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "an SVG drawing"),
                                        (b"\x00\x00\x00\x18ftypheic\x00\x00", "HEIC/AVIF photo")])
def test_common_non_images_are_named(data, what):
    with pytest.raises(ImageLoadError, match=what):
        load_image(data)


def test_binary_garbage_shows_its_first_bytes():
    with pytest.raises(ImageLoadError, match="starts with the bytes 00 ff 13 37"):
        load_image(b"\x00\xff\x13\x37" * 10)


def test_formats_outside_the_allow_list_are_refused_even_if_pil_reads_them():
    ppm = encode(Image.new("RGB", (40, 40), (1, 2, 3)), "PPM")
    assert Image.open(io.BytesIO(ppm)).format == "PPM"       # PIL itself would open it
    with pytest.raises(ImageLoadError, match="supported formats: PNG, JPEG"):
        load_image(ppm)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_say_so(fmt):
    data = encode(Image.fromarray(noise(120, 160)), fmt)
    with pytest.raises(ImageLoadError, match="is truncated"):
        load_image(data[: len(data) // 2])


def test_png_cut_inside_the_header_is_an_error_not_a_crash():
    data = encode(Image.fromarray(noise(40, 40)), "PNG")
    with pytest.raises(ImageLoadError):
        load_image(data[:30])


# ---- pixel formats ---------------------------------------------------------------------------
def test_16_bit_grey_is_scaled_not_clipped():
    values = np.array([[0, 257, 1000, 32896, 65535]], dtype=np.uint16).repeat(40, 0).repeat(8, 1)
    loaded = load_image(encode(Image.fromarray(values)))
    assert Image.open(io.BytesIO(encode(Image.fromarray(values)))).mode == "I;16"
    row = loaded.array[0, ::8, 0]
    assert row.tolist() == [0, 1, 4, 128, 255]                # PIL.convert would give 0, 255, 255, 255, 255
    assert (loaded.array[..., 0] == loaded.array[..., 2]).all()
    assert loaded.notices == ["16-bit greyscale image scaled to 8 bits"]


def test_palette_with_transparency_goes_on_white():
    image = Image.new("P", (40, 40), 0)
    image.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    image.paste(1, (20, 0, 40, 40))
    loaded = load_image(encode(image, transparency=0))
    assert loaded.array[5, 5].tolist() == [255, 255, 255]     # index 0 was transparent black
    assert loaded.array[5, 30].tolist() == [200, 10, 10]
    assert loaded.notices == ["transparent pixels are shown on a white background"]


def test_rgba_half_transparent_is_composited():
    loaded = load_image(encode(Image.new("RGBA", (40, 40), (255, 0, 0, 128))))
    assert np.abs(loaded.array[0, 0].astype(int) - [255, 127, 127]).max() <= 1
    assert "white background" in loaded.notices[0]


def test_opaque_rgba_has_no_transparency_notice():
    loaded = load_image(encode(Image.new("RGBA", (40, 40), (10, 20, 30, 255))))
    assert loaded.array[0, 0].tolist() == [10, 20, 30] and loaded.notices == []


def test_grey_with_alpha():
    image = Image.new("LA", (40, 40), (100, 255))
    image.paste((100, 0), (0, 0, 20, 40))
    loaded = load_image(encode(image))
    assert loaded.array[0, 0].tolist() == [255, 255, 255] and loaded.array[0, 30].tolist() == [100, 100, 100]


def test_cmyk_jpeg_becomes_rgb():
    loaded = load_image(encode(Image.new("CMYK", (40, 40), (255, 0, 0, 0)), "JPEG", quality=95))
    assert np.abs(loaded.array[20, 20].astype(int) - [0, 255, 255]).max() <= 3
    assert loaded.notices == ["CMYK image converted to RGB (colours may differ slightly)"]


def test_greyscale_and_bilevel():
    grey = load_image(encode(Image.new("L", (40, 40), 7)))
    assert grey.array.shape == (40, 40, 3) and grey.array[0, 0].tolist() == [7, 7, 7] and grey.notices == []
    bilevel = load_image(encode(Image.new("1", (40, 40), 1), "BMP"))
    assert bilevel.array[0, 0].tolist() == [255, 255, 255]


def test_float_tiff_in_unit_range_is_scaled():
    loaded = load_image(encode(Image.new("F", (40, 40), 0.5), "TIFF"))
    assert loaded.array[0, 0].tolist() == [128, 128, 128]
    assert "floating-point image (0-1) scaled to 8 bits" in loaded.notices


@pytest.mark.parametrize("fmt, options", [("GIF", {}), ("WEBP", {"lossless": True})])
def test_animations_use_the_first_frame(fmt, options):
    frames = [Image.new("RGB", (40, 40), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], **options)
    loaded = load_image(data)
    assert np.abs(loaded.array[20, 20].astype(int) - [255, 0, 0]).max() <= 2
    assert loaded.notices == ["the file has 3 frames (animated or multi-page): using the first"]


@pytest.mark.parametrize("orientation, corner", [(6, (0, -1)), (3, (-1, -1)), (8, (-1, 0)), (2, (0, -1))])
def test_exif_orientation_is_applied(orientation, corner):
    image = Image.new("RGB", (80, 40), (0, 0, 0))
    image.paste((255, 0, 0), (0, 0, 8, 8))                     # a red mark in the stored top-left
    exif = image.getexif()
    exif[0x0112] = orientation
    loaded = load_image(encode(image, "PNG", exif=exif.tobytes()))
    swapped = orientation in (5, 6, 7, 8)
    assert loaded.size == ((40, 80) if swapped else (80, 40))
    assert loaded.original_size == loaded.size
    row, col = corner
    assert loaded.array[row, col].tolist() == [255, 0, 0], "the mark should follow the rotation"
    assert loaded.notices == [f"rotated/flipped as its EXIF orientation ({orientation}) asks"]


# ---- sizes -----------------------------------------------------------------------------------
def test_one_pixel_is_upscaled_to_the_minimum_side():
    loaded = load_image(encode(Image.new("RGB", (1, 1), (200, 30, 40))))
    assert loaded.size == (MIN_SIDE, MIN_SIDE) and loaded.original_size == (1, 1)
    assert (loaded.array == [200, 30, 40]).all()
    assert loaded.notices == ["upscaled from 1x1 to 32x32: the network needs at least 32 pixels on the short side"]


def test_thin_images_keep_their_aspect_when_upscaled():
    loaded = load_image(encode(Image.fromarray(noise(10, 300))))
    assert loaded.size == (960, 32)


def test_extremely_wide_strip_is_refused_with_the_limit():
    with pytest.raises(ImageLoadError, match=r"is 20000x10 pixels, a 2000:1 strip; danet-lens takes images up to 64:1"):
        load_image(encode(Image.new("L", (20000, 10))))


def test_pixel_budget_downscales_with_a_notice():
    loaded = load_image(encode(Image.fromarray(noise(200, 300))), max_pixels=15_000)
    assert loaded.size == (150, 100) and loaded.original_size == (300, 200)
    assert loaded.notices == ["downscaled from 300x200 to 150x100 to stay within 0.015 megapixels"]


def test_large_jpeg_is_decoded_at_reduced_scale_within_budget():
    data = encode(Image.fromarray(noise(1600, 2000)), "JPEG", quality=80)
    loaded = load_image(data, max_pixels=100_000)
    width, height = loaded.size
    assert width * height <= 100_000 * 1.01 and abs(width / height - 1.25) < 0.02
    assert loaded.original_size == (2000, 1600)
    assert "downscaled from 2000x1600" in loaded.notices[0]


def test_budget_smaller_than_the_minimum_side_is_a_programming_error():
    with pytest.raises(ValueError, match="must allow at least 32x32"):
        load_image(b"x", max_pixels=100)


def test_fit_size_rules():
    assert fit_size(480, 360, 2048 * 2048, 32) == (480, 360)
    assert fit_size(4000, 3000, 1_200_000, 32) == (1265, 949)
    assert fit_size(1, 1, 10_000, 32) == (32, 32)
    assert fit_size(2000, 20, 10_000, 32) == (3200, 32)     # the short side wins over the budget


# ---- decompression bombs ---------------------------------------------------------------------
def test_header_beyond_pils_hard_limit_is_an_image_load_error():
    with pytest.raises(ImageLoadError, match="decompression bombs"):
        load_image(png_with_header(100_000, 100_000))


def test_pils_bomb_warning_range_is_refused_not_passed(recwarn):
    # 10000 x 10000 = 100 MP: above PIL's warning threshold (89 MP), below its error (179 MP).
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # any warning escaping would fail the test
        with pytest.raises(ImageLoadError, match="decompression bombs"):
            load_image(png_with_header(10_000, 10_000))
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_own_decode_limit_refuses_before_decoding():
    with pytest.raises(ImageLoadError, match=r"declares 9000x8000 pixels \(72 megapixels\), more than the 67 megapixels"):
        load_image(png_with_header(9000, 8000))
    data = encode(Image.fromarray(noise(100, 100)))
    with pytest.raises(ImageLoadError, match=r"declares 100x100 pixels"):
        load_image(data, max_decode_pixels=5_000)
    assert load_image(data, max_decode_pixels=10_000).size == (100, 100)


def test_the_loaded_array_is_writable_rgb_uint8():
    loaded = load_image(encode(Image.fromarray(noise(50, 60))))
    assert loaded.array.dtype == np.uint8 and loaded.array.shape == (50, 60, 3)
    assert loaded.array.flags.writeable
    assert (loaded.array == noise(50, 60)).all()


def test_decoder_warnings_become_notices_not_log_noise():
    image = Image.new("RGB", (40, 40), (1, 2, 3))
    broken_exif = b"II*\x00\x08\x00\x00\x00\x05\x00\x12\x01\x03\x00"       # IFD claims 5 entries, holds 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_image(encode(image, "PNG", exif=broken_exif))
    assert loaded.array[0, 0].tolist() == [1, 2, 3]
    assert loaded.notices == ["the file is slightly damaged; the decoder said: Corrupt EXIF data.  "
                              "Expecting to read 12 bytes but only got 4."]
