// Host-side interface of the fused bias_act kernel (no torch or CUDA headers, so the .cu file can be
// compiled on its own with `nvcc -c`). Semantics: gmpi_core/ops/bias_act.py (docs/method.md §4.1, §11.5).
#pragma once

#include <cstdint>

namespace gmpi {

// Must match ActivationSpec.kernel_code in bias_act.py.
enum BiasActActivation : int {
    kLinear = 0,
    kRelu = 1,
    kLrelu = 2,
    kTanh = 3,
    kSigmoid = 4,
    kElu = 5,
    kSelu = 6,
    kSoftplus = 7,
    kSwish = 8,
};

// Storage type of x, b, g and out (all equal).
enum KernelDType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

struct BiasActParams {
    const void* x;      // [numel] contiguous
    const void* b;      // [bias_size] or nullptr; element i uses b[(i / bias_stride) % bias_size]
    const void* g;      // [numel] incoming gradient (modes 1 and 2), else nullptr
    void* out;          // [numel]
    int64_t numel;
    int64_t bias_size;
    int64_t bias_stride;
    int mode;           // 0: clamp(act(z)·gain); 1: g·gain·act'(z)·mask; 2: g·gain·act''(z)·mask
    int act;            // BiasActActivation
    int dtype;          // KernelDType
    double alpha;
    double gain;
    double clamp;       // < 0: no clamping; mask = [ |gain·act(z)| <= clamp ]
};

// Launches on `stream` (a cudaStream_t); returns 0 or a cudaError_t code.
int launch_bias_act(const BiasActParams& p, void* stream);

// cudaGetErrorString for a code returned by a launch function.
const char* bias_act_error_string(int code);

}  // namespace gmpi
