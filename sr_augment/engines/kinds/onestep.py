"""`osediff` and `pisa-sr`: one-step diffusion SR on SD 2.1-base + the authors' LoRA file (base=..., lora=...)."""

from __future__ import annotations

import os
from pathlib import Path

from sr_augment.engines.registry import INT, NONE, NUMBER, TEXT, EngineKind, Parameter
from sr_augment.engines.specs import ONESTEP_SPECS
from sr_augment.errors import EngineParameterError

PATH = (str, os.PathLike)
ONESTEP_PARAMETERS = (
    Parameter("base", PATH + NONE), Parameter("lora", PATH + NONE), Parameter("batch_size", INT, low=1),
    Parameter("tile", INT + NONE, low=8), Parameter("overlap", INT, low=0), Parameter("prompt", TEXT),
    Parameter("color_fix", choices=("adain", "none")), Parameter("process_size", INT, low=0),
    Parameter("revision", TEXT + NONE),
    Parameter("steps", choices=(1,), note="a one-step diffusion model: steps does not apply (leave it unset)"),
)
"""What `OneStepEngine.__init__` takes besides the kind, scale, device and dtype (lambda_pix and lambda_sem:
pisa-sr only, see `OneStepKind.accepted`); `lora` is required, from the parameter or the environment."""


class OneStepKind(EngineKind):
    id = "onestep"
    names = ONESTEP_SPECS
    needs = "[diffusion] + peft, SD 2.1-base, the LoRA file (--set lora=PATH); a GPU in practice"
    listed = 50

    def accepted(self, spec):
        if spec == "pisa-sr":
            return (*ONESTEP_PARAMETERS, Parameter("lambda_pix", NUMBER + NONE), Parameter("lambda_sem", NUMBER + NONE))
        note = f"lambda_pix and lambda_sem apply to pisa-sr only, not to {spec}"
        return (*ONESTEP_PARAMETERS, Parameter("lambda_pix", NONE, note=note), Parameter("lambda_sem", NONE, note=note))

    def check(self, spec, params=None):
        """The parameters, then the LoRA file: given (lora=PATH or the environment) and a file here. Its
        contents are read when the engine is built."""
        super().check(spec, params)
        if params is None:
            return
        from sr_augment.engines.onestep_engine import lora_unavailable, settings_from_env

        _, lora = settings_from_env(spec, params.get("base"), params.get("lora"))
        if lora is None or not lora.is_file():
            raise EngineParameterError(lora_unavailable(spec, lora))

    def build(self, spec, *, scale=4, steps=None, device="auto", dtype="auto", **params):
        from sr_augment.engines.onestep_engine import onestep_engine

        return onestep_engine(spec, scale=scale, steps=steps, device=device, dtype=dtype, **params)

    def weights_stamp(self, spec, params=None):
        """[name, size] of the LoRA file and of the base folder's model files (params base=/lora= or the
        environment)."""
        from sr_augment.engines.kinds.diffusers import folder_stamp
        from sr_augment.engines.onestep_engine import settings_from_env

        base, lora = settings_from_env(spec, (params or {}).get("base"), (params or {}).get("lora"))
        stamp = [[str(lora.resolve()), lora.stat().st_size]] if lora is not None and lora.is_file() else []
        return stamp + folder_stamp(Path(base).expanduser())

    def deterministic(self, spec):
        return True  # no noise is drawn

    def describe(self):
        """Available when torch, diffusers, transformers and peft are installed, the LoRA file is set
        ($SR_AUGMENT_<KIND>_LORA; `--set lora=PATH` can only be checked when the engine is built) and the
        SD 2.1-base is a local folder or in the Hugging Face cache."""
        from sr_augment.engines.catalog import EngineEntry, hub_cached
        from sr_augment.engines.onestep_engine import KINDS, env_names, missing_modules, settings_from_env

        entries = []
        for kind, info in KINDS.items():
            base, lora = settings_from_env(kind)
            absent = missing_modules()
            if absent:
                reason = f"needs {' and '.join(absent)}: pip install 'sr-augment[diffusion]' peft"
            elif lora is None or not lora.is_file():
                reason = f"needs {info.file} ({info.source}): --set lora=PATH or {env_names(kind)[1]}=PATH"
            elif not Path(base).expanduser().is_dir() and not hub_cached(base):
                reason = (f"SD 2.1-base {base!r} is not a local folder nor in the Hugging Face cache: "
                          f"huggingface-cli download {base}")
            else:
                reason = ""
            entries.append(EngineEntry(kind, f"{info.title}: one-step diffusion on SD 2.1-base + the authors' LoRA ({info.file})",
                                       self.needs, True, not reason, reason))
        return entries


KIND = OneStepKind()
