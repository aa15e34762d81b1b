// Fused bias + activation + gain + clamp and its first/second derivatives (docs/method.md §4.1, §11.5).
// z = x + b; mode 0 writes clamp(act(z)·gain), mode 1 g·gain·act'(z)·mask, mode 2 g·gain·act''(z)·mask,
// where mask = 1 iff |gain·act(z)| <= clamp (torch.clamp's gradient convention) or clamping is off.
#include "bias_act.h"
#include "bias_act_math.h"
#include "common.cuh"

namespace gmpi {
namespace {

// One output element; __host__ so that the math can be unit-tested on a machine without a GPU.
template <typename T>
__host__ __device__ inline void bias_act_element(const BiasActParams& p, int64_t i) {
    using C = typename ComputeType<T>::type;
    const T* b = static_cast<const T*>(p.b);
    const C alpha = static_cast<C>(p.alpha);
    const C gain = static_cast<C>(p.gain);
    const C clamp = static_cast<C>(p.clamp);
    C z = to_compute(static_cast<const T*>(p.x)[i]);
    if (b != nullptr) z += to_compute(b[(i / p.bias_stride) % p.bias_size]);
    C result;
    if (p.mode == 0) {
        result = act_value(p.act, z, alpha) * gain;
        if (p.clamp >= 0.0) result = result > clamp ? clamp : (result < -clamp ? -clamp : result);
    } else {
        const C slope = p.mode == 1 ? act_grad(p.act, z, alpha) : act_grad2(p.act, z);
        result = to_compute(static_cast<const T*>(p.g)[i]) * gain * slope;
        if (p.clamp >= 0.0) {
            const C pre = act_value(p.act, z, alpha) * gain;
            if (!(pre >= -clamp && pre <= clamp)) result = C(0);
        }
    }
    static_cast<T*>(p.out)[i] = from_compute<T>(result);
}

template <typename T>
__global__ void bias_act_kernel(BiasActParams p) {
    const int64_t step = static_cast<int64_t>(blockDim.x) * gridDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < p.numel; i += step) {
        bias_act_element<T>(p, i);
    }
}

template <typename T>
int launch_typed(const BiasActParams& p, cudaStream_t stream) {
    constexpr int kBlock = 256;
    bias_act_kernel<T><<<grid_size(p.numel, kBlock), kBlock, 0, stream>>>(p);
    return static_cast<int>(cudaGetLastError());
}

}  // namespace

int launch_bias_act(const BiasActParams& p, void* stream) {
    if (p.numel == 0) return 0;
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    switch (p.dtype) {
        case kFloat32: return launch_typed<float>(p, s);
        case kFloat64: return launch_typed<double>(p, s);
        case kFloat16: return launch_typed<__half>(p, s);
        case kBFloat16: return launch_typed<__nv_bfloat16>(p, s);
        default: return static_cast<int>(cudaErrorInvalidValue);
    }
}

const char* bias_act_error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // namespace gmpi
