// Fused MPI renderer for CUDA (docs/method.md §3): the same computation as render_cpu.cpp, one thread per pixel.
//
// Inputs as in render_cpu.cpp: tex [Bt, N, 4, Th, Tw] (Bt = B or 1), rays [B, 9] float64 (pixel → world
// direction q), maps [B, N, 5] float64 (ax, bx, ay, by, dz): plane i is sampled at texel
// (ax + bx·q_x/q_z, ay + by·q_y/q_z) and hit at camera depth dz/q_z.
//
// Forward: front to back in registers; float32 renders stop once the transmittance is below
// 1e-7 / max(2, z_max) (the rest changes image and depth by < 1e-7, see render_cpu.cpp).
// Backward: dL/dα_i = T_i (h_i − R_i) with R_i composited back to front (division-free, exact for α = 1),
// dL/dc_i = 2 α_i T_i g. T_i is needed back to front, so the forward pass stores it every kChunk planes
// (checkpoints in local memory) and each chunk is recomputed before it is walked backwards. Texel
// gradients are scattered with atomicAdd.
//
// UNVERIFIED ON A GPU when written (no GPU in the development session): gmpi_core/mpi/render.py runs a
// self-check against the reference renderer on first use and falls back (one warning) on mismatch.

#include <torch/extension.h>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <vector>

namespace {

constexpr double kTransmittanceEps = 1e-10;  // docs/method.md §3.3
constexpr double kSkipBound = 1e-7;
constexpr int kChunk = 16;
constexpr int kMaxChunks = 64;  // N ≤ 1024 planes
constexpr int kThreads = 256;

struct Pixel {
  double rx, ry, iqz;
};

__device__ inline Pixel pixel_rays(const double* __restrict__ A, int x, int y) {
  const double qx = A[0] * x + A[1] * y + A[2];
  const double qy = A[3] * x + A[4] * y + A[5];
  const double qz = A[6] * x + A[7] * y + A[8];
  const double inv = 1.0 / qz;
  return {qx * inv, qy * inv, inv};
}

template <typename scalar_t>
struct Tap {
  int64_t off[4];
  scalar_t w[4];
  bool valid[4];
};

// Zero-padded bilinear tap at texel coordinate (fx, fy) of plane map m (align_corners=True).
template <typename scalar_t>
__device__ inline bool make_tap(const double* __restrict__ m, const Pixel& p, bool clamp, int Th, int Tw,
                                Tap<scalar_t>& t) {
  double fx = m[0] + m[1] * p.rx, fy = m[2] + m[3] * p.ry;
  if (clamp) {
    fx = fmin(fmax(fx, 0.0), static_cast<double>(Tw - 1));
    fy = fmin(fmax(fy, 0.0), static_cast<double>(Th - 1));
  }
  if (!(fx > -1.0 && fx < static_cast<double>(Tw) && fy > -1.0 && fy < static_cast<double>(Th))) return false;
  const double x0f = floor(fx), y0f = floor(fy);
  const int x0 = static_cast<int>(x0f), y0 = static_cast<int>(y0f);
  const scalar_t wx1 = static_cast<scalar_t>(fx - x0f), wy1 = static_cast<scalar_t>(fy - y0f);
  const scalar_t wx[2] = {scalar_t(1) - wx1, wx1}, wy[2] = {scalar_t(1) - wy1, wy1};
  const bool vx[2] = {x0 >= 0, x0 + 1 < Tw}, vy[2] = {y0 >= 0, y0 + 1 < Th};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const int jy = k >> 1, jx = k & 1;
    const bool v = vx[jx] && vy[jy];
    t.valid[k] = v;
    t.off[k] = v ? static_cast<int64_t>(y0 + jy) * Tw + (x0 + jx) : 0;
    t.w[k] = v ? wy[jy] * wx[jx] : scalar_t(0);
  }
  return true;
}

template <typename scalar_t>
__device__ inline scalar_t sample(const scalar_t* __restrict__ plane, const Tap<scalar_t>& t) {
  return t.w[0] * __ldg(plane + t.off[0]) + t.w[1] * __ldg(plane + t.off[1]) + t.w[2] * __ldg(plane + t.off[2]) +
         t.w[3] * __ldg(plane + t.off[3]);
}

template <typename scalar_t>
__device__ inline void scatter(scalar_t* plane, const Tap<scalar_t>& t, scalar_t g) {
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if (t.valid[k]) atomicAdd(plane + t.off[k], t.w[k] * g);
  }
}

template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ tex, const double* __restrict__ rays,
                               const double* __restrict__ maps, scalar_t* __restrict__ image,
                               scalar_t* __restrict__ depth, int B, int Bt, int N, int Th, int Tw, int H, int W,
                               bool clamp_last) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<int64_t>(B) * H * W) return;
  const int x = static_cast<int>(idx % W), y = static_cast<int>((idx / W) % H), b = static_cast<int>(idx / (H * W));
  const Pixel p = pixel_rays(rays + 9 * b, x, y);
  const double* mb = maps + static_cast<int64_t>(b) * N * 5;
  double max_dz = 0.0;
  for (int i = 0; i < N; ++i) max_dz = fmax(max_dz, mb[5 * i + 4]);
  const scalar_t skip_below =
      sizeof(scalar_t) < 8 ? static_cast<scalar_t>(kSkipBound / fmax(2.0, max_dz * p.iqz)) : scalar_t(0);
  const scalar_t eps = static_cast<scalar_t>(kTransmittanceEps);
  const int64_t P = static_cast<int64_t>(Th) * Tw;
  const scalar_t* tb = tex + (Bt == 1 ? 0 : static_cast<int64_t>(b) * N * 4 * P);
  scalar_t T = 1, cr = 0, cg = 0, cb = 0, cd = 0;
  for (int i = 0; i < N && T >= skip_below; ++i) {
    Tap<scalar_t> t;
    scalar_t a = 0;
    if (make_tap(mb + 5 * i, p, clamp_last && i == N - 1, Th, Tw, t)) {
      const scalar_t* pr = tb + static_cast<int64_t>(i) * 4 * P;
      a = sample(pr + 3 * P, t);
      const scalar_t w = a * T;
      cr += w * sample(pr, t);
      cg += w * sample(pr + P, t);
      cb += w * sample(pr + 2 * P, t);
      cd += w * static_cast<scalar_t>(mb[5 * i + 4] * p.iqz);
    }
    T *= scalar_t(1) - a + eps;
  }
  const int64_t HW = static_cast<int64_t>(H) * W, o = static_cast<int64_t>(y) * W + x;
  image[b * 3 * HW + o] = scalar_t(2) * cr - scalar_t(1);  // docs/method.md §3.3: image = 2c − 1
  image[b * 3 * HW + HW + o] = scalar_t(2) * cg - scalar_t(1);
  image[b * 3 * HW + 2 * HW + o] = scalar_t(2) * cb - scalar_t(1);
  depth[b * HW + o] = cd;
}

template <typename scalar_t>
__global__ void backward_kernel(const scalar_t* __restrict__ tex, const double* __restrict__ rays,
                                const double* __restrict__ maps, const scalar_t* __restrict__ g_image,
                                const scalar_t* __restrict__ g_depth, scalar_t* __restrict__ grad, int B, int Bt,
                                int N, int Th, int Tw, int H, int W, bool clamp_last) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<int64_t>(B) * H * W) return;
  const int x = static_cast<int>(idx % W), y = static_cast<int>((idx / W) % H), b = static_cast<int>(idx / (H * W));
  const Pixel p = pixel_rays(rays + 9 * b, x, y);
  const double* mb = maps + static_cast<int64_t>(b) * N * 5;
  const scalar_t eps = static_cast<scalar_t>(kTransmittanceEps);
  const int64_t P = static_cast<int64_t>(Th) * Tw, HW = static_cast<int64_t>(H) * W;
  const int64_t o = static_cast<int64_t>(y) * W + x, plane_offset = Bt == 1 ? 0 : static_cast<int64_t>(b) * N * 4 * P;
  const scalar_t* tb = tex + plane_offset;
  scalar_t* gb = grad + plane_offset;
  const scalar_t gr = g_image[b * 3 * HW + o], gg = g_image[b * 3 * HW + HW + o];
  const scalar_t gbl = g_image[b * 3 * HW + 2 * HW + o], gd = g_depth[b * HW + o];

  // pass 1: transmittance checkpoints T_{c·kChunk}
  scalar_t checkpoint[kMaxChunks];
  scalar_t T = 1;
  for (int i = 0; i < N; ++i) {
    if (i % kChunk == 0) checkpoint[i / kChunk] = T;
    Tap<scalar_t> t;
    const scalar_t a = make_tap(mb + 5 * i, p, clamp_last && i == N - 1, Th, Tw, t)
                           ? sample(tb + static_cast<int64_t>(i) * 4 * P + 3 * P, t)
                           : scalar_t(0);
    T *= scalar_t(1) - a + eps;
  }
  // pass 2: chunks back to front; R_i = Σ_{k>i} α_k h_k Π_{i<j<k}(1 − α_j + ε)
  scalar_t R = 0;
  scalar_t T_chunk[kChunk], a_chunk[kChunk];
  for (int c = (N - 1) / kChunk; c >= 0; --c) {
    const int i0 = c * kChunk, i1 = min(N, i0 + kChunk);
    scalar_t Tl = checkpoint[c];
    for (int i = i0; i < i1; ++i) {
      Tap<scalar_t> t;
      const scalar_t a = make_tap(mb + 5 * i, p, clamp_last && i == N - 1, Th, Tw, t)
                             ? sample(tb + static_cast<int64_t>(i) * 4 * P + 3 * P, t)
                             : scalar_t(0);
      T_chunk[i - i0] = Tl;
      a_chunk[i - i0] = a;
      Tl *= scalar_t(1) - a + eps;
    }
    for (int i = i1 - 1; i >= i0; --i) {
      const scalar_t a = a_chunk[i - i0], Ti = T_chunk[i - i0];
      Tap<scalar_t> t;
      const bool hit = make_tap(mb + 5 * i, p, clamp_last && i == N - 1, Th, Tw, t);
      const scalar_t* pr = tb + static_cast<int64_t>(i) * 4 * P;
      const scalar_t h = hit ? scalar_t(2) * (gr * sample(pr, t) + gg * sample(pr + P, t) + gbl * sample(pr + 2 * P, t)) +
                                   gd * static_cast<scalar_t>(mb[5 * i + 4] * p.iqz)
                             : scalar_t(0);
      const scalar_t d_alpha = Ti * (h - R);
      const scalar_t wc = scalar_t(2) * a * Ti;  // dL/dc_i = 2 α_i T_i dL/dimage
      R = a * h + (scalar_t(1) - a + eps) * R;
      if (!hit) continue;
      scalar_t* qr = gb + static_cast<int64_t>(i) * 4 * P;
      scatter(qr + 3 * P, t, d_alpha);
      if (wc != scalar_t(0)) {
        scatter(qr, t, wc * gr);
        scatter(qr + P, t, wc * gg);
        scatter(qr + 2 * P, t, wc * gbl);
      }
    }
  }
}

void check_inputs(const torch::Tensor& tex, const torch::Tensor& rays, const torch::Tensor& maps) {
  TORCH_CHECK(tex.is_cuda() && rays.is_cuda() && maps.is_cuda(), "render_cuda: tensors must be on the GPU");
  TORCH_CHECK(tex.dim() == 5 && tex.size(2) == 4 && tex.is_contiguous(), "render_cuda: tex must be contiguous [B,N,4,Th,Tw]");
  TORCH_CHECK(rays.dim() == 2 && rays.size(1) == 9 && rays.scalar_type() == torch::kDouble && rays.is_contiguous(),
              "render_cuda: rays must be contiguous float64 [B, 9]");
  TORCH_CHECK(maps.dim() == 3 && maps.size(0) == rays.size(0) && maps.size(1) == tex.size(1) && maps.size(2) == 5 &&
                  maps.scalar_type() == torch::kDouble && maps.is_contiguous(),
              "render_cuda: maps must be contiguous float64 [B, N, 5]");
  TORCH_CHECK(tex.size(0) == rays.size(0) || tex.size(0) == 1, "render_cuda: tex batch must be B or 1");
  TORCH_CHECK(tex.size(1) <= kChunk * kMaxChunks, "render_cuda: at most ", kChunk * kMaxChunks, " planes");
}

}  // namespace

std::vector<torch::Tensor> render_forward_cuda(torch::Tensor tex, torch::Tensor rays, torch::Tensor maps, int64_t H,
                                               int64_t W, bool clamp_last, int64_t /*threads*/) {
  check_inputs(tex, rays, maps);
  const c10::cuda::CUDAGuard guard(tex.device());
  const int64_t B = rays.size(0);
  auto image = torch::empty({B, 3, H, W}, tex.options());
  auto depth = torch::empty({B, 1, H, W}, tex.options());
  const int64_t total = B * H * W;
  if (total == 0) return {image, depth};
  const int blocks = static_cast<int>((total + kThreads - 1) / kThreads);
  AT_DISPATCH_FLOATING_TYPES(tex.scalar_type(), "render_forward_cuda", [&] {
    forward_kernel<scalar_t><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        tex.data_ptr<scalar_t>(), rays.data_ptr<double>(), maps.data_ptr<double>(), image.data_ptr<scalar_t>(),
        depth.data_ptr<scalar_t>(), static_cast<int>(B), static_cast<int>(tex.size(0)), static_cast<int>(tex.size(1)),
        static_cast<int>(tex.size(3)), static_cast<int>(tex.size(4)), static_cast<int>(H), static_cast<int>(W),
        clamp_last);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {image, depth};
}

torch::Tensor render_backward_cuda(torch::Tensor tex, torch::Tensor rays, torch::Tensor maps, torch::Tensor grad_image,
                                   torch::Tensor grad_depth, bool clamp_last, int64_t /*threads*/) {
  check_inputs(tex, rays, maps);
  const c10::cuda::CUDAGuard guard(tex.device());
  const int64_t B = rays.size(0), H = grad_image.size(2), W = grad_image.size(3);
  TORCH_CHECK(grad_image.is_cuda() && grad_image.is_contiguous() && grad_image.sizes() == torch::IntArrayRef({B, 3, H, W}) &&
                  grad_image.scalar_type() == tex.scalar_type(),
              "render_cuda: grad_image must be contiguous [B, 3, H, W] of the texture dtype");
  TORCH_CHECK(grad_depth.is_cuda() && grad_depth.is_contiguous() && grad_depth.sizes() == torch::IntArrayRef({B, 1, H, W}) &&
                  grad_depth.scalar_type() == tex.scalar_type(),
              "render_cuda: grad_depth must be contiguous [B, 1, H, W] of the texture dtype");
  auto grad = torch::zeros_like(tex);
  const int64_t total = B * H * W;
  if (total == 0) return grad;
  const int blocks = static_cast<int>((total + kThreads - 1) / kThreads);
  AT_DISPATCH_FLOATING_TYPES(tex.scalar_type(), "render_backward_cuda", [&] {
    backward_kernel<scalar_t><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        tex.data_ptr<scalar_t>(), rays.data_ptr<double>(), maps.data_ptr<double>(), grad_image.data_ptr<scalar_t>(),
        grad_depth.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), static_cast<int>(B), static_cast<int>(tex.size(0)),
        static_cast<int>(tex.size(1)), static_cast<int>(tex.size(3)), static_cast<int>(tex.size(4)),
        static_cast<int>(H), static_cast<int>(W), clamp_last);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad;
}
