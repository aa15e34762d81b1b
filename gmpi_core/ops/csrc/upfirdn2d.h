// Host-side interface of the fused upfirdn2d kernel (no torch or CUDA headers, so the .cu file can be
// compiled on its own with `nvcc -c`). Semantics: gmpi_core/ops/upfirdn2d.py (docs/method.md §11.5).
#pragma once

#include <cstdint>

namespace gmpi {

// Storage type of x and y; the filter is float32 (float64 when x is float64).
enum UpfirdnDType : int { kUpfirdnFloat32 = 0, kUpfirdnFloat64 = 1, kUpfirdnFloat16 = 2, kUpfirdnBFloat16 = 3 };

// y[p, oy, ox] = Σ_{j,k} u[p, oy·down_y + j − pad_y0, ox·down_x + k − pad_x0] · g[j, k]
// where u is x zero-inserted by `up` (u[n·up] = x[n], zero elsewhere and outside x): a *correlation*
// with g (the Python side flips the filter for a true convolution and folds the gain into g).
struct Upfirdn2dParams {
    const void* x;  // [planes, in_h, in_w] contiguous
    const void* g;  // [filter_h, filter_w] contiguous, float or double
    void* y;        // [planes, out_h, out_w] contiguous
    int64_t planes;
    int in_h, in_w, out_h, out_w;
    int filter_h, filter_w;
    int up_x, up_y, down_x, down_y;
    int pad_x0, pad_y0;  // the trailing paddings only determine out_h / out_w
    int dtype;           // UpfirdnDType
};

// Launches on `stream` (a cudaStream_t); returns 0 or a cudaError_t code.
int launch_upfirdn2d(const Upfirdn2dParams& p, void* stream);

// cudaGetErrorString for a code returned by launch_upfirdn2d.
const char* upfirdn2d_error_string(int code);

}  // namespace gmpi
