#include "sdtune/models/gradient_checkpoint.h"

#include <utility>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/core/ivalue.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include "sdtune/error.h"
#include "sdtune/models/autocast.h"

namespace sdtune::models {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Generator default_generator(const c10::Device& device) {
  return device.is_cpu() ? at::detail::getDefaultCPUGenerator()
                         : at::globalContext().defaultGenerator(device);
}

// Carries the function from forward to backward inside ctx->saved_data (an IValue capsule).
struct FnHolder : torch::CustomClassHolder {
  explicit FnHolder(CheckpointedFn f) : fn(std::move(f)) {}
  CheckpointedFn fn;
};

struct Checkpoint : torch::autograd::Function<Checkpoint> {
  // `params` are arguments only so that autograd links them to the output: fn reads them itself.
  static at::Tensor forward(AutogradContext* ctx, c10::intrusive_ptr<FnHolder> holder,
                            at::TensorList inputs, at::TensorList params) {
    // Function::apply already runs forward with grad mode off: no graph, no saved activations.
    at::NoGradGuard no_grad;
    const c10::Device rng_device = !inputs.empty() ? inputs[0].device() : c10::Device(c10::kCPU);
    // The random draws (dropout) must repeat in the recomputation: the device's default
    // generator state goes along (torch.utils.checkpoint's preserve_rng_state).
    ctx->saved_data["rng_state"] = default_generator(rng_device).get_state();
    at::Tensor out = holder->fn(inputs.vec());
    ctx->saved_data["fn"] = c10::IValue::make_capsule(std::move(holder));
    ctx->saved_data["num_inputs"] = static_cast<int64_t>(inputs.size());
    // The recomputation must see the autocast state of the forward pass (backward may run on
    // another thread, where autocast is off), as torch.utils.checkpoint restores it.
    const c10::DeviceType device = !inputs.empty()
                                       ? inputs[0].device().type()
                                       : (!params.empty() ? params[0].device().type() : c10::kCPU);
    ctx->saved_data["device"] = static_cast<int64_t>(device);
    ctx->saved_data["autocast"] = at::autocast::is_autocast_enabled(device);
    ctx->saved_data["autocast_dtype"] =
        static_cast<int64_t>(at::autocast::get_autocast_dtype(device));
    variable_list saved = inputs.vec();
    saved.insert(saved.end(), params.begin(), params.end());
    ctx->save_for_backward(std::move(saved));
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto holder = c10::static_intrusive_pointer_cast<FnHolder>(ctx->saved_data["fn"].toCapsule());
    const auto num_inputs = static_cast<size_t>(ctx->saved_data["num_inputs"].toInt());
    variable_list wrt = ctx->get_saved_variables();  // inputs, then params
    // Recompute from detached copies of the inputs, so that the recomputed graph starts at them.
    variable_list inputs;
    for (size_t i = 0; i < num_inputs; ++i) {
      wrt[i] = wrt[i].detach().requires_grad_(wrt[i].requires_grad());
      inputs.push_back(wrt[i]);
    }
    at::Tensor out;
    {
      // Replay the forward's random draws, then give the generator back its current state.
      at::Generator gen =
          default_generator(num_inputs > 0 ? wrt[0].device() : c10::Device(c10::kCPU));
      const at::Tensor current = gen.get_state();
      gen.set_state(ctx->saved_data["rng_state"].toTensor());
      struct Restore {
        at::Generator& gen;
        const at::Tensor& state;
        ~Restore() { gen.set_state(state); }
      } restore{gen, current};
      const auto device = static_cast<c10::DeviceType>(ctx->saved_data["device"].toInt());
      std::optional<at::ScalarType> amp;
      if (ctx->saved_data["autocast"].toBool())
        amp = static_cast<at::ScalarType>(ctx->saved_data["autocast_dtype"].toInt());
      AutocastGuard autocast(device, amp);
      at::AutoGradMode grad_mode(true);
      out = holder->fn(inputs);
    }
    // d out / d (inputs, params) · grad_out, for those that need it.
    variable_list targets;
    for (const at::Tensor& x : wrt)
      if (x.requires_grad()) targets.push_back(x);
    variable_list grads;
    if (!targets.empty() && out.requires_grad())
      grads = torch::autograd::grad({out}, targets, {grad_outputs[0]}, /*retain_graph=*/false,
                                    /*create_graph=*/false, /*allow_unused=*/true);
    // One gradient per forward argument: none for the function, then the inputs and params.
    variable_list result{at::Tensor()};
    size_t next = 0;
    for (const at::Tensor& x : wrt)
      result.push_back(x.requires_grad() && next < grads.size() ? grads[next++] : at::Tensor());
    return result;
  }
};

}  // namespace

at::Tensor checkpoint(CheckpointedFn fn, const std::vector<at::Tensor>& inputs,
                      const std::vector<at::Tensor>& params) {
  for (const at::Tensor& x : inputs)
    if (!x.defined()) throw Error("gradient checkpoint: undefined input tensor");
  return Checkpoint::apply(c10::make_intrusive<FnHolder>(std::move(fn)), at::TensorList(inputs),
                           at::TensorList(params));
}

}  // namespace sdtune::models
