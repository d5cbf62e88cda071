// A small C ABI over two of libtorch's oneDNN operators that tch does not expose (they
// are registered in the `mkldnn` namespace, outside ATen's native functions):
//
// - mkldnn::_reorder_linear_weight: a linear layer's weight in oneDNN's own blocked
//   layout, packed once at load instead of reordered at every product;
// - mkldnn::_linear_pointwise: input x packed weight + bias, with an activation (GELU)
//   applied in the same pass as a oneDNN post-op.
//
// Both are called boxed through the dispatcher, so nothing here depends on the kernels'
// C++ signatures. Tensors cross as tch's handles (at::Tensor*); each call returns null or
// an error message to free with kb_onednn_free_error.
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/ivalue.h>
#include <ATen/core/stack.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <string>

namespace {

char* error_message(const char* what) {
  char* copy = static_cast<char*>(std::malloc(std::strlen(what) + 1));
  if (copy != nullptr) {
    std::strcpy(copy, what);
  }
  return copy;
}

// Runs operator `name` on `stack`; its single result is moved into a new handle.
char* call(const char* name, torch::jit::Stack& stack, at::Tensor** out) {
  try {
    auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
    op.callBoxed(&stack);
    *out = new at::Tensor(std::move(stack.at(0)).toTensor());
    return nullptr;
  } catch (const std::exception& e) {
    return error_message(e.what());
  } catch (...) {
    return error_message("unknown error");
  }
}

}  // namespace

extern "C" {

char* kb_onednn_pack_linear_weight(const at::Tensor* weight, at::Tensor** packed) {
  torch::jit::Stack stack;
  stack.emplace_back(*weight);
  stack.emplace_back(c10::IValue());
  return call("mkldnn::_reorder_linear_weight", stack, packed);
}

// `attr`: "none" or "gelu" (exact, erf-based).
char* kb_onednn_linear(const at::Tensor* input, const at::Tensor* packed, const at::Tensor* bias,
                       const char* attr, at::Tensor** out) {
  torch::jit::Stack stack;
  stack.emplace_back(*input);
  stack.emplace_back(*packed);
  stack.emplace_back(*bias);
  stack.emplace_back(std::string(attr));
  stack.emplace_back(c10::List<std::optional<at::Scalar>>());
  if (std::strcmp(attr, "gelu") == 0) {
    stack.emplace_back(std::string("none"));
  } else {
    stack.emplace_back(c10::IValue());
  }
  return call("mkldnn::_linear_pointwise", stack, out);
}

void kb_onednn_free_error(char* message) { std::free(message); }

}  // extern "C"
