"""MTCNN (docs/method.md §8.1): the geometry helpers against hand-worked cases, the detector against
facenet-pytorch's output on the same weights, measured on this machine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gmpi_core.preprocess.mtcnn import (
    MTCNN,
    apply_box_regression,
    area_resample,
    batched_nms,
    detect_landmarks,
    find_weights_dir,
    integral_image,
    nms,
    pairwise_overlap,
    pyramid_scales,
    square_boxes,
)


def _have_weights() -> bool:
    try:
        find_weights_dir()
    except FileNotFoundError:
        return False
    return True


needs_weights = pytest.mark.skipif(
    not _have_weights(), reason="MTCNN weights missing: pip install --no-deps facenet-pytorch"
)

# facenet-pytorch 2.6.0 MTCNN on skimage.data.astronaut() (512×512), measured here.
REF_BOX_1BASED = np.array([181.1, 62.2, 267.7, 172.1])  # its left/top edges are 1-based pixel indices
REF_LANDMARKS = np.array([[205.0, 101.7], [246.8, 103.7], [224.7, 129.0], [201.7, 139.2], [245.3, 141.9]])


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return pytest.importorskip("skimage.data").astronaut()


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    if not _have_weights():
        pytest.skip("MTCNN weights missing: pip install --no-deps facenet-pytorch")
    return MTCNN.pretrained()


# --- NMS ------------------------------------------------------------------------------------------

# A=[0,0,10,10] .9, B=[1,1,11,11] .8, C=[20,20,30,30] .7, D=[0,0,5,5] .95
HAND_BOXES = torch.tensor(
    [[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 5, 5]], dtype=torch.float32
)
HAND_SCORES = torch.tensor([0.9, 0.8, 0.7, 0.95])


def test_pairwise_overlap_is_intersection_over_union_or_over_the_smaller_box() -> None:
    a, b, d = HAND_BOXES[0:1], HAND_BOXES[1:2], HAND_BOXES[3:4]
    assert float(pairwise_overlap(a, b, "union")) == pytest.approx(81 / 119)  # 9·9 / (100 + 100 − 81)
    assert float(pairwise_overlap(a, d, "union")) == pytest.approx(25 / 100)
    assert float(pairwise_overlap(a, d, "min")) == pytest.approx(1.0)  # D lies inside A
    assert pairwise_overlap(a, HAND_BOXES, "union").shape == (1, 4)
    assert float(pairwise_overlap(a, HAND_BOXES[2:3], "union")) == 0.0


def _greedy_nms_reference(boxes: list[list[float]], scores: list[float], threshold: float) -> list[int]:
    """Textbook greedy IoU-NMS in float64 Python (the definition, not our code)."""

    def iou(p: list[float], q: list[float]) -> float:
        w = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
        h = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
        union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - w * h
        return w * h / union

    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep: list[int] = []
    for i in order:
        if all(iou(boxes[i], boxes[k]) <= threshold for k in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("max_matrix", [2048, 0], ids=["matrix", "row_by_row"])
def test_nms_equals_textbook_greedy_nms_on_random_boxes(max_matrix: int) -> None:
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(300, 2, generator=g, dtype=torch.float64) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(300, 2, generator=g, dtype=torch.float64) * 30], dim=1)
    scores = torch.rand(300, generator=g, dtype=torch.float64)
    expected = _greedy_nms_reference(boxes.tolist(), scores.tolist(), 0.4)
    assert 10 < len(expected) < 290  # the case suppresses some boxes and keeps others
    assert nms(boxes, scores, 0.4, max_matrix=max_matrix).tolist() == expected


def test_nms_keeps_best_box_and_drops_overlaps_above_threshold_hand_example() -> None:
    # union @0.5: keep D; A overlaps D by .25 → kept; B overlaps A by .68 → dropped; C is alone
    assert nms(HAND_BOXES, HAND_SCORES, 0.5).tolist() == [3, 0, 2]
    # min @0.5: A contains D (1.0) and B covers 16/25 of D → both dropped
    assert nms(HAND_BOXES, HAND_SCORES, 0.5, mode="min").tolist() == [3, 2]
    # a threshold no overlap exceeds keeps everything, by decreasing score
    assert nms(HAND_BOXES, HAND_SCORES, 1.0).tolist() == [3, 0, 1, 2]


def test_batched_nms_never_suppresses_across_groups() -> None:
    groups = torch.tensor([0, 1, 0, 0])  # B alone in its group survives although it overlaps A
    assert batched_nms(HAND_BOXES, HAND_SCORES, groups, 0.5).tolist() == [3, 0, 1, 2]
    assert batched_nms(HAND_BOXES, HAND_SCORES, torch.zeros(4, dtype=torch.long), 0.5).tolist() == [3, 0, 2]
    assert batched_nms(HAND_BOXES[:0], HAND_SCORES[:0], torch.zeros(0, dtype=torch.long), 0.5).numel() == 0


def test_nms_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="union, min"):
        nms(HAND_BOXES, HAND_SCORES, 0.5, mode="iou")  # type: ignore[arg-type]


# --- box geometry and resampling ------------------------------------------------------------------


def test_pyramid_scales_start_at_12_over_min_face_and_stop_before_short_side_under_12() -> None:
    scales = pyramid_scales(512, 300, min_face_size=20, factor=0.709)
    assert scales[0] == pytest.approx(0.6)
    assert np.allclose(np.diff(np.log(scales)), np.log(0.709))
    assert 300 * scales[-1] >= 12 > 300 * scales[-1] * 0.709
    # 300·0.6·0.709^k ≥ 12 ⇔ k ≤ log(12/180)/log(0.709) = 7.87 → k = 0..7
    assert len(scales) == 8
    assert pyramid_scales(20, 40) == [pytest.approx(0.6)]  # a 20 px face fills the 12 px window once
    assert pyramid_scales(19, 40) == []  # 19 · 0.6 < 12: no level holds a window


def test_box_regression_moves_each_edge_by_offset_times_size_and_squaring_keeps_centre() -> None:
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0]])  # w 20, h 40
    out = apply_box_regression(boxes, torch.tensor([[0.1, -0.25, 0.5, 0.0]]))
    assert out.tolist() == [[12.0, 10.0, 40.0, 60.0]]
    sq = square_boxes(boxes)
    assert sq.tolist() == [[0.0, 20.0, 40.0, 60.0]]  # centre (20, 40), side 40


def test_integral_image_entry_is_sum_of_pixels_above_and_left() -> None:
    image = torch.randint(0, 256, (1, 2, 5, 4)).float()
    table = integral_image(image)
    assert table.shape == (1, 2, 6, 5) and table.dtype == torch.float64
    for y in range(6):
        for x in range(5):
            assert torch.equal(table[0, :, y, x], image[0, :, :y, :x].double().sum(dim=(1, 2)))


def test_area_resample_halving_equals_2x2_average_pooling() -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 8, 6, generator=g, dtype=torch.float64) * 255
    full = torch.tensor([0.0, 0.0, 6.0, 8.0]).expand(2, 1, 4)
    out = area_resample(integral_image(image), full, (4, 3))[:, 0]
    assert torch.allclose(out.double(), F.avg_pool2d(image, 2), atol=1e-4)


def test_area_resample_fractional_cells_weight_pixels_by_covered_area() -> None:
    image = torch.arange(9, dtype=torch.float64).reshape(1, 1, 3, 3)
    out = area_resample(integral_image(image), torch.tensor([[[0.0, 0.0, 3.0, 3.0]]]), (2, 2))[0, 0, 0]
    # cell (0, 0) covers [0, 1.5]²: pixel (0,0) fully, (0,1) and (1,0) half, (1,1) a quarter; area 2.25
    i = image[0, 0]
    expected = (i[0, 0] + 0.5 * i[0, 1] + 0.5 * i[1, 0] + 0.25 * i[1, 1]) / 2.25
    assert float(out[0, 0]) == pytest.approx(float(expected), abs=1e-5)
    # the image is symmetric under (r, c) → (2 − r, 2 − c) up to value 8 − v, so cell (1, 1) = 8 − cell (0, 0)
    assert float(out[1, 1]) == pytest.approx(8 - float(expected), abs=1e-5)


def test_area_resample_counts_outside_of_image_as_zero() -> None:
    ones = torch.ones(1, 3, 4, 4)
    box = torch.tensor([[[-4.0, 0.0, 4.0, 4.0]]])  # left half outside
    out = area_resample(integral_image(ones), box, (1, 2))[0, 0]
    assert torch.allclose(out[:, 0, 0], torch.zeros(3)) and torch.allclose(out[:, 0, 1], torch.ones(3))
    assert float(area_resample(integral_image(ones), box, (1, 1)).mean()) == pytest.approx(0.5)


# --- the detector ---------------------------------------------------------------------------------


def test_missing_weights_error_names_the_pip_command(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GMPI_MTCNN_WEIGHTS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps facenet-pytorch"):
        find_weights_dir()


def test_detector_rejects_non_rgb_uint8_input_with_a_hint() -> None:
    detector = MTCNN()  # untrained weights suffice: the input check comes first
    with pytest.raises(ValueError, match=r"RGB uint8 \[H, W, 3\]"):
        detector.detect([np.zeros((64, 64), np.uint8)])
    with pytest.raises(ValueError, match="image 1"):
        detector.detect([np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64, 3), np.float32)])


@needs_weights
def test_astronaut_box_and_landmarks_match_facenet_pytorch_reference(detector: MTCNN, astronaut) -> None:
    faces = detector.detect([astronaut])[0]
    assert len(faces) == 1
    assert faces.probs[0] > 0.99
    # our boxes have 0-based edges; facenet-pytorch's left/top are 1-based (its landmark = x1 − 1 + p·w)
    reference_box = REF_BOX_1BASED - np.array([1.0, 1.0, 0.0, 0.0])
    assert np.abs(faces.boxes[0] - reference_box).max() < 3.0
    assert np.abs(faces.landmarks[0] - REF_LANDMARKS).max() < 1.5
    # MTCNN order: left eye left of right eye, nose between and below, mouth below the eyes
    lm = faces.landmarks[0]
    assert lm[0, 0] < lm[2, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]
    assert lm[:2, 1].max() < lm[2, 1] < lm[3:, 1].min()


@needs_weights
def test_mirrored_image_gives_mirrored_landmarks_with_left_and_right_swapped(detector, astronaut) -> None:
    width = astronaut.shape[1]
    a, b = detector.detect([astronaut, np.ascontiguousarray(astronaut[:, ::-1])])
    assert len(a) == 1 and len(b) == 1
    mirrored = b.landmarks[0].copy()
    mirrored[:, 0] = width - mirrored[:, 0]  # continuous coordinates: x → W − x
    mirrored = mirrored[[1, 0, 2, 4, 3]]  # the image's left eye / mouth corner become the right ones
    assert np.abs(mirrored - a.landmarks[0]).max() < 2.0
    box = b.boxes[0]
    mirrored_box = np.array([width - box[2], box[1], width - box[0], box[3]])
    lo, hi = np.maximum(mirrored_box[:2], a.boxes[0][:2]), np.minimum(mirrored_box[2:], a.boxes[0][2:])
    inter = np.prod(np.clip(hi - lo, 0, None))
    union = np.prod(mirrored_box[2:] - mirrored_box[:2]) + np.prod(a.boxes[0][2:] - a.boxes[0][:2]) - inter
    assert inter / union > 0.8


@needs_weights
def test_blank_and_noise_images_have_no_face(detector) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (200, 160, 3), dtype=np.uint8)
    tiny = np.full((8, 8, 3), 128, np.uint8)  # smaller than P-Net's window
    results = detector.detect(
        [np.zeros((128, 128, 3), np.uint8), np.full((96, 96, 3), 255, np.uint8), noise, tiny]
    )
    assert [len(r) for r in results] == [0, 0, 0, 0]
    assert all(r.first() is None for r in results)


@needs_weights
def test_batched_detection_equals_one_image_at_a_time(detector, astronaut) -> None:
    crop = np.ascontiguousarray(astronaut[20:276, 100:356])  # 256², the face inside
    shifted = np.ascontiguousarray(astronaut[40:296, 80:336])
    smaller = np.ascontiguousarray(astronaut[30:222, 120:280])  # 192 × 160, another pyramid
    images = [crop, smaller, shifted, np.zeros((256, 256, 3), np.uint8)]
    together = detector.detect(images)
    for image, batched in zip(images, together):
        alone = detector.detect([image])[0]
        assert len(alone) == len(batched)
        assert np.allclose(alone.boxes, batched.boxes, atol=1e-3)
        assert np.allclose(alone.landmarks, batched.landmarks, atol=1e-3)
    # translation equivariance up to MTCNN's pixel snapping: the shifted crop's face moves by (+20, −20)
    delta = together[2].landmarks[0] - together[0].landmarks[0]
    assert np.abs(delta - np.array([20.0, -20.0])).max() < 2.5


@needs_weights
def test_detect_landmarks_returns_best_face_or_none_per_image(astronaut) -> None:
    best, none = detect_landmarks([astronaut, np.zeros((64, 64, 3), np.uint8)])
    assert none is None
    assert best is not None and best.landmarks.shape == (5, 2) and best.box.shape == (4,)
    assert np.abs(best.landmarks - REF_LANDMARKS).max() < 1.5
