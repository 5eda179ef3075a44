"""The accelerator run: one command on the device machine and its rehearsal on the CPU.

  bash experiments/accelerator/prepare.sh      # here, once: .whl/ and .device_data/
  bash experiments/accelerator/rehearse.sh OUT # here: the whole device run, tiny, on the CPU
  bash experiments/accelerator/device.sh [OUT] # there (docs/BENCHMARKS.md §6)

`pack` writes and reads the CIFAR-10 images the run carries, `probe` is its first stage, and
`plan` drives the speed stage and sizes the others.
"""
