"""The config schema: every field a run can set, with the quick start's values.

The quick start trains a small CRNN with symmetric EP on scikit-learn's embedded 8x8 digits
(no download); `ep-jax-train` and `python -m experiments.train` run it by default. The configs
in the repository's `experiments/configs/` start from `get_config()` and change a few fields.
"""

import ml_collections

__all__ = ['get_config']


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.dataset = 'digits'  # digits | mnist5k | mnist | fashion_mnist | cifar10 | cifar100 | npz:DIR
  config.data.data_dir = ''  # tfds data_dir ('' = tfds default)
  config.data.train_files = ()  # npz: file names or globs for the train split
  config.data.test_files = ()  # npz: file names or globs for the test split
  config.data.train_subset = 0  # > 0: a fixed subset of the training set
  config.data.test_subset = 0
  # > 0: hold out this many training examples (a fixed near-stratified split) and evaluate on
  # them instead of the test split (choose hyperparameters on these, never on the test split)
  config.data.validation = 0
  config.data.augment = False  # random crop (pad crop_padding) + horizontal flip
  config.data.crop_padding = 4
  config.data.crop_mode = 'constant'  # padding before the crop: constant (zeros) | edge
  config.data.flip = True
  # Normalisation (x - mean) / std per channel, [0, 1] units; () = the dataset's statistics.
  config.data.mean = ()
  config.data.std = ()
  config.data.prefetch = 2

  config.model = ml_collections.ConfigDict()
  config.model.layout = '32,M,64,M'  # conv widths, M max pool, A average pool, or a preset
  config.model.dense = ()  # hidden dense widths after the convolutions
  config.model.readout = 'softmax'  # softmax (outside the system) | mse (output layer inside)
  config.model.activation = 'hard_sigmoid'
  config.model.kernel_size = 3
  config.model.padding = 'SAME'  # SAME | VALID
  # Per conv layer, one entry each; () = a preset's own paddings (vgg5: SAME,SAME,SAME,VALID),
  # else model.kernel_size / model.padding for every layer.
  config.model.kernel_sizes = ()
  config.model.paddings = ()
  # Max pooling's derivative at a tie: 'first' (all to the window's first maximum, as torch)
  # or 'split' (evenly between the tied elements).
  config.model.pool_ties = 'first'
  config.model.init_scale = 1.0
  # Weight init (ep_jax.initialization): pytorch (U(±init_scale/√fan_in)) | he (init_scale·√6/a,
  # a the activation's slope) | gains (init_gains, one per dynamical layer) | data (gains
  # calibrated on init_batch training images so that each layer's mean |s_l| at the free fixed
  # point lies in init_target while the relaxation converges).
  config.model.init = 'pytorch'
  config.model.init_gains = ()
  config.model.init_target = (0.1, 0.3)
  config.model.init_batch = 128
  config.model.readout_init_scale = 1.0  # times PyTorch's default readout init; 0 = zeros
  config.model.bias_init_scale = 1.0  # times the layers' initial biases (before the gains); 0 = zeros
  # Skip links inside the energy (Hopfield-ResNet): pairs of 1-based conv layer numbers (i, j),
  # j >= i + 2, e.g. ((1, 3), (3, 5)) = conv1 -> conv3 and conv3 -> conv5; each adds
  # < s_j, A(s_i) V_ij > to Φ (A: average pooling to layer j's size, V_ij a learned 1x1 map).
  # Layer j's spatial size must be layer i's divided by a power of two. () = none.
  config.model.skips = ()
  # V_ij ~ U(±skip_init_scale/√C_i), then times layer j's init gain (as its other weights).
  config.model.skip_init_scale = 1.0

  config.ep = ml_collections.ConfigDict()
  config.ep.estimator = 'symmetric'  # one_sided | random_sign | symmetric | holomorphic | bptt
  config.ep.beta = 0.5
  config.ep.free_steps = 30  # T1 (the limit when tol > 0)
  config.ep.nudged_steps = 10  # T2
  config.ep.tol = 0.0  # relaxation residual tolerance; 0 = fixed step counts
  config.ep.mode = 'sync'  # sync | async
  config.ep.holo_points = 4
  # γ in (0, 1]: s <- (1 - γ) s + γ σ(∂Φ/∂s) (same fixed points, smaller steps; 1 = undamped).
  config.ep.damping = 1.0
  # A stencil's nudged phases: 'sequential' (one after the other; faster on a 2-core CPU) or
  # 'vmapped' (one relaxation vmapped over the stencil's points); the same estimate.
  config.ep.nudged_phases = 'sequential'
  # How every relaxation (free, nudged, evaluation, the data init's calibration) iterates its
  # sweep to the fixed point (`ep_jax.relaxation.Solver`): 'plain' (s <- G(s)) or 'anderson'
  # (type-II Anderson acceleration over `memory` past sweeps, per example, from the step at
  # which an example's residual first falls to `start_residual`; safeguarded). Both stop on
  # the same residual `ep.tol`.
  # Warm starts: each training example's free phase starts from its own last free fixed point
  # (a store of N x the states, checkpointed with the run; `train_step.free_state_store`)
  # instead of zeros. The evaluation's free phases start from zeros.
  config.ep.warm_start = False
  config.ep.solver = ml_collections.ConfigDict()
  config.ep.solver.kind = 'plain'
  config.ep.solver.memory = 3
  config.ep.solver.regularization = 1e-8
  config.ep.solver.mixing = 1.0
  config.ep.solver.safeguard = True
  config.ep.solver.start_residual = 1e-2
  # Stop with NonConvergenceError when an epoch's mean final free-phase residual (max |Δs| of
  # the last step) exceeds this: the relaxation oscillates instead of settling. 0 = off.
  config.ep.max_residual = 0.25
  config.ep.dtype = 'float32'  # dtype of the states and gradients: float32 | float64 | bfloat16
  # Mixed precision: '' (off) or 'bfloat16': the relaxation's convolutions and matmuls round
  # their operands to it and accumulate in ep.dtype (states and gradients keep ep.dtype).
  config.ep.compute_dtype = ''

  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rates = (0.2, 0.1, 0.05)  # one per synapse group, or a single float
  config.optim.optimizer = 'sgd'  # sgd (heavy-ball momentum) | adam
  config.optim.momentum = 0.9
  # One value, or one per synapse group as learning_rates (a float or a tuple may be set).
  config.optim.weight_decay = ml_collections.FieldReference(3e-4, field_type=object)
  config.optim.schedule = 'cosine'  # constant | cosine | sgdr
  config.optim.eta_min = 1e-5
  config.optim.decay_epochs = 0  # epochs the cosine anneals over, then held at eta_min; 0 = all
  config.optim.schedule_step = 'step'  # the rate changes every step | once per epoch
  config.optim.restart_epochs = 0  # sgdr: first period in epochs
  config.optim.restart_mult = 2.0
  config.optim.signal_learning_rate = 0.05  # learned LES heads

  config.train = ml_collections.ConfigDict()
  config.train.epochs = 20
  config.train.batch_size = 32
  config.train.eval_batch_size = 256
  config.train.log_every_seconds = 5.0
  config.train.checkpoints_to_keep = 3
  # Mid-epoch checkpoints, so that a killed run resumes mid-epoch exactly (the latest is kept
  # until its epoch ends; Ctrl-C writes one too): every this many steps (0: off), and, on one
  # process, when this many seconds have passed since the last checkpoint (0: off).
  config.train.checkpoint_every_steps = 0
  config.train.checkpoint_every_seconds = 600.0
  config.train.num_devices = 0  # devices of the data-parallel mesh (0 = all visible)
  config.train.multihost = False  # call jax.distributed.initialize() first
  # Explicit cluster for multihost (else auto-detected): 'host:port' of process 0, the
  # number of processes and this process's id.
  config.train.coordinator_address = ''
  config.train.num_processes = 0
  config.train.process_id = -1

  config.signals = ml_collections.ConfigDict()
  config.signals.les = ml_collections.ConfigDict()
  config.signals.les.enabled = False
  config.signals.les.layers = ()  # 0-based hidden layer indices; () = every hidden layer
  config.signals.les.head = 'fixed'  # fixed (random projection) | learned
  config.signals.les.pool = 'gap'  # gap (global average pool) | flatten
  config.signals.les.loss = 'ce'  # ce | mse | predsim
  config.signals.les.predsim_mix = 0.99  # predsim: weight of the similarity-matching term
  # mean: ℓ_l on the pooled features as is | unit: ℓ_l x H·W (each unit gets the pooled force)
  config.signals.les.normalize = 'mean'
  config.signals.kd = ml_collections.ConfigDict()
  config.signals.kd.enabled = False
  config.signals.kd.teacher_workdir = ''  # a workdir of experiments.train_teacher
  # With no teacher_workdir: train the feed-forward twin (config.teacher) into WORKDIR/teacher
  # before the EP run (skipped when it is there, e.g. when the same command resumes).
  config.signals.kd.train_teacher = False
  config.signals.kd.layers = ()  # 0-based hidden layer indices; () = every hidden layer
  config.signals.kd.layerwise = True  # False: no layer-wise targets (output distillation only)
  config.signals.kd.output = True  # add the output KD term
  # Output KD: ℓ_out = (1 - α(e)) ℓ + α(e) τ² KL; κ does not scale it, α = 0 gives ℓ exactly.
  # α(e) follows alpha_schedule (the kinds of signals.kappa) from α_init = alpha to alpha_min
  # (gamma: exp rate); constant (the default) keeps α = alpha every epoch.
  config.signals.kd.alpha = 0.5
  config.signals.kd.alpha_schedule = 'constant'  # constant | linear | exp | cos
  config.signals.kd.alpha_min = 0.0
  config.signals.kd.alpha_gamma = 0.1
  config.signals.kd.temperature = 4.0
  # layer: ½‖s_l - t_l‖²/n_l (a unit's force β κ (s - t)/n_l) | unit: ½‖s_l - t_l‖² (β κ (s - t))
  config.signals.kd.normalize = 'layer'
  config.signals.kappa = ml_collections.ConfigDict()
  config.signals.kappa.schedule = 'constant'  # constant | linear | exp | cos
  config.signals.kappa.init = 1.0
  config.signals.kappa.min = 0.0
  config.signals.kappa.gamma = 0.1  # exp schedule rate per epoch
  config.signals.kappa.per_layer = ()  # optional per-layer κ_init values (else the global)

  config.teacher = ml_collections.ConfigDict()
  config.teacher.epochs = 20
  config.teacher.learning_rate = 0.05
  config.teacher.batch_size = 64
  config.teacher.init_scale = 0.0  # the teacher's weight init scale; 0 = model.init_scale
  # The teacher's activation; '' = model.activation. 'relu' gives a plain ReLU network of the
  # same layers: a reference point for the twin, not a KD teacher (its states are unbounded).
  config.teacher.activation = ''
  return config
