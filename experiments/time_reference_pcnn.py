r"""Times the PyTorch reference's EP training step, for the CPU-parity comparison of BENCHMARKS.md.

Not part of ep_jax and not run by the tests: it needs PyTorch and a checkout of the public
reference implementation of Laborieux et al. 2021 (github.com/Laborieux-Axel/
Equilibrium-Propagation), whose `model_utils.py` it imports (nothing of it is copied here).

  python experiments/time_reference_pcnn.py --ref_dir=/path/to/Equilibrium-Propagation \
      [--threads=2] [--steps=5] [--mbs=64] [--T1=30] [--T2=10] [--channels=32,64,128]

One step is what the reference's `train()` does per batch for `--alg EP --thirdphase
--softmax`: a free phase of T1 steps, a +β nudged phase and a -β nudged phase of T2 steps each
(both from the free fixed point), `compute_syn_grads` with (β, -β), and an SGD step (momentum
0.9, weight decay 3e-4, per-layer rates). The network is `P_CNN` on 32x32x3 inputs with the
given conv channels (3x3 kernels, stride 1, padding 1, 2x2 max pools), a softmax readout and
the reference's hard sigmoid. The batch is random; one warm-up step, then `--steps` timed
steps. Prints one JSON line with `examples_per_s` (batch / median step time) like
`experiments.benchmark`.
"""

import argparse
import json
import statistics
import sys
import time
import types


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--ref_dir', required=True, help='checkout of the reference repository')
  p.add_argument('--threads', type=int, default=2)
  p.add_argument('--steps', type=int, default=5)
  p.add_argument('--mbs', type=int, default=64)
  p.add_argument('--T1', type=int, default=30)
  p.add_argument('--T2', type=int, default=10)
  p.add_argument('--beta', type=float, default=1.0)
  p.add_argument('--channels', default='32,64,128')
  a = p.parse_args()
  # The reference's module imports matplotlib and torchvision at the top for plotting and
  # data loading, which the timed step does not use.
  for name in ('matplotlib', 'matplotlib.pyplot', 'torchvision'):
    stub = types.ModuleType(name)
    stub.use = lambda *args, **kwargs: None
    sys.modules.setdefault(name, stub)
  sys.path.insert(0, a.ref_dir)
  import torch  # pylint: disable=g-import-not-at-top
  from model_utils import P_CNN, copy, make_pools, my_hard_sig  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(a.threads)
  torch.set_num_interop_threads(1)
  torch.manual_seed(0)
  channels = [3] + [int(c) for c in a.channels.split(',')]
  n = len(channels) - 1
  model = P_CNN(32, channels, [3] * n, [1] * n, [10], make_pools('m' * n), [1] * n,
                activation=my_hard_sig, softmax=True)
  rates = ([0.25, 0.15, 0.1, 0.08, 0.05] + [0.05] * n)[:n] + [0.05]
  opt = torch.optim.SGD([{'params': syn.parameters(), 'lr': lr, 'weight_decay': 3e-4}
                         for syn, lr in zip(model.synapses, rates)], momentum=0.9)
  criterion = torch.nn.CrossEntropyLoss(reduction='none')
  x = torch.rand(a.mbs, 3, 32, 32)
  y = torch.randint(0, 10, (a.mbs,))

  def train_step():
    neurons = model.init_neurons(x.size(0), 'cpu')
    neurons = model(x, y, neurons, a.T1, beta=0.0, criterion=criterion)
    free = copy(neurons)
    plus = copy(model(x, y, neurons, a.T2, beta=a.beta, criterion=criterion))
    minus = copy(model(x, y, copy(free), a.T2, beta=-a.beta, criterion=criterion))
    model.compute_syn_grads(x, y, plus, minus, (a.beta, -a.beta), criterion)
    opt.step()

  train_step()  # warm-up
  times = []
  for _ in range(a.steps):
    t = time.perf_counter()
    train_step()
    times.append(time.perf_counter() - t)
  median = statistics.median(times)
  print(json.dumps({'framework': 'torch', 'torch': torch.__version__,
                    'threads': torch.get_num_threads(), 'examples_per_s': a.mbs / median,
                    'step_s_median': median, 'step_s': times,
                    'flags': vars(a)}), flush=True)


if __name__ == '__main__':
  main()
