// PyTorch binding of the fused upfirdn2d kernel: argument checks, output size, launch.
// Called from gmpi_core/ops/upfirdn2d.py (_Upfirdn2dCuda); semantics in upfirdn2d.h.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include "upfirdn2d.h"

namespace {

int dtype_code(at::ScalarType t) {
    switch (t) {
        case at::kFloat: return gmpi::kUpfirdnFloat32;
        case at::kDouble: return gmpi::kUpfirdnFloat64;
        case at::kHalf: return gmpi::kUpfirdnFloat16;
        case at::kBFloat16: return gmpi::kUpfirdnBFloat16;
        default: TORCH_CHECK(false, "upfirdn2d: unsupported dtype ", t, "; use float16/bfloat16/float32/float64");
    }
    return -1;
}

// x [B, C, H, W]; g [fh, fw] correlation filter (gain and flip already applied).
torch::Tensor upfirdn2d(torch::Tensor x, torch::Tensor g, int64_t up_x, int64_t up_y, int64_t down_x,
                        int64_t down_y, int64_t pad_x0, int64_t pad_x1, int64_t pad_y0, int64_t pad_y1) {
    TORCH_CHECK(x.is_cuda() && x.is_contiguous() && x.dim() == 4,
                "upfirdn2d: x must be a contiguous 4-D CUDA tensor [B, C, H, W]");
    const auto filter_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    TORCH_CHECK(g.dim() == 2 && g.is_contiguous() && g.device() == x.device() && g.scalar_type() == filter_type,
                "upfirdn2d: filter must be a contiguous 2-D ", filter_type, " tensor on x's device");
    TORCH_CHECK(up_x >= 1 && up_y >= 1 && down_x >= 1 && down_y >= 1, "upfirdn2d: up/down must be >= 1");
    const int64_t in_h = x.size(2), in_w = x.size(3), filter_h = g.size(0), filter_w = g.size(1);
    const int64_t span_h = in_h * up_y + pad_y0 + pad_y1 - filter_h;
    const int64_t span_w = in_w * up_x + pad_x0 + pad_x1 - filter_w;
    TORCH_CHECK(span_h >= 0 && span_w >= 0, "upfirdn2d: padding crops away the whole output");
    const int64_t out_h = span_h / down_y + 1, out_w = span_w / down_x + 1;
    TORCH_CHECK(in_h * up_y + pad_y0 + pad_y1 < INT32_MAX && in_w * up_x + pad_x0 + pad_x1 < INT32_MAX,
                "upfirdn2d: spatial size too large for the fused kernel");

    const c10::cuda::OptionalCUDAGuard device_guard(x.device());
    torch::Tensor y = torch::empty({x.size(0), x.size(1), out_h, out_w}, x.options());
    if (y.numel() == 0) return y;

    gmpi::Upfirdn2dParams p{};
    p.x = x.data_ptr();
    p.g = g.data_ptr();
    p.y = y.data_ptr();
    p.planes = x.size(0) * x.size(1);
    p.in_h = static_cast<int>(in_h);
    p.in_w = static_cast<int>(in_w);
    p.out_h = static_cast<int>(out_h);
    p.out_w = static_cast<int>(out_w);
    p.filter_h = static_cast<int>(filter_h);
    p.filter_w = static_cast<int>(filter_w);
    p.up_x = static_cast<int>(up_x);
    p.up_y = static_cast<int>(up_y);
    p.down_x = static_cast<int>(down_x);
    p.down_y = static_cast<int>(down_y);
    p.pad_x0 = static_cast<int>(pad_x0);
    p.pad_y0 = static_cast<int>(pad_y0);
    p.dtype = dtype_code(x.scalar_type());
    const int err = gmpi::launch_upfirdn2d(p, c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == 0, "upfirdn2d: CUDA kernel launch failed: ", gmpi::upfirdn2d_error_string(err));
    return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("upfirdn2d", &upfirdn2d, "Fused zero-insert upsample + pad + FIR correlation + decimate (CUDA)");
}
