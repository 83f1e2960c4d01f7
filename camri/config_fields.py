"""The config fields' history and roles: what old config.json files imply, what a resume may
change, and what a population's runs may differ in (re-exported by `config_lib`)."""


# Fields added after runs had been written: the value a config.json without
# the field implies, i.e. what those runs did. `run_log.read_config` fills them
# in, so an old workdir resumes (or is refused) and is reported as the run it was.
# Runs before conv_weight_grad took XLA's weight gradient in every layer; ResNet
# runs before resnet_padding padded as XLA's SAME; runs before data_on_device
# read batches from tf.data, one step per call. A callable value is the value
# for the record it is given.
ADDED_FIELDS: dict[str, object] = {
    "validation_fraction": 0.0, "adam_eps": 1e-8, "conv_weight_grad": "xla",
    "input_normalization": "none", "freeze_backbone": False, "backbone_learning_rate": None,
    "resnet_padding": lambda record: ("same" if str(record.get("model")).startswith("resnet")
                                      else "torchvision"),
    "data_on_device": "false", "steps_per_call": 1, "member_axis": "auto", "trunk_from": None,
}


def with_added_fields(record: dict) -> dict:
  """`record` (a config.json) with each field of `ADDED_FIELDS` it lacks filled in."""
  record = dict(record)
  for path, value in ADDED_FIELDS.items():
    *parents, leaf = path.split(".")
    node = record
    for part in parents:
      node[part] = dict(node.get(part) or {})
      node = node[part]
    if leaf not in node:
      node[leaf] = value(record) if callable(value) else value
  return record


# Fields that may change between the runs of one workdir: they don't change
# what an epoch computes (either feed trains the same batches, camri/feeds.py).
RESUMABLE_CHANGES = ("num_epochs", "progress_bar", "keep_checkpoints", "data_dir",
                     "data_on_device", "steps_per_call", "member_axis", "population")

# What the runs of a population (camri/members.py) may differ in; everything
# else of their configs is one program's. The loss's fields are those it takes
# as arrays (`objectives.Objective.hparams`): per-class vectors and the scale.
MEMBER_FIELDS = ("seed", "tag", "learning_rate", "loss.important_classes")
LOSS_MEMBER_FIELDS = {
    "wce": ("important_weight",), "rwwce": ("fn_weight", "fp_weight"),
    "camri": ("margin", "scale"), "arcface": ("margin", "scale"),
    "cosface": ("margin", "scale"), "class_sensitive_cosface": ("margin", "scale"),
    "normface": ("scale",),
}


def member_fields(loss_name: str) -> tuple[str, ...]:
  """The config fields in which runs of loss `loss_name` may differ and share a program."""
  return MEMBER_FIELDS + tuple(f"loss.{f}" for f in LOSS_MEMBER_FIELDS.get(loss_name, ()))
