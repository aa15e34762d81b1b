// Python binding of the CUDA MPI renderer (render_cuda.cu); same interface as render_cpu.cpp.
#include <torch/extension.h>

#include <vector>

std::vector<torch::Tensor> render_forward_cuda(torch::Tensor tex, torch::Tensor rays, torch::Tensor maps, int64_t H,
                                               int64_t W, bool clamp_last, int64_t threads);
torch::Tensor render_backward_cuda(torch::Tensor tex, torch::Tensor rays, torch::Tensor maps, torch::Tensor grad_image,
                                   torch::Tensor grad_depth, bool clamp_last, int64_t threads);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &render_forward_cuda, "fused MPI render (CUDA): (image [B,3,H,W], depth [B,1,H,W])");
  m.def("backward", &render_backward_cuda, "gradient of the fused MPI render w.r.t. the textures (CUDA)");
}
