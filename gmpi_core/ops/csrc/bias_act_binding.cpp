// PyTorch binding of the fused bias_act kernel: argument checks, output allocation, launch.
// Called from gmpi_core/ops/bias_act.py (_KernelArgs.run); semantics in bias_act.h.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include "bias_act.h"

namespace {

int dtype_code(at::ScalarType t) {
    switch (t) {
        case at::kFloat: return gmpi::kFloat32;
        case at::kDouble: return gmpi::kFloat64;
        case at::kHalf: return gmpi::kFloat16;
        case at::kBFloat16: return gmpi::kBFloat16;
        default: TORCH_CHECK(false, "bias_act: unsupported dtype ", t, "; use float16/bfloat16/float32/float64");
    }
    return -1;
}

// b and g may be empty tensors, meaning "no bias" and "no incoming gradient" (mode 0).
torch::Tensor bias_act(torch::Tensor x, torch::Tensor b, torch::Tensor g, int64_t dim, int64_t mode, int64_t act,
                       double alpha, double gain, double clamp) {
    TORCH_CHECK(x.is_cuda() && x.is_contiguous(), "bias_act: x must be a contiguous CUDA tensor");
    TORCH_CHECK(mode >= 0 && mode <= 2, "bias_act: mode must be 0, 1 or 2, got ", mode);
    TORCH_CHECK(act >= gmpi::kLinear && act <= gmpi::kSwish, "bias_act: unknown activation code ", act);
    const bool has_bias = b.numel() > 0;
    if (has_bias) {
        TORCH_CHECK(dim >= 0 && dim < x.dim(), "bias_act: dim ", dim, " out of range for ", x.dim(), "-D x");
        TORCH_CHECK(b.dim() == 1 && b.size(0) == x.size(dim), "bias_act: b must have x.size(dim) entries");
        TORCH_CHECK(b.is_contiguous() && b.device() == x.device() && b.scalar_type() == x.scalar_type(),
                    "bias_act: b must be contiguous, on x's device and of x's dtype");
    }
    if (mode != 0) {
        TORCH_CHECK(g.sizes() == x.sizes(), "bias_act: gradient must have x's shape");
        TORCH_CHECK(g.is_contiguous() && g.device() == x.device() && g.scalar_type() == x.scalar_type(),
                    "bias_act: gradient must be contiguous, on x's device and of x's dtype");
    }
    const c10::cuda::OptionalCUDAGuard device_guard(x.device());
    torch::Tensor out = torch::empty(x.sizes(), x.options());
    if (x.numel() == 0) return out;

    gmpi::BiasActParams p{};
    p.x = x.data_ptr();
    p.b = has_bias ? b.data_ptr() : nullptr;
    p.g = mode != 0 ? g.data_ptr() : nullptr;
    p.out = out.data_ptr();
    p.numel = x.numel();
    p.bias_size = has_bias ? x.size(dim) : 1;
    p.bias_stride = 1;
    if (has_bias) {
        for (int64_t d = dim + 1; d < x.dim(); ++d) p.bias_stride *= x.size(d);
    }
    p.mode = static_cast<int>(mode);
    p.act = static_cast<int>(act);
    p.dtype = dtype_code(x.scalar_type());
    p.alpha = alpha;
    p.gain = gain;
    p.clamp = clamp;
    const int err = gmpi::launch_bias_act(p, c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == 0, "bias_act: CUDA kernel launch failed: ", gmpi::bias_act_error_string(err));
    return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("bias_act", &bias_act, "Fused bias + activation + gain + clamp and its derivatives (CUDA)");
}
