"""Checkpoint readers and writers that never execute code from a file (method §11, §4.5, §6.8-§6.9, §9.1).

* :mod:`.stylegan2_pkl` — StyleGAN2-ADA ``.pkl`` snapshots (allow-listed unpickling, ``module_src`` ignored),
  and GMPI's initialisation from them.
* :mod:`.official_gmpi` — the official GMPI ``config.pth`` / ``generator.pth`` / ``ema.pth``.
* :mod:`.native` — our format: ``config.json`` + safetensors, written atomically.
* :mod:`.torch_file` — ``torch.save`` files (zip and legacy) read without ``torch.load``: allow-listed,
  every declared storage checked against the file before allocation.
* :mod:`.safe_pickle` — the allow-list unpickler underneath (bounded work; allow-listed globals cannot
  be modified by a file) and the bounded converter :func:`~.safe_pickle.plain_data`.

Errors: each reader raises its own ``ValueError`` subclass for malformed or unsupported files, and
:class:`UnsafePickleError` subclasses (:class:`ForbiddenGlobalError`, :class:`ForbiddenOperationError`,
:class:`PickleLimitError`) when a file asks for something refused; :data:`CHECKPOINT_ERRORS` lists them all.
"""

from gmpi_core.checkpoints.native import (
    CheckpointMismatchError,
    NativeCheckpointError,
    TensorCopyReport,
    check_state_dict,
    copy_matching_tensors,
    describe_state_dict,
    load_pretrained,
    load_state_dict_strict,
    read_native_config,
    register_native_class,
    save_pretrained,
)
from gmpi_core.checkpoints.official_gmpi import (
    OfficialCheckpointError,
    OfficialGMPICheckpoint,
    load_official_gmpi,
    official_generator_kwargs,
    read_official_config,
)
from gmpi_core.checkpoints.safe_pickle import (
    ForbiddenGlobalError,
    ForbiddenOperationError,
    MalformedPickleError,
    PickleLimitError,
    SafeUnpickler,
    UnsafePickleError,
)
from gmpi_core.checkpoints.stylegan2_pkl import (
    LegacyTFPickleError,
    NetworkSnapshot,
    StyleGAN2Pickle,
    StyleGAN2PickleError,
    init_gmpi_from_stylegan2,
    load_stylegan2_generator,
    read_stylegan2_pkl,
    stylegan2_discriminator_kwargs,
    stylegan2_generator_kwargs,
)
from gmpi_core.checkpoints.torch_file import TorchFileError, load_torch_file

# Every exception the readers raise for a bad or hostile file (anything else is a bug).
CHECKPOINT_ERRORS: tuple[type[Exception], ...] = (
    CheckpointMismatchError,
    NativeCheckpointError,
    OfficialCheckpointError,
    StyleGAN2PickleError,
    TorchFileError,
    UnsafePickleError,
    MalformedPickleError,
)

__all__ = [
    "CHECKPOINT_ERRORS",
    "CheckpointMismatchError",
    "ForbiddenGlobalError",
    "ForbiddenOperationError",
    "LegacyTFPickleError",
    "MalformedPickleError",
    "NativeCheckpointError",
    "NetworkSnapshot",
    "OfficialCheckpointError",
    "OfficialGMPICheckpoint",
    "PickleLimitError",
    "SafeUnpickler",
    "StyleGAN2Pickle",
    "StyleGAN2PickleError",
    "TensorCopyReport",
    "TorchFileError",
    "UnsafePickleError",
    "check_state_dict",
    "copy_matching_tensors",
    "describe_state_dict",
    "init_gmpi_from_stylegan2",
    "load_official_gmpi",
    "load_pretrained",
    "load_state_dict_strict",
    "load_stylegan2_generator",
    "load_torch_file",
    "official_generator_kwargs",
    "read_native_config",
    "read_official_config",
    "read_stylegan2_pkl",
    "register_native_class",
    "save_pretrained",
    "stylegan2_discriminator_kwargs",
    "stylegan2_generator_kwargs",
]
