// Double backward for the C++ autograd nodes (the cells): the fused backward kernels are not
// themselves differentiable, so under create_graph=True a node recomputes its step with
// differentiable ATen ops and lets autograd differentiate that, keeping the graph.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/csrc/autograd/autograd.h>

#include <vector>

namespace fastseq {

// d(outputs)/d(inputs) contracted with grad_outputs (undefined = no gradient there), for the
// inputs with needed[i] (and defined); the others get an undefined gradient. create_graph is
// on, so the returned gradients are differentiable again.
inline std::vector<at::Tensor> grad_through(const std::vector<at::Tensor>& outputs,
                                            const std::vector<at::Tensor>& grad_outputs,
                                            const std::vector<at::Tensor>& inputs,
                                            const std::vector<bool>& needed) {
  std::vector<at::Tensor> outs, gouts, wrt;
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (!grad_outputs[i].defined() || !outputs[i].requires_grad()) continue;
    outs.push_back(outputs[i]);
    gouts.push_back(grad_outputs[i]);
  }
  std::vector<size_t> index;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (needed[i] && inputs[i].defined() && inputs[i].requires_grad()) {
      index.push_back(i);
      wrt.push_back(inputs[i]);
    }
  }
  std::vector<at::Tensor> result(inputs.size());
  if (outs.empty() || wrt.empty()) return result;
  auto grads = torch::autograd::grad(outs, wrt, gouts, /*retain_graph=*/true,
                                     /*create_graph=*/true, /*allow_unused=*/true);
  for (size_t j = 0; j < index.size(); ++j) result[index[j]] = grads[j];
  return result;
}

}  // namespace fastseq
