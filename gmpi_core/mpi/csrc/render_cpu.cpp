// Fused MPI renderer for the CPU (docs/method.md §3): ray/plane intersection + bilinear sampling + front-to-back
// compositing in one pass over the pixels, and its backward w.r.t. the RGBA textures.
//
// Every plane is fronto-parallel, so the texel coordinate a pixel sees on plane i is an affine function
// of the two ray ratios r = (q_x/q_z, q_y/q_z) of the pixel's (unnormalised) world direction q:
//     ix = (e_x/w_i + 1/2)(T_w − 1) + (d_i − e_z)(T_w − 1)/w_i · r_x        (align_corners=True texels)
//     iy = (e_y/h_i + 1/2)(T_h − 1) + (d_i − e_z)(T_h − 1)/h_i · r_y
// and the camera z-depth of the hit is (d_i − e_z)/q_z when q = R·(x_cam, y_cam, 1). The ratios are
// computed once per pixel; each plane then costs two multiply-adds, one bilinear tap and the
// compositing update T ← T·(1 − α + 1e-10). Memory beyond inputs/outputs: O(threads · W) in the
// forward and O(threads · N · W) in the backward; no [B, N, H, W] intermediates.
//
// Layouts: tex [Bt, N, 4, Th, Tw] (Bt = B, or 1 shared by all views); rays [B, 9] float64 = A (3×3,
// row-major) mapping the integer pixel (x, y, 1) to q (pixel-centre shift and K⁻¹ folded in); maps
// [B, N, 5] float64 = (ax, bx, ay, by, dz) per view and plane, computed by gmpi_core/mpi/render.py.
// Coordinates are computed in float64, colours in the texture dtype.
//
// Backward race-freedom: pixel rows are cut into blocks processed in two phases (even, odd blocks).
// Before scattering, the texel-row footprint of every block on every plane is computed from the block's
// four corner pixels (a homography maps the block to a convex quad, so its extremes are at corners);
// when two blocks of the same phase could touch the same texel row, that view is processed by one
// thread instead. Results never depend on the thread count beyond floating-point summation order.

#include <torch/extension.h>

#include <omp.h>

#if defined(__SSE2__)
#include <emmintrin.h>  // SSE2 (baseline x86-64); also declares _mm_prefetch
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace {

constexpr double kTransmittanceEps = 1e-10;  // docs/method.md §3.3: T_i = Π_{j<i} (1 − α_j + 1e-10)
// Forward early exit: once a pixel's transmittance T_i drops below kSkipBound / max(2, z_max), the planes
// behind it change the image (2c − 1, colours in [0, 1]) and the depth by less than kSkipBound, because
// Σ_{k≥i} α_k T_k ≤ T_i (1 + N·1e-10). The backward never skips (an opaque plane's α-gradient depends
// on everything behind it). Only float32 renders skip; float64 ones are exact.
constexpr double kSkipBound = 1e-7;

struct View {
  double A[9];
};

struct PlaneMap {
  double ax, bx, ay, by, dz;  // ix = ax + bx·r_x, iy = ay + by·r_y, camera depth = dz / q_z
  bool clamp;                 // clamp texel coordinates to the border (background with out_of_bounds="clamp")
};

// Bilinear tap whose four texels all exist (the common case): no bounds checks or validity flags.
template <typename scalar_t>
struct Quad {
  int64_t o, row;  // offset of the top-left texel in one channel plane, row stride
  scalar_t w00, w01, w10, w11;
  scalar_t sample(const scalar_t* p) const {
    return w00 * p[o] + w01 * p[o + 1] + w10 * p[o + row] + w11 * p[o + row + 1];
  }
  void scatter(scalar_t* p, scalar_t g) const {
    p[o] += w00 * g;
    p[o + 1] += w01 * g;
    p[o + row] += w10 * g;
    p[o + row + 1] += w11 * g;
  }
};

// Bilinear tap with zero padding at the border: texels outside the texture get weight 0 (offset 0) and
// are never written.
template <typename scalar_t>
struct Tap {
  int64_t off[4];
  scalar_t w[4];
  bool valid[4];
  scalar_t sample(const scalar_t* p) const {
    return w[0] * p[off[0]] + w[1] * p[off[1]] + w[2] * p[off[2]] + w[3] * p[off[3]];
  }
  void scatter(scalar_t* p, scalar_t g) const {
    for (int k = 0; k < 4; ++k) {
      if (valid[k]) p[off[k]] += w[k] * g;
    }
  }
};

inline double clampd(double v, double lo, double hi) { return v < lo ? lo : (v > hi ? hi : v); }

// floor for v > −1 without a libm call (baseline x86-64 has no SSE4.1 round instruction).
inline int64_t floor_above_minus_one(double v) { return static_cast<int64_t>(v + 1.0) - 1; }

template <typename scalar_t>
inline bool make_quad(double fx, double fy, int64_t Th, int64_t Tw, Quad<scalar_t>& q) {
  if (!(fx >= 0.0 && fx < static_cast<double>(Tw - 1) && fy >= 0.0 && fy < static_cast<double>(Th - 1))) {
    return false;
  }
  const int64_t x0 = static_cast<int64_t>(fx), y0 = static_cast<int64_t>(fy);  // floor of non-negatives
  const scalar_t wx1 = static_cast<scalar_t>(fx - static_cast<double>(x0));
  const scalar_t wy1 = static_cast<scalar_t>(fy - static_cast<double>(y0));
  const scalar_t wx0 = scalar_t(1) - wx1, wy0 = scalar_t(1) - wy1;
  q.o = y0 * Tw + x0;
  q.row = Tw;
  q.w00 = wy0 * wx0, q.w01 = wy0 * wx1, q.w10 = wy1 * wx0, q.w11 = wy1 * wx1;
  return true;
}

template <typename scalar_t>
inline bool make_tap(double fx, double fy, int64_t Th, int64_t Tw, Tap<scalar_t>& tap) {
  // Outside (−1, T) no texel contributes; the test is also false for NaN.
  if (!(fx > -1.0 && fx < static_cast<double>(Tw) && fy > -1.0 && fy < static_cast<double>(Th))) {
    return false;
  }
  const int64_t x0 = floor_above_minus_one(fx), y0 = floor_above_minus_one(fy);
  const scalar_t wx1 = static_cast<scalar_t>(fx - static_cast<double>(x0));
  const scalar_t wy1 = static_cast<scalar_t>(fy - static_cast<double>(y0));
  const scalar_t wx0 = scalar_t(1) - wx1, wy0 = scalar_t(1) - wy1;
  const int64_t xs[2] = {x0, x0 + 1}, ys[2] = {y0, y0 + 1};
  const bool vx[2] = {x0 >= 0, x0 + 1 < Tw}, vy[2] = {y0 >= 0, y0 + 1 < Th};
  const scalar_t wx[2] = {wx0, wx1}, wy[2] = {wy0, wy1};
  for (int k = 0; k < 4; ++k) {
    const int jy = k >> 1, jx = k & 1;
    const bool v = vx[jx] && vy[jy];
    tap.valid[k] = v;
    tap.off[k] = v ? ys[jy] * Tw + xs[jx] : 0;
    tap.w[k] = v ? wy[jy] * wx[jx] : scalar_t(0);
  }
  return true;
}

// Calls body(tap) with the bilinear tap at (fx, fy); returns false when no texel contributes.
template <typename scalar_t, typename Body>
inline bool with_tap(double fx, double fy, int64_t Th, int64_t Tw, Body&& body) {
  Quad<scalar_t> q;
  if (make_quad(fx, fy, Th, Tw, q)) {
    body(q);
    return true;
  }
  Tap<scalar_t> t;
  if (make_tap(fx, fy, Th, Tw, t)) {
    body(t);
    return true;
  }
  return false;
}

inline void texel_coords(const PlaneMap& m, double rx, double ry, int64_t Th, int64_t Tw, double& fx,
                         double& fy) {
  fx = m.ax + m.bx * rx;
  fy = m.ay + m.by * ry;
  if (m.clamp) {
    fx = clampd(fx, 0.0, static_cast<double>(Tw - 1));
    fy = clampd(fy, 0.0, static_cast<double>(Th - 1));
  }
}

// Ray ratios of pixel row y: r_x, r_y and 1/q_z for x = 0..W−1.
inline void row_rays(const View& v, int64_t y, int64_t x0, int64_t n, double* rx, double* ry, double* iqz) {
  const double* A = v.A;
  for (int64_t k = 0; k < n; ++k) {
    const int64_t x = x0 + k;
    const double qx = A[0] * x + A[1] * y + A[2];
    const double qy = A[3] * x + A[4] * y + A[5];
    const double qz = A[6] * x + A[7] * y + A[8];
    const double inv = 1.0 / qz;
    rx[k] = qx * inv;
    ry[k] = qy * inv;
    iqz[k] = inv;
  }
}

std::vector<View> read_views(const torch::Tensor& rays) {
  const int64_t B = rays.size(0);
  auto c = rays.accessor<double, 2>();
  std::vector<View> views(B);
  for (int64_t b = 0; b < B; ++b) {
    for (int k = 0; k < 9; ++k) views[b].A[k] = c[b][k];
  }
  return views;
}

std::vector<PlaneMap> read_maps(const torch::Tensor& maps_t, bool clamp_last) {
  const int64_t B = maps_t.size(0), N = maps_t.size(1);
  auto p = maps_t.accessor<double, 3>();
  std::vector<PlaneMap> maps(B * N);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < N; ++i) {
      PlaneMap& m = maps[b * N + i];
      m.ax = p[b][i][0];
      m.bx = p[b][i][1];
      m.ay = p[b][i][2];
      m.by = p[b][i][3];
      m.dz = p[b][i][4];
      m.clamp = clamp_last && i == N - 1;
    }
  }
  return maps;
}

void check_inputs(const torch::Tensor& tex, const torch::Tensor& rays, const torch::Tensor& maps) {
  TORCH_CHECK(!tex.is_cuda() && !rays.is_cuda() && !maps.is_cuda(), "render_cpu: tensors must be on the CPU");
  TORCH_CHECK(tex.dim() == 5 && tex.size(2) == 4, "render_cpu: tex must be [B, N, 4, Th, Tw]");
  TORCH_CHECK(tex.is_contiguous(), "render_cpu: tex must be contiguous");
  TORCH_CHECK(rays.dim() == 2 && rays.size(1) == 9 && rays.scalar_type() == torch::kDouble,
              "render_cpu: rays must be float64 [B, 9]");
  TORCH_CHECK(maps.dim() == 3 && maps.size(0) == rays.size(0) && maps.size(1) == tex.size(1) &&
                  maps.size(2) == 5 && maps.scalar_type() == torch::kDouble,
              "render_cpu: maps must be float64 [B, N, 5]");
  TORCH_CHECK(tex.size(0) == rays.size(0) || tex.size(0) == 1, "render_cpu: tex batch must be B or 1");
}

// ------------------------------------------------------------------------------------------------
// forward

// One plane of one pixel row: samples and composites pixels x ∈ [0, W) whose transmittance is still
// above skip_below. acc holds four planar rows of W: r, g, b, depth. Returns the number of pixels whose
// transmittance dropped below skip_below on this plane.
template <typename scalar_t>
inline int64_t forward_plane_row(const PlaneMap& m, const scalar_t* pr, int64_t Th, int64_t Tw, int64_t W,
                                 const double* rx, const double* ry, const double* iqz, scalar_t* trans,
                                 scalar_t* acc, int64_t acc_stride, scalar_t skip_below) {
  const int64_t P = Th * Tw;
  const scalar_t *pg = pr + P, *pb = pg + P, *pa = pb + P;
  scalar_t *acc_r = acc, *acc_g = acc_r + acc_stride, *acc_b = acc_g + acc_stride, *acc_d = acc_b + acc_stride;
  const scalar_t eps = static_cast<scalar_t>(kTransmittanceEps);
  int64_t died = 0;
  for (int64_t x = 0; x < W; ++x) {
    if (trans[x] < skip_below) continue;
    double fx, fy;
    texel_coords(m, rx[x], ry[x], Th, Tw, fx, fy);
    scalar_t a = 0;
    with_tap<scalar_t>(fx, fy, Th, Tw, [&](const auto& t) {
      a = t.sample(pa);
      const scalar_t w = a * trans[x];
      acc_r[x] += w * t.sample(pr);
      acc_g[x] += w * t.sample(pg);
      acc_b[x] += w * t.sample(pb);
      acc_d[x] += w * static_cast<scalar_t>(m.dz * iqz[x]);
    });
    trans[x] *= scalar_t(1) - a + eps;
    if (trans[x] < skip_below) ++died;
  }
  return died;
}

#if defined(__SSE2__)
// float32 fast path (SSE2 only, part of baseline x86-64), same arithmetic as forward_plane_row up to the
// summation order of the four bilinear taps. Three passes over a row of Wp pixels (Wp = W rounded up to a
// multiple of 4; the padding pixels start with T = 0, i.e. already skipped):
//   1. two pixels at a time (float64): texel coordinates, whether all four taps are inside (and the pixel
//      is still alive), top-left texel offset and the bilinear weights [w00 w01 w00 w01], [w10 w11 w10 w11];
//   2. per pixel: the tap. The two horizontally adjacent texels of a channel are one 64-bit load, so one
//      vector holds [r0 r1 g0 g1] or [b0 b1 a0 a1] of a texel row and all channels interpolate together.
//      Border taps (zero padding) take the generic path; skipped and missing pixels sample 0, which leaves
//      their accumulators and (in float32, 1 + 1e-10 = 1) their transmittance unchanged;
//   3. four pixels at a time: compositing.
struct RowScratchF32 {
  std::vector<int32_t> off;     // [Wp] top-left texel offset of interior taps
  std::vector<float> wts;       // [Wp, 8] bilinear weights of interior taps
  std::vector<unsigned char> interior;  // [Wp] 1: alive and all four taps inside
  std::vector<float> smp;       // [Wp, 4] sampled r, g, b, a
  explicit RowScratchF32(int64_t Wp) : off(Wp), wts(8 * Wp), interior(Wp), smp(4 * Wp) {}
};

// Returns whether some pixel of the row is still above skip_below after this plane.
inline bool forward_plane_row_f32(const PlaneMap& m, const float* pr, int64_t Th, int64_t Tw, int64_t Wp,
                                  const double* rx, const double* ry, const double* iqz, float* trans,
                                  float* acc, int64_t acc_stride, float skip_below, RowScratchF32& sc) {
  const int64_t P = Th * Tw;
  const float *pg = pr + P, *pb = pg + P, *pa = pb + P;
  int32_t* off = sc.off.data();
  float* wts = sc.wts.data();
  unsigned char* interior = sc.interior.data();
  float* smp = sc.smp.data();

  // pass 1: coordinates and weights
  {
    const __m128d ax = _mm_set1_pd(m.ax), bx = _mm_set1_pd(m.bx), ay = _mm_set1_pd(m.ay), by = _mm_set1_pd(m.by);
    const __m128d zero = _mm_setzero_pd(), xmax = _mm_set1_pd(static_cast<double>(Tw - 1)),
                  ymax = _mm_set1_pd(static_cast<double>(Th - 1)), tw = _mm_set1_pd(static_cast<double>(Tw));
    const __m128 skip = _mm_set1_ps(skip_below), one = _mm_set1_ps(1.0f);
    for (int64_t x = 0; x < Wp; x += 2) {
      __m128d fx = _mm_add_pd(ax, _mm_mul_pd(bx, _mm_loadu_pd(rx + x)));
      __m128d fy = _mm_add_pd(ay, _mm_mul_pd(by, _mm_loadu_pd(ry + x)));
      if (m.clamp) {  // = clampd(v, 0, max), NaN included (min/max return their second operand on NaN)
        fx = _mm_max_pd(zero, _mm_min_pd(xmax, fx));
        fy = _mm_max_pd(zero, _mm_min_pd(ymax, fy));
      }
      const __m128d in = _mm_and_pd(_mm_and_pd(_mm_cmpge_pd(fx, zero), _mm_cmplt_pd(fx, xmax)),
                                    _mm_and_pd(_mm_cmpge_pd(fy, zero), _mm_cmplt_pd(fy, ymax)));
      const __m128 t2 = _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(trans + x)));
      const int mask = _mm_movemask_pd(in) & _mm_movemask_ps(_mm_cmpnlt_ps(t2, skip));
      interior[x] = static_cast<unsigned char>(mask & 1);
      interior[x + 1] = static_cast<unsigned char>(mask >> 1);
      // truncation = floor inside; values of exterior pixels are never used
      const __m128d fxi = _mm_cvtepi32_pd(_mm_cvttpd_epi32(fx)), fyi = _mm_cvtepi32_pd(_mm_cvttpd_epi32(fy));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(off + x), _mm_cvttpd_epi32(_mm_add_pd(_mm_mul_pd(fyi, tw), fxi)));
      const __m128 wx1 = _mm_cvtpd_ps(_mm_sub_pd(fx, fxi)), wy1 = _mm_cvtpd_ps(_mm_sub_pd(fy, fyi));
      const __m128 wx0 = _mm_sub_ps(one, wx1), wy0 = _mm_sub_ps(one, wy1);
      const __m128 wxx = _mm_unpacklo_ps(wx0, wx1);  // [wx0 wx1 | wx0 wx1] of pixels x, x+1
      const __m128 top = _mm_mul_ps(_mm_unpacklo_ps(wy0, wy0), wxx), bot = _mm_mul_ps(_mm_unpacklo_ps(wy1, wy1), wxx);
      _mm_storeu_ps(wts + 8 * x, _mm_movelh_ps(top, top));
      _mm_storeu_ps(wts + 8 * x + 4, _mm_movelh_ps(bot, bot));
      _mm_storeu_ps(wts + 8 * x + 8, _mm_movehl_ps(top, top));
      _mm_storeu_ps(wts + 8 * x + 12, _mm_movehl_ps(bot, bot));
    }
  }
  // pass 2: taps
  for (int64_t x = 0; x < Wp; ++x) {
    __m128 s;
    if (interior[x]) {
      const int64_t o = off[x], o2 = o + Tw;
      // Software prefetch of the texel row two rows down (about what a nearby pixel row reads: every
      // plane advances by about one texel row per pixel row), once per four pixels (~ one cache line):
      // 4·N streams per row are too many for the hardware prefetchers.
      if ((x & 3) == 0) {
        const int64_t op = o + 2 * Tw;
        _mm_prefetch(reinterpret_cast<const char*>(pr + op), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(pg + op), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(pb + op), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(pa + op), _MM_HINT_T0);
      }
      const __m128 wt = _mm_loadu_ps(wts + 8 * x), wb = _mm_loadu_ps(wts + 8 * x + 4);
      auto pair2 = [](const float* p, const float* q) {
        return _mm_loadh_pi(_mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))),
                            reinterpret_cast<const __m64*>(q));
      };
      const __m128 rg = _mm_add_ps(_mm_mul_ps(pair2(pr + o, pg + o), wt), _mm_mul_ps(pair2(pr + o2, pg + o2), wb));
      const __m128 ba = _mm_add_ps(_mm_mul_ps(pair2(pb + o, pa + o), wt), _mm_mul_ps(pair2(pb + o2, pa + o2), wb));
      s = _mm_add_ps(_mm_shuffle_ps(rg, ba, _MM_SHUFFLE(2, 0, 2, 0)), _mm_shuffle_ps(rg, ba, _MM_SHUFFLE(3, 1, 3, 1)));
    } else {
      s = _mm_setzero_ps();
      if (!(trans[x] < skip_below)) {
        double fx, fy;
        texel_coords(m, rx[x], ry[x], Th, Tw, fx, fy);
        Tap<float> t;
        if (make_tap(fx, fy, Th, Tw, t)) s = _mm_setr_ps(t.sample(pr), t.sample(pg), t.sample(pb), t.sample(pa));
      }
    }
    _mm_storeu_ps(smp + 4 * x, s);
  }
  // pass 3: compositing, w = α·T, acc += w·(r, g, b, z), T ← T·(1 − α + ε)
  const __m128 one = _mm_set1_ps(1.0f), eps = _mm_set1_ps(static_cast<float>(kTransmittanceEps)),
               skip = _mm_set1_ps(skip_below);
  const __m128d dz = _mm_set1_pd(m.dz);
  float *acc_r = acc, *acc_g = acc + acc_stride, *acc_b = acc + 2 * acc_stride, *acc_d = acc + 3 * acc_stride;
  __m128 alive = _mm_setzero_ps();
  for (int64_t x = 0; x < Wp; x += 4) {
    __m128 r = _mm_loadu_ps(smp + 4 * x), g = _mm_loadu_ps(smp + 4 * x + 4), b = _mm_loadu_ps(smp + 4 * x + 8),
           a = _mm_loadu_ps(smp + 4 * x + 12);
    _MM_TRANSPOSE4_PS(r, g, b, a);
    const __m128 T = _mm_loadu_ps(trans + x);
    const __m128 w = _mm_mul_ps(a, T);
    const __m128 z = _mm_movelh_ps(_mm_cvtpd_ps(_mm_mul_pd(dz, _mm_loadu_pd(iqz + x))),
                                   _mm_cvtpd_ps(_mm_mul_pd(dz, _mm_loadu_pd(iqz + x + 2))));
    _mm_storeu_ps(acc_r + x, _mm_add_ps(_mm_loadu_ps(acc_r + x), _mm_mul_ps(w, r)));
    _mm_storeu_ps(acc_g + x, _mm_add_ps(_mm_loadu_ps(acc_g + x), _mm_mul_ps(w, g)));
    _mm_storeu_ps(acc_b + x, _mm_add_ps(_mm_loadu_ps(acc_b + x), _mm_mul_ps(w, b)));
    _mm_storeu_ps(acc_d + x, _mm_add_ps(_mm_loadu_ps(acc_d + x), _mm_mul_ps(w, z)));
    const __m128 Tn = _mm_mul_ps(T, _mm_add_ps(_mm_sub_ps(one, a), eps));
    _mm_storeu_ps(trans + x, Tn);
    alive = _mm_or_ps(alive, _mm_cmpnlt_ps(Tn, skip));
  }
  return _mm_movemask_ps(alive) != 0;
}
#endif

template <typename scalar_t>
void forward_impl(const torch::Tensor& tex, const std::vector<View>& views, const std::vector<PlaneMap>& maps,
                  torch::Tensor& image, torch::Tensor& depth, int64_t H, int64_t W, int threads) {
  const int64_t B = static_cast<int64_t>(views.size()), Bt = tex.size(0), N = tex.size(1);
  const int64_t Th = tex.size(3), Tw = tex.size(4), P = Th * Tw;
  const scalar_t* tex_p = tex.data_ptr<scalar_t>();
  scalar_t* img_p = image.data_ptr<scalar_t>();
  scalar_t* dep_p = depth.data_ptr<scalar_t>();

  std::vector<double> max_dz(B, 0.0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < N; ++i) max_dz[b] = std::max(max_dz[b], maps[b * N + i].dz);
  }

#if defined(__SSE2__)
  // float32 fast path; int32 texel offsets
  constexpr bool kFast = std::is_same<scalar_t, float>::value;
  const bool fast = kFast && P <= (int64_t(1) << 30) && Tw > 1 && Th > 1;
#else
  const bool fast = false;
#endif

  // Work items: (view, chunk of kRows pixel rows, block of kCols columns); a thread renders its item row by
  // row, so the texel rows the next pixel row shares with this one (about one of two per plane and channel)
  // are still in its L2: one pixel row of a block reads ~N·4·2·kCols·4 bytes (~200 KB at N = 96, 64
  // columns). Measured on 2 cores: ~10 % (R = 256) to ~20 % (R = 512) faster than whole rows.
  const int64_t kCols = fast ? 64 : W, kRows = 16;
  const int64_t n_cb = (W + kCols - 1) / kCols, n_rc = (H + kRows - 1) / kRows;
  const int64_t Cp = fast ? (std::min(kCols, W) + 3) / 4 * 4 : W;  // block width, padded for the fast path

#pragma omp parallel num_threads(threads)
  {
    std::vector<double> rx(Cp), ry(Cp), iqz(Cp);
    std::vector<scalar_t> trans(Cp), acc(4 * Cp);  // acc: planar rows r, g, b, depth
#if defined(__SSE2__)
    RowScratchF32 scratch(fast ? Cp : 0);
#endif
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < B * n_rc * n_cb; ++item) {
      const int64_t b = item / (n_rc * n_cb), rc = item / n_cb % n_rc, cb = item % n_cb;
      const int64_t x0 = cb * kCols, cw = std::min(kCols, W - x0);
      const int64_t cwp = fast ? (cw + 3) / 4 * 4 : cw;
      const int64_t bt = Bt == 1 ? 0 : b;
      const double* A = views[b].A;
      for (int64_t y = rc * kRows; y < std::min(H, (rc + 1) * kRows); ++y) {
        double z_max = 0.0;  // largest camera depth any plane can have in this (whole) row
        for (int64_t x = 0; x < W; ++x) {
          z_max = std::max(z_max, max_dz[b] * (1.0 / (A[6] * x + A[7] * y + A[8])));
        }
        // float64 renders (gradcheck, references) never skip
        const scalar_t skip_below =
            sizeof(scalar_t) < 8 ? static_cast<scalar_t>(kSkipBound / std::max(2.0, z_max)) : scalar_t(0);
        row_rays(views[b], y, x0, cwp, rx.data(), ry.data(), iqz.data());
        std::fill(trans.begin(), trans.begin() + cw, scalar_t(1));
        std::fill(trans.begin() + cw, trans.end(), scalar_t(0));  // padding pixels: skipped from the start
        std::fill(acc.begin(), acc.end(), scalar_t(0));
        int64_t active = cw;  // pixels whose transmittance is still above skip_below
        for (int64_t i = 0; i < N && active > 0; ++i) {
          const scalar_t* pr = tex_p + (bt * N + i) * 4 * P;
#if defined(__SSE2__)
          if constexpr (kFast) {
            if (fast) {
              if (!forward_plane_row_f32(maps[b * N + i], pr, Th, Tw, cwp, rx.data(), ry.data(), iqz.data(),
                                         trans.data(), acc.data(), Cp, skip_below, scratch)) {
                active = 0;
              }
              continue;
            }
          }
#endif
          active -= forward_plane_row<scalar_t>(maps[b * N + i], pr, Th, Tw, cw, rx.data(), ry.data(), iqz.data(),
                                                trans.data(), acc.data(), Cp, skip_below);
        }
        const scalar_t *acc_r = acc.data(), *acc_g = acc_r + Cp, *acc_b = acc_g + Cp, *acc_d = acc_b + Cp;
        scalar_t* out = img_p + b * 3 * H * W + y * W + x0;
        scalar_t* dep = dep_p + b * H * W + y * W + x0;
        for (int64_t x = 0; x < cw; ++x) {
          out[x] = scalar_t(2) * acc_r[x] - scalar_t(1);  // docs/method.md §3.3: image = 2c − 1
          out[H * W + x] = scalar_t(2) * acc_g[x] - scalar_t(1);
          out[2 * H * W + x] = scalar_t(2) * acc_b[x] - scalar_t(1);
          dep[x] = acc_d[x];
        }
      }
    }
  }
}

std::vector<torch::Tensor> render_forward(torch::Tensor tex, torch::Tensor rays, torch::Tensor maps_t, int64_t H,
                                          int64_t W, bool clamp_last, int64_t threads) {
  check_inputs(tex, rays, maps_t);
  const auto views = read_views(rays);
  const auto maps = read_maps(maps_t, clamp_last);
  const int64_t B = rays.size(0);
  auto image = torch::empty({B, 3, H, W}, tex.options());
  auto depth = torch::empty({B, 1, H, W}, tex.options());
  AT_DISPATCH_FLOATING_TYPES(tex.scalar_type(), "render_forward", [&] {
    forward_impl<scalar_t>(tex, views, maps, image, depth, H, W, static_cast<int>(std::max<int64_t>(1, threads)));
  });
  return {image, depth};
}

// ------------------------------------------------------------------------------------------------
// backward

// Texel rows [lo, hi] that pixel rows [y0, y1) of a view can touch on plane m (empty when lo > hi).
void block_footprint(const View& v, const PlaneMap& m, int64_t y0, int64_t y1, int64_t W, int64_t Th,
                     int64_t Tw, int64_t& lo, int64_t& hi) {
  double fmin = INFINITY, fmax = -INFINITY;
  const int64_t xs[2] = {0, W - 1}, ys[2] = {y0, y1 - 1};
  for (int64_t yy : ys) {
    for (int64_t xx : xs) {
      const double* A = v.A;
      const double qy = A[3] * xx + A[4] * yy + A[5], qz = A[6] * xx + A[7] * yy + A[8];
      double fx, fy;
      texel_coords(m, 0.0, qy / qz, Th, Tw, fx, fy);
      fmin = std::min(fmin, fy);
      fmax = std::max(fmax, fy);
    }
  }
  // clamp before converting so that far-away (or huge) coordinates stay representable
  fmin = clampd(fmin, -2.0, static_cast<double>(Th) + 1.0);
  fmax = clampd(fmax, -2.0, static_cast<double>(Th) + 1.0);
  lo = std::max<int64_t>(0, static_cast<int64_t>(std::floor(fmin - 1e-6)));
  hi = std::min<int64_t>(Th - 1, static_cast<int64_t>(std::floor(fmax + 1e-6)) + 1);
}

// True when no two blocks of the same parity touch a common texel row on any plane of view b.
bool same_parity_blocks_disjoint(const View& v, const PlaneMap* maps, int64_t N, int64_t H, int64_t W, int64_t Th,
                                 int64_t Tw, int64_t block) {
  const int64_t nb = (H + block - 1) / block;
  std::vector<int64_t> lo(nb), hi(nb);
  for (int64_t i = 0; i < N; ++i) {
    for (int64_t k = 0; k < nb; ++k) {
      block_footprint(v, maps[i], k * block, std::min(H, (k + 1) * block), W, Th, Tw, lo[k], hi[k]);
    }
    for (int64_t k = 0; k < nb; ++k) {
      for (int64_t k2 = k + 2; k2 < nb; k2 += 2) {
        const bool empty = lo[k] > hi[k] || lo[k2] > hi[k2];
        if (!empty && lo[k] <= hi[k2] && lo[k2] <= hi[k]) return false;
      }
    }
  }
  return true;
}

// Gradients of pixel rows [y0, y1) of view b, scattered into grad (of texture bt).
template <typename scalar_t>
void backward_block(const scalar_t* tex_p, scalar_t* grad_p, const View& v, const PlaneMap* maps, int64_t bt,
                    int64_t N, int64_t Th, int64_t Tw, const scalar_t* g_img, const scalar_t* g_dep, int64_t H,
                    int64_t W, int64_t y0, int64_t y1, std::vector<double>& rays, std::vector<scalar_t>& buf) {
  const int64_t P = Th * Tw;
  const scalar_t eps = static_cast<scalar_t>(kTransmittanceEps);
  double *rx = rays.data(), *ry = rx + W, *iqz = ry + W;
  scalar_t* T_buf = buf.data();        // [N, W] transmittance T_i
  scalar_t* a_buf = T_buf + N * W;     // [N, W] sampled alpha α_i
  scalar_t* h_buf = a_buf + N * W;     // [N, W] h_i = g_c·c_i + g_D·z_i
  scalar_t* run = h_buf + N * W;       // [W] running T (pass 1) / R (pass 2)
  for (int64_t y = y0; y < y1; ++y) {
    row_rays(v, y, 0, W, rx, ry, iqz);
    const scalar_t* gr = g_img + y * W;
    const scalar_t *gg = gr + H * W, *gb = gg + H * W, *gd = g_dep + y * W;
    // pass 1, front to back: α_i, h_i and T_i
    std::fill(run, run + W, scalar_t(1));
    for (int64_t i = 0; i < N; ++i) {
      const PlaneMap& m = maps[i];
      const scalar_t* pr = tex_p + (bt * N + i) * 4 * P;
      const scalar_t *pg = pr + P, *pb = pg + P, *pa = pb + P;
      scalar_t *Ti = T_buf + i * W, *ai = a_buf + i * W, *hi = h_buf + i * W;
      for (int64_t x = 0; x < W; ++x) {
        double fx, fy;
        texel_coords(m, rx[x], ry[x], Th, Tw, fx, fy);
        scalar_t a = 0, h = 0;
        with_tap<scalar_t>(fx, fy, Th, Tw, [&](const auto& t) {
          a = t.sample(pa);
          // dL/dc = 2 dL/dimage because image = 2c − 1
          h = scalar_t(2) * (gr[x] * t.sample(pr) + gg[x] * t.sample(pg) + gb[x] * t.sample(pb)) +
              gd[x] * static_cast<scalar_t>(m.dz * iqz[x]);
        });
        Ti[x] = run[x];
        ai[x] = a;
        hi[x] = h;
        run[x] *= scalar_t(1) - a + eps;
      }
    }
    // pass 2, back to front: R_i = Σ_{k>i} α_k h_k Π_{i<j<k}(1 − α_j + ε);
    // dL/dα_i = T_i (h_i − R_i), dL/dc_i = 2 α_i T_i g_img; scattered with the bilinear weights.
    std::fill(run, run + W, scalar_t(0));
    for (int64_t i = N - 1; i >= 0; --i) {
      const PlaneMap& m = maps[i];
      scalar_t* qr = grad_p + (bt * N + i) * 4 * P;
      scalar_t *qg = qr + P, *qb = qg + P, *qa = qb + P;
      const scalar_t *Ti = T_buf + i * W, *ai = a_buf + i * W, *hi = h_buf + i * W;
      for (int64_t x = 0; x < W; ++x) {
        const scalar_t a = ai[x], T = Ti[x], h = hi[x];
        const scalar_t d_alpha = T * (h - run[x]);
        const scalar_t wc = scalar_t(2) * a * T;
        run[x] = a * h + (scalar_t(1) - a + eps) * run[x];
        double fx, fy;
        texel_coords(m, rx[x], ry[x], Th, Tw, fx, fy);
        with_tap<scalar_t>(fx, fy, Th, Tw, [&](const auto& t) {
          t.scatter(qa, d_alpha);
          if (wc != scalar_t(0)) {
            t.scatter(qr, wc * gr[x]);
            t.scatter(qg, wc * gg[x]);
            t.scatter(qb, wc * gb[x]);
          }
        });
      }
    }
  }
}

template <typename scalar_t>
void backward_impl(const torch::Tensor& tex, const std::vector<View>& views, const std::vector<PlaneMap>& maps,
                   const torch::Tensor& g_img, const torch::Tensor& g_dep, torch::Tensor& grad, int64_t H, int64_t W,
                   int threads) {
  const int64_t B = static_cast<int64_t>(views.size()), Bt = tex.size(0), N = tex.size(1);
  const int64_t Th = tex.size(3), Tw = tex.size(4);
  const scalar_t* tex_p = tex.data_ptr<scalar_t>();
  const scalar_t* gi_p = g_img.data_ptr<scalar_t>();
  const scalar_t* gd_p = g_dep.data_ptr<scalar_t>();
  scalar_t* grad_p = grad.data_ptr<scalar_t>();
  const int64_t block = std::max<int64_t>(4, (H + 4 * threads - 1) / (4 * threads));
  const int64_t nb = (H + block - 1) / block;
  const bool shared = Bt == 1 && B > 1;  // all views scatter into one texture: run views one after another
  const int64_t group = shared ? 1 : B;

  for (int64_t b0 = 0; b0 < B; b0 += group) {
    const int64_t b1 = std::min(B, b0 + group);
    std::vector<char> parallel_ok(B, 0);
    for (int64_t b = b0; b < b1; ++b) {
      parallel_ok[b] = threads > 1 && same_parity_blocks_disjoint(views[b], &maps[b * N], N, H, W, Th, Tw, block);
    }
    // Work items (view, block) of one parity never share a texel row (checked above) or a texture.
    for (int parity = 0; parity < 2; ++parity) {
      std::vector<std::pair<int64_t, int64_t>> items;
      for (int64_t b = b0; b < b1; ++b) {
        if (!parallel_ok[b]) continue;
        for (int64_t k = parity; k < nb; k += 2) items.emplace_back(b, k);
      }
      const int64_t n_items = static_cast<int64_t>(items.size());
#pragma omp parallel num_threads(threads)
      {
        std::vector<double> rays(3 * W);
        std::vector<scalar_t> buf((3 * N + 1) * W);
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < n_items; ++it) {
          const int64_t b = items[it].first, k = items[it].second;
          backward_block<scalar_t>(tex_p, grad_p, views[b], &maps[b * N], Bt == 1 ? 0 : b, N, Th, Tw,
                                   gi_p + b * 3 * H * W, gd_p + b * H * W, H, W, k * block,
                                   std::min(H, (k + 1) * block), rays, buf);
        }
      }
    }
    // Views whose blocks could collide: all their rows on one thread (views still run in parallel
    // when they own their textures).
    std::vector<int64_t> serial;
    for (int64_t b = b0; b < b1; ++b) {
      if (!parallel_ok[b]) serial.push_back(b);
    }
    const int64_t n_serial = static_cast<int64_t>(serial.size());
    const int serial_threads = shared ? 1 : threads;
#pragma omp parallel num_threads(serial_threads)
    {
      std::vector<double> rays(3 * W);
      std::vector<scalar_t> buf((3 * N + 1) * W);
#pragma omp for schedule(dynamic, 1)
      for (int64_t s = 0; s < n_serial; ++s) {
        const int64_t b = serial[s];
        backward_block<scalar_t>(tex_p, grad_p, views[b], &maps[b * N], Bt == 1 ? 0 : b, N, Th, Tw,
                                 gi_p + b * 3 * H * W, gd_p + b * H * W, H, W, 0, H, rays, buf);
      }
    }
  }
}

torch::Tensor render_backward(torch::Tensor tex, torch::Tensor rays, torch::Tensor maps_t, torch::Tensor grad_image,
                              torch::Tensor grad_depth, bool clamp_last, int64_t threads) {
  check_inputs(tex, rays, maps_t);
  const int64_t B = rays.size(0), H = grad_image.size(2), W = grad_image.size(3);
  TORCH_CHECK(grad_image.sizes() == torch::IntArrayRef({B, 3, H, W}) && grad_image.is_contiguous() &&
                  grad_image.scalar_type() == tex.scalar_type(),
              "render_cpu: grad_image must be contiguous [B, 3, H, W] of the texture dtype");
  TORCH_CHECK(grad_depth.sizes() == torch::IntArrayRef({B, 1, H, W}) && grad_depth.is_contiguous() &&
                  grad_depth.scalar_type() == tex.scalar_type(),
              "render_cpu: grad_depth must be contiguous [B, 1, H, W] of the texture dtype");
  const auto views = read_views(rays);
  const auto maps = read_maps(maps_t, clamp_last);
  auto grad = torch::zeros_like(tex);
  AT_DISPATCH_FLOATING_TYPES(tex.scalar_type(), "render_backward", [&] {
    backward_impl<scalar_t>(tex, views, maps, grad_image, grad_depth, grad, H, W,
                            static_cast<int>(std::max<int64_t>(1, threads)));
  });
  return grad;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &render_forward, "fused MPI render (CPU): (image [B,3,H,W], depth [B,1,H,W])");
  m.def("backward", &render_backward, "gradient of the fused MPI render w.r.t. the textures (CPU)");
}
